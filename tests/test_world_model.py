import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from sine import as_dataset, sine_batches

from rssm_tf import RssmConfig, make_dataset
from rssm_tf import symexp as rssm_symexp
from rssm_tf import symlog as rssm_symlog
from rssm_tf.callbacks import ImaginationCallback, NonFiniteGuard, NonFiniteMetricError
from rssm_tf.losses import kl_balanced_loss
from rssm_tf.saving import ModelFileError, load_world_model, save_world_model
from rssm_tf.world_model import METRIC_NAMES, WorldModel, evaluate_open_loop

CONFIG = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=16, n_categories=4,
                    n_classes=4, hidden_size=16, n_blocks=2)


def test_training_noise_is_the_transposed_draw():
    # the update draws its noise time-major in place: element (t, b) must be element
    # (b, t) of the [B, T, S, K] draw for (seed, optimiser step)
    from rssm_tf.latents import uniform_noise

    model = WorldModel(CONFIG, seed=7)
    model.compile()
    model.optimizer.build(model.trainable_variables)
    batch = model.validate_batch(sine_batches(1, b=3, t=5)[0])
    noise = model._training_noise({k: tf.transpose(v, [1, 0] + list(range(2, v.shape.rank)))
                                   for k, v in batch.items()})
    expected = uniform_noise([3, 5, 4, 4], tf.constant([7, 0]))
    np.testing.assert_array_equal(noise.numpy(), np.transpose(expected.numpy(), [1, 0, 2, 3]))


def test_uniform_cells_stay_strictly_inside_0_1_also_under_xla():
    """The first and last of the 2**24 cells: the last centre rounds to 1.0 in float32
    unless held below it, and ndtri(1.0) is infinite (a continuous actor's NaN)."""
    from rssm_tf.latents import cell_centre

    bits = tf.constant([0, 1, 2 ** 23, 2 ** 24 - 2, 2 ** 24 - 1], tf.int64)
    want = np.array([2.0 ** -25, 1.5 * 2.0 ** -24, 0.5 + 2.0 ** -25, 1 - 1.5 * 2.0 ** -24,
                     np.nextafter(np.float32(1), np.float32(0))], np.float32)
    for fn in (cell_centre, tf.function(cell_centre, jit_compile=True)):
        got = fn(bits).numpy()
        np.testing.assert_array_equal(got, want)
        assert np.all((got > 0) & (got < 1))
        assert np.all(np.isfinite(tf.math.ndtri(got).numpy()))


def test_initial_reward_loss_is_log_bins():
    model = WorldModel(CONFIG)
    batch = model.validate_batch(sine_batches(1)[0])
    _, logs = model.compute_losses(batch)
    # the zero-initialised reward head gives uniform logits: loss = log(255)
    np.testing.assert_allclose(logs["rew"].numpy(), np.log(255.0), rtol=1e-6)
    assert logs["dyn"].numpy() >= 1.0 and logs["rep"].numpy() >= 1.0  # free nats


