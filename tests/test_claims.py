"""Each behaviour the README states, shown by a test that fails if it stops holding."""

import http.server
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import Rssm, RssmConfig, RssmState
from rssm_tf.callbacks import NonFiniteGuard, NonFiniteMetricError
from rssm_tf.saving import ModelFileError, load_world_model
from rssm_tf.world_model import WorldModel

SMALL = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=16, n_categories=4,
                   n_classes=4, hidden_size=16, n_blocks=2)


def batch(nan_at=None, b=2, t=6):
    rng = np.random.default_rng(0)
    first = np.zeros((b, t), "float32")
    first[:, 0] = 1
    out = {"obs": rng.normal(size=(b, t, 3)).astype("float32"),
           "action": rng.uniform(-1, 1, (b, t, 2)).astype("float32"),
           "reward": rng.normal(size=(b, t)).astype("float32"), "is_first": first,
           "is_terminal": np.zeros((b, t), "float32")}
    if nan_at is not None:
        out["obs"][nan_at] = np.nan
    return out


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, words", [
    (lambda r, s: r.obs_step(s, np.zeros((2, 2)), np.array([[0, np.nan, 0], [0, 0, 0]])),
     "obs contains NaN"),
    (lambda r, s: r.obs_step(s, np.array([[np.inf, 0], [0, 0]]), np.zeros((2, 3))),
     "action contains NaN or Inf"),
    (lambda r, s: r.imagine_step(RssmState(s.h + np.nan, s.z), np.zeros((2, 2))),
     "state.h contains NaN"),
    (lambda r, s: r.observe(np.full((2, 4, 3), np.nan), np.zeros((2, 4, 2)), np.zeros((2, 4))),
     "obs contains NaN"),
    (lambda r, s: r.imagine(s, np.full((2, 4, 2), np.inf)), "actions contains NaN or Inf"),
    (lambda r, s: r.obs_step(s, np.zeros((2, 2)), np.zeros((2, 3)),
                             noise=np.full((2, 4, 4), np.nan)), "noise contains NaN"),
])
def test_eager_steps_refuse_non_finite_input_before_any_state_changes(call, words):
    rssm = Rssm(SMALL, seed=1)
    state = rssm.initial_state(2)
    before = int(rssm.seed_generator.state.numpy()[0])
    with pytest.raises(ValueError, match=words):
        call(rssm, state)
    assert int(rssm.seed_generator.state.numpy()[0]) == before  # no noise was drawn


# ------------------------------------------------------------------- sampling
def test_seeded_sampling_draws_the_same_z_eagerly_in_a_function_and_under_xla():
    base = Rssm(SMALL, seed=0)

    def draw(seed, path):
        rssm = Rssm(SMALL, seed=seed)
        for mine, theirs in zip(rssm.trainable_variables, base.trainable_variables):
            mine.assign(theirs)  # the same weights; only the sampling seed differs

        def step(obs):
            state, _, _ = rssm.obs_step(rssm.initial_state(2), tf.ones([2, 2]), obs)
            return state.z

        fn = step if path == "eager" else tf.function(step, jit_compile=path == "xla")
        obs = tf.constant(np.random.default_rng(0).normal(size=(2, 3)), tf.float32)
        return np.concatenate([fn(obs).numpy() for _ in range(3)])  # three draws

    same = [draw(7, path) for path in ("eager", "function", "xla")]
    np.testing.assert_array_equal(same[0], same[1])
    np.testing.assert_array_equal(same[0], same[2])
    assert not np.array_equal(same[0][:2], same[0][2:4])  # draws advance the noise
    assert not np.array_equal(same[0], draw(8, "eager"))  # another seed, other samples


# ------------------------------------------------------------ training checks
def test_check_numerics_off_lets_nan_through_and_non_finite_guard_stops_fit():
    model = WorldModel(SMALL, check_numerics=False)
    model.compile()
    clean = tf.data.Dataset.from_tensors(batch())
    poisoned = tf.data.Dataset.from_tensors(batch(nan_at=(0, 2, 1)))
    data = clean.repeat(2).concatenate(poisoned).concatenate(clean.repeat(5))
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, index, logs=None):
            seen.append(index)

    with pytest.raises(NonFiniteMetricError, match=r"became nan at epoch 1, batch 3"):
        model.fit(data, callbacks=[NonFiniteGuard(), Count()], verbose=0)
    assert seen == [0, 1]  # the guard ran first on batch 3 and fit stopped there
    # (the default, check_numerics=True, refuses such a batch by name:
    # test_world_model.py::test_nan_in_fit_data_is_named_in_compiled_step)