def test_the_heads_give_every_prediction_and_the_weighted_loss():
    """The world model's heads (rssm_tf/predictions.py): what each serves, the loss as
    the scaled sum of their terms (rec, rew, con) plus the KL, recomputed here from the
    raw outputs with TensorFlow's own losses."""
    from rssm_tf.predictions import ContinueHead, ObservationHead, RewardHead, read_heads

    model = WorldModel(CONFIG, rec_scale=2.0, rew_scale=3.0, con_scale=0.5)
    assert [type(head) for head in model.heads] == [ObservationHead, RewardHead, ContinueHead]
    assert [head.signature for head in model.heads] == ["decode", "predict", "predict"]
    assert model.metric_names[:5] == ("loss", "rec", "rec/obs", "rew", "con")
    assert {id(v) for v in model.heads[1].variables} == \
        {id(v) for v in model.rssm.reward_head.variables}
    batch = model.validate_batch(sine_batches(1, b=2, t=6)[0])
    # trained a little, so no head is at its initial (zero or uniform) output
    model.compile(jit_compile=False)
    model.fit(as_dataset(sine_batches(3, b=2, t=6)), epochs=1, verbose=0)
    loss, logs = model.compute_losses(batch)
    states, post, prior = model.rssm.observe(batch["obs"], batch["action"], batch["is_first"],
                                             sample=False)
    out = read_heads(model.heads, states.h, states.z)
    rec = tf.reduce_sum(tf.square(out["recon"]["obs"] - rssm_symlog(batch["obs"])), -1)
    np.testing.assert_allclose(out["obs"], rssm_symexp(out["recon"]["obs"]), rtol=1e-6)
    probs = tf.nn.softmax(out["reward_logits"])
    np.testing.assert_allclose(out["reward"], rssm_symexp(tf.reduce_sum(
        probs * model.twohot.bins, -1)), rtol=1e-5, atol=1e-6)
    con = keras.losses.binary_crossentropy(1.0 - batch["is_terminal"][..., None],
                                           out["continue_logits"][..., None], from_logits=True)
    rew = model.twohot.loss(out["reward_logits"], batch["reward"])
    kl = logs["loss"] - tf.reduce_mean(2.0 * rec + 3.0 * rew + 0.5 * con)
    np.testing.assert_allclose(kl, kl_balanced_loss(post, prior, model.kl).loss, rtol=1e-4)
    np.testing.assert_allclose(logs["con"], tf.reduce_mean(con), rtol=1e-5)
    np.testing.assert_allclose(logs["rec"], tf.reduce_mean(rec), rtol=1e-5)
    served = model.rssm.predict(states.h, states.z)
    assert list(served) == ["reward", "reward_logits", "continue_prob", "continue_logits"]
    np.testing.assert_allclose(served["continue_prob"], tf.sigmoid(out["continue_logits"]))
    np.testing.assert_allclose(model.rssm.predict_continue(states.h, states.z)[..., 0],
                               out["continue_logits"])