def test_xla_is_off_for_image_models_on_cpu_only_and_on_for_vectors():
    """compile()'s rule on either kind of machine: vectors always under XLA; images
    under XLA on a GPU, without it on CPUs (XLA's CPU convolutions are slower)."""
    image = WorldModel(RssmConfig(obs_dim=0, action_dim=2, image_shape=(16, 16, 1),
                                  cnn_depth=4, deterministic_size=16, n_categories=4,
                                  n_classes=4, hidden_size=16, n_blocks=2))
    image.compile()
    vector = WorldModel(SMALL)
    vector.compile()
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert image.xla is on_gpu and vector.xla is True
    # on CPUs the image model's observe loop alone runs under XLA; never when the
    # whole update does, when the user turned XLA off, or under op determinism
    assert image.xla_loop is not on_gpu and vector.xla_loop is False
    forced = WorldModel(SMALL)
    forced.compile(jit_compile=False)
    assert forced.xla is False and forced.xla_loop is False
    image.compile(jit_compile=False)
    assert image.xla is False and image.xla_loop is False
    from tensorflow.python.framework import config  # disable_* is not in the public API

    tf.config.experimental.enable_op_determinism()
    try:
        image.compile()
        assert image.xla is False and image.xla_loop is False
    finally:
        config.disable_op_determinism()


@pytest.mark.parametrize("manual", [True, False])
def test_the_observe_loop_under_xla_computes_the_same_loss_and_gradients(manual, tmp_path):
    """``xla_loop`` (image models on CPUs): the loop as a nested XLA function inside an
    update on TensorFlow's kernels gives the loss and every gradient of the plain loop.
    With autodiff's loop (``manual_gradient=False``) it stays on TensorFlow's kernels."""
    config = RssmConfig(obs_space={"image": (16, 16, 3), "velocity": (2,)}, action_dim=2,
                        cnn_depth=4, deterministic_size=16, n_categories=4, n_classes=4,
                        hidden_size=16, n_blocks=2)
    model = WorldModel(config, seed=3, check_numerics=False)
    model.rssm.manual_gradient = manual
    rng = np.random.default_rng(1)
    b, t = 3, 7
    first = np.zeros((b, t), "float32")
    first[:, 0] = first[1, 4] = 1
    tm = {"image": rng.integers(0, 256, (t, b, 16, 16, 3)).astype("uint8"),
          "velocity": rng.normal(size=(t, b, 2)).astype("float32"),
          "action": rng.uniform(-1, 1, (t, b, 2)).astype("float32"),
          "reward": rng.normal(size=(t, b)).astype("float32"),
          "is_first": first.T.copy(), "is_terminal": np.zeros((t, b), "float32")}
    tm = {k: tf.constant(v) for k, v in tm.items()}
    noise = tf.constant(rng.uniform(0.01, 0.99, (t, b, 4, 4)).astype("float32"))

    def loss_and_grads(xla_loop):
        model.xla_loop = xla_loop

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                loss = model._time_major_losses(tm, noise)[0]
            return loss, tape.gradient(loss, model.trainable_variables)

        return run()

    plain_loss, plain = loss_and_grads(False)
    xla_loss, xla = loss_and_grads(True)
    # the XLA path ran, or was refused
    assert (model.rssm._xla_loop.value is not None) is manual
    # and a SavedModel of the layer does not carry the XLA-compiled loop
    module = tf.Module()
    module.rssm = model.rssm
    tf.saved_model.save(module, str(tmp_path))
    assert b"_XlaMustCompile" not in (tmp_path / "saved_model.pb").read_bytes()
    np.testing.assert_allclose(xla_loss.numpy(), plain_loss.numpy(), rtol=1e-6)
    for p, x, v in zip(plain, xla, model.trainable_variables):
        scale = float(np.max(np.abs(p.numpy()))) + 1e-12
        np.testing.assert_allclose(x.numpy() / scale, p.numpy() / scale, atol=1e-5,
                                   err_msg=v.path)


def test_safe_mode_refuses_an_archive_with_a_lambda(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2.0)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelFileError, match="safe_mode"):
        load_world_model(path)


# ---------------------------------------------------------------- serving
def test_rest_client_retries_a_timeout_then_names_the_address():
    """A server that answers slower than the timeout: the client retries, then fails
    with a ServingError naming the address; a later fast answer is accepted."""
    from rssm_tf_serving.backends import RestBackend, ServingError

    calls, delay = [], [1.0]

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(time.time())
            time.sleep(delay[0])
            body = b'{"outputs": {"reward": [0.5]}}'
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timed out) before the answer
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        backend = RestBackend(url, model="wm", timeout=0.2, retries=2, backoff=0.01,
                              outputs={"predict": {"reward": "float32"}})
        with pytest.raises(ServingError, match=f"cannot reach TF Serving at {url} after 3"):
            backend.call("predict", {"h": np.zeros((1, 2))})
        assert len(calls) == 3  # the first attempt and two retries
        delay[0] = 0.0
        out = backend.call("predict", {"h": np.zeros((1, 2))})
        np.testing.assert_array_equal(out["reward"], [0.5])
    finally:
        server.shutdown()
        server.server_close()