def test_fit_with_defaults_logs_every_metric_and_learns():
    keras.utils.set_random_seed(0)
    model = WorldModel(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    assert model.xla is True  # the update is one XLA function; the batch check is not
    history = model.fit(as_dataset(sine_batches(40)).batch(1).map(
        lambda d: {k: v[0] for k, v in d.items()}), epochs=3, verbose=0)
    assert set(METRIC_NAMES) <= set(history.history)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    default = WorldModel(CONFIG)
    default.compile()
    opt = default.optimizer
    assert np.float32(opt.learning_rate) == np.float32(1e-4)
    assert (opt.epsilon, opt.global_clipnorm) == (1e-8, 1000.0)


def test_validation_data_uses_test_step():
    model = WorldModel(CONFIG)
    model.compile()
    data = as_dataset(sine_batches(4)).batch(1).map(lambda d: {k: v[0] for k, v in d.items()})
    history = model.fit(data, validation_data=data, epochs=1, verbose=0)
    assert "val_loss" in history.history and "val_kl" in history.history


def test_keras_round_trip_and_resume_are_exact(tmp_path, op_determinism):
    batches = sine_batches(8)

    def fit(model, part):
        model.fit(as_dataset(part).batch(1).map(lambda d: {k: v[0] for k, v in d.items()}),
                  epochs=1, verbose=0, shuffle=False)

    keras.utils.set_random_seed(1)
    straight = WorldModel(CONFIG, seed=5)
    straight.compile(optimizer=keras.optimizers.Adam(1e-3))
    fit(straight, batches)

    keras.utils.set_random_seed(1)
    first = WorldModel(CONFIG, seed=5)
    first.compile(optimizer=keras.optimizers.Adam(1e-3))
    fit(first, batches[:4])
    path = save_world_model(first, tmp_path / "model.keras")
    resumed = load_world_model(path)
    assert int(resumed.optimizer.iterations) == 4
    out_a, out_b = first(batches[0]), resumed(batches[0])
    for key in ("obs", "reward", "continue_prob", "post_logits"):
        np.testing.assert_array_equal(out_a[key].numpy(), out_b[key].numpy())
    for a, b in zip(first.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fit(resumed, batches[4:])
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_finite_loss(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = WorldModel(CONFIG)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(as_dataset(sine_batches(6)).batch(1).map(
            lambda d: {k: v[0] for k, v in d.items()}), epochs=1, verbose=0)
        out = model(sine_batches(1)[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {k: v for k, v in history.history.items() if not np.isfinite(v[-1])} == {}
    assert model.rssm.gru.norm.dtype_policy.compute_dtype == "float32"
    assert model.rssm.inp_h.dense.compute_dtype == policy.split("_")[1]
    assert out["post_logits"].dtype == tf.float32 and out["reward"].dtype == tf.float32
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_mirrored_strategy_matches_single_device(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, sys.argv[1])
        from test_world_model import CONFIG, sine_batches
        from rssm_tf.world_model import WorldModel
        batches = sine_batches(3, b=4)
        def data():
            return tf.data.Dataset.from_tensor_slices(
                {k: np.stack([b[k] for b in batches]) for k in batches[0]}).unbatch().batch(4)
        keras.utils.set_random_seed(0)
        single = WorldModel(CONFIG, check_numerics=False)
        weights = single.get_weights()
        single.compile(optimizer=keras.optimizers.Adam(1e-3))
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            mirrored = WorldModel(CONFIG, check_numerics=False)
            mirrored.set_weights(weights)
            mirrored.compile(optimizer=keras.optimizers.Adam(1e-3))
        out = {"replicas": strategy.num_replicas_in_sync}
        out["eval_single"] = single.evaluate(data(), verbose=0, return_dict=True)["loss"]
        out["eval_mirrored"] = mirrored.evaluate(data(), verbose=0, return_dict=True)["loss"]
        out["fit_single"] = single.fit(data(), verbose=0).history["loss"][-1]
        out["fit_mirrored"] = mirrored.fit(data(), verbose=0).history["loss"][-1]
        out["weights"] = float(max(np.abs(a - b).max() for a, b in
                                   zip(single.get_weights(), mirrored.get_weights())))
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)],
                          capture_output=True, text=True, env=env, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][6:])
    assert out["replicas"] == 2
    np.testing.assert_allclose(out["eval_mirrored"], out["eval_single"], rtol=1e-5)
    np.testing.assert_allclose(out["fit_mirrored"], out["fit_single"], rtol=1e-4)
    assert out["weights"] < 1e-4


def test_open_loop_and_evaluation_baseline():
    model = WorldModel(CONFIG)
    eps = [{"obs": np.tile(np.arange(20, dtype="float32")[:, None], (1, 3)),
            "action": np.zeros((20, 2), "float32"), "reward": np.zeros(20, "float32"),
            "is_first": np.eye(1, 20, dtype="float32")[0],
            "is_terminal": np.zeros(20, "float32")}] * 2
    pred = model.open_loop(eps[0]["obs"][None], eps[0]["action"][None],
                           eps[0]["is_first"][None], 5, 15)
    assert pred["obs"].shape == (1, 15, 3) and pred["reward"].shape == (1, 15)
    assert pred["context_obs"].shape == (1, 5, 3)
    result = evaluate_open_loop(model, eps, context=5, horizon=15)
    assert result["windows"] == 2
    # the mean predictor says 9.5 everywhere; the truth at horizon step i is 5 + i
    np.testing.assert_allclose(result["mean_obs_mse"], (np.arange(5, 20) - 9.5) ** 2)
    np.testing.assert_allclose(result["mean_reward_mse"], 0.0)
    with pytest.raises(ValueError, match="context \\+ horizon = 30"):
        evaluate_open_loop(model, eps, context=10, horizon=20)


@pytest.mark.parametrize("change, error, words", [
    (lambda b: b.pop("reward"), ValueError, r"missing key\(s\) \['reward'\]"),
    (lambda b: b.update(obs=b["obs"][..., :2]), ValueError, r"obs must have shape \[B, T, 3\]"),
    (lambda b: b.update(is_first=b["is_first"][:, :5]), ValueError, "sequence length"),
    (lambda b: b["reward"].__setitem__((0, 1), np.inf), ValueError, "reward contains NaN"),
])
def test_bad_batches_are_named(change, error, words):
    model = WorldModel(CONFIG)
    batch = sine_batches(1)[0]
    change(batch)
    with pytest.raises(error, match=words):
        model.validate_batch(batch)


def test_nan_in_fit_data_is_named_in_compiled_step():
    model = WorldModel(CONFIG)
    model.compile()
    batch = sine_batches(1)[0]
    batch["obs"][0, 2, 1] = np.nan
    data = tf.data.Dataset.from_tensors(batch)
    with pytest.raises(tf.errors.InvalidArgumentError, match="obs contains NaN"):
        model.fit(data, verbose=0)


def test_non_finite_guard_names_the_metric():
    guard = NonFiniteGuard()
    guard.set_model(WorldModel(CONFIG))
    guard.on_train_batch_end(0, {"loss": 1.0, "rec": 0.5})
    with pytest.raises(NonFiniteMetricError, match="'rec' became nan at epoch 1, batch 3"):
        guard.on_train_batch_end(2, {"loss": 1.0, "rec": float("nan")})
    assert guard.model.stop_training


def test_imagination_png_and_tensorboard(tmp_path):
    model = WorldModel(CONFIG)
    model.compile()
    batch = sine_batches(1, b=1, t=20)[0]
    episode = {k: v[0] for k, v in batch.items()}
    callback = ImaginationCallback([episode], tmp_path / "png", log_dir=str(tmp_path / "tb"))
    model.fit(tf.data.Dataset.from_tensors(sine_batches(1)[0]), epochs=2, verbose=0,
              callbacks=[callback, keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["imagination_epoch1.png", "imagination_epoch2.png"]
    assert (tmp_path / "png" / pngs[0]).read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_world_model(tmp_path / "missing.keras")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="expected a .keras file"):
        load_world_model(tmp_path / "notes.txt")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelFileError, match="broken.keras"):
        load_world_model(tmp_path / "broken.keras")
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match="not a rssm_tf WorldModel"):
        load_world_model(tmp_path / "other.keras")


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_on_loopback(tmp_path):
    """Two worker processes on 127.0.0.1 (TF_CONFIG), as a user scales to machines:
    both train, agree on the weights, and match one device on the same data."""
    from served import free_port

    ports = [free_port() for _ in range(2)]
    script = textwrap.dedent("""
        import json, os, sys
        import numpy as np, tensorflow as tf, keras
        sys.path.insert(0, sys.argv[1])
        from test_world_model import CONFIG, sine_batches
        from rssm_tf.world_model import WorldModel
        multi = sys.argv[2] == "multi"
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if multi \\
            else tf.distribute.get_strategy()
        batches = sine_batches(3, b=4)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \\
            tf.data.experimental.AutoShardPolicy.DATA
        data = tf.data.Dataset.from_tensor_slices(
            {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        ).unbatch().batch(4).with_options(options)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = WorldModel(CONFIG, check_numerics=False)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
        loss = model.fit(data, verbose=0).history["loss"][-1]
        total = float(sum(np.abs(w).sum() for w in model.get_weights()))
        with open(sys.argv[3], "w") as f:
            json.dump({"loss": loss, "weights": total}, f)
    """)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, os.path.dirname(__file__), "multi",
             str(tmp_path / f"worker{index}.json")], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    single = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__), "one",
                             str(tmp_path / "single.json")], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert single.returncode == 0, single.stderr[-2000:]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    w0, w1, one = (json.loads((tmp_path / f"{n}.json").read_text())
                   for n in ("worker0", "worker1", "single"))
    assert np.isfinite(w0["loss"]) and w0["weights"] == w1["weights"]
    np.testing.assert_allclose(w0["loss"], one["loss"], rtol=1e-4)
    np.testing.assert_allclose(w0["weights"], one["weights"], rtol=1e-4)


def test_fit_on_a_dataset_does_not_warn_about_shuffle(small_config, rng):
    """Keras warns on every fit of a tf.data.Dataset while shuffle=True, its default;
    the windows come shuffled, so WorldModel.fit defaults shuffle to False for one. An
    explicit shuffle=True still reaches Keras (and its warning)."""
    import warnings

    episodes = [{"obs": rng.normal(size=(12, 5)).astype("f"),
                 "action": rng.normal(size=(12, 3)).astype("f"),
                 "reward": np.ones(12, "f"), "is_first": np.eye(1, 12, dtype="f")[0],
                 "is_terminal": np.zeros(12, "f")} for _ in range(2)]
    model = WorldModel(small_config)
    model.compile()
    data = make_dataset(episodes, batch_size=2, seq_len=4, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data, steps_per_epoch=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]
    assert np.isfinite(history.history["loss"][0])
    with pytest.warns(UserWarning, match="`shuffle=True` was passed"):
        model.fit(data, steps_per_epoch=1, verbose=0, shuffle=True)
