"""Observation spaces: any dict of named vector and image keys, from the config through
the encoder, decoder, loss, data, collector and open-loop evaluation (the export and
the serving client of such a model: tests/test_images.py)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import Mlp, ObsDecoder, ObsEncoder, RssmConfig, WorldModel, make_dataset
from rssm_tf.data import EpisodeStore, config_for_episode, save_episode, validate_episode
from rssm_tf.math import symlog
from rssm_tf.replay import Replay
from rssm_tf.spaces import ObsSpace, kind_of, stored_dtype
from rssm_tf.world_model import evaluate_open_loop, reconstruction_losses

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = dict(deterministic_size=16, n_categories=4, n_classes=4, hidden_size=16, n_blocks=2,
             cnn_depth=4)
SPACE = {"joints": (3,), "velocity": (2,), "camera": (16, 16, 3), "depth": (16, 16, 1)}
CONFIG = RssmConfig(obs_space=SPACE, action_dim=2, **SMALL)


def multi_episode(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"joints": rng.normal(size=(length, 3)).astype("f"),
            "velocity": rng.normal(size=(length, 2)).astype("f"),
            "camera": rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
            "depth": rng.integers(0, 256, (length, 16, 16, 1), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (length, 2)).astype("f"),
            "reward": rng.normal(size=length).astype("f"),
            "is_first": np.eye(1, length, dtype="f")[0],
            "is_terminal": np.zeros(length, "f")}


# ------------------------------------------------------------------- config
def test_the_space_object_answers_kind_dtype_names_and_specs_for_every_key():
    space = CONFIG.space
    assert list(space) == ["camera", "depth", "joints", "velocity"]
    assert [space[k].kind for k in space] == ["image", "image", "vector", "vector"]
    assert [space[k].dtype for k in space] == ["uint8", "uint8", "float32", "float32"]
    assert space["joints"].loss_name == "rec/joints"
    np.testing.assert_allclose(space["camera"].to_unit(np.array([0, 51, 255], np.uint8)),
                               [0.0, 0.2, 1.0])
    assert space.of_kind("image") == CONFIG.image_keys == ("camera", "depth")
    spec = space.specs([None, 5], named=True)["depth"]
    assert spec.shape.as_list() == [None, 5, 16, 16, 1] and spec.dtype == tf.uint8
    assert spec.name == "depth"
    assert space.manifest()["velocity"] == {"shape": [2], "dtype": "float32"}
    assert (kind_of((4,)), kind_of((8, 8, 3)), kind_of((2, 2)), kind_of(())) == \
        ("vector", "image", None, None)
    assert [stored_dtype(s) for s in ((4,), (8, 8, 3), (), (2,))] == \
        ["float32", "uint8", "float32", "float32"]
    with pytest.raises(ValueError, match="'grid'.*neither a vector"):
        ObsSpace({"grid": (4, 4)})


def test_each_kind_encodes_decodes_and_scores_by_hand():
    vector, image = CONFIG.space["velocity"], CONFIG.space["depth"]
    x = np.array([[3.0, -1.0]], "f")
    np.testing.assert_allclose(vector.encode(x).numpy(), [[np.log(4.0), -np.log(2.0)]],
                               rtol=1e-6)
    np.testing.assert_allclose(vector.decode(tf.constant([[np.log(4.0)]], "float32")).numpy(),
                               [[3.0]], rtol=1e-6)
    # squared error in symlog space, summed over the vector: (0 - log 4)^2 + (1 + log 2)^2
    want = np.log(4.0) ** 2 + (1 + np.log(2.0)) ** 2
    np.testing.assert_allclose(vector.loss(tf.constant([[0.0, 1.0]]), x).numpy(), [want],
                               rtol=1e-6)
    pixels = np.zeros((1, 16, 16, 1), np.uint8)
    pixels[0, 0, 0, 0] = 255  # one white pixel: target +0.5 there, -0.5 elsewhere
    # predicting 0 everywhere: 256 pixels at squared error 0.25
    np.testing.assert_allclose(image.loss(tf.zeros((1, 16, 16, 1)), pixels).numpy(), [64.0])
    np.testing.assert_allclose(image.decode(tf.constant([-0.7, 0.0, 0.6])).numpy(),
                               [0.0, 0.5, 1.0])
    with pytest.raises(TypeError, match="depth must be uint8"):
        image.convert(pixels.astype("float32"))


def test_space_resolves_keys_kinds_and_sizes():
    c = CONFIG
    assert c.obs_keys == ("camera", "depth", "joints", "velocity")  # sorted
    assert c.vector_keys == ("joints", "velocity") and c.image_keys == ("camera", "depth")
    assert c.vector_size == 5 and c.image_grid == (16, 16, 4) and c.cnn_stages == 2
    assert c.obs_dim == 0 and c.image_shape is None
    again = RssmConfig.from_json(c.to_json())
    assert again == c and again.obs_shapes == SPACE
    # the short forms are one "obs" vector and one "image" image
    short = RssmConfig(obs_dim=4, action_dim=2, image_shape=(16, 16, 1), **SMALL)
    assert short.obs_shapes == {"obs": (4,), "image": (16, 16, 1)}
    assert "obs_space" not in short.to_dict()  # configs without it read as before
    assert RssmConfig.for_space({"obs": (4,), "image": (16, 16, 1)}, 2, **SMALL) == short
    assert RssmConfig.for_space(SPACE, 2, **SMALL) == CONFIG


@pytest.mark.parametrize("fields, words", [
    (dict(obs_space={"my-key": (3,)}), r"'my-key' is not a valid input name"),
    (dict(obs_space={"3d": (3,)}), r"'3d' is not a valid input name"),
    (dict(obs_space={"action": (3,)}), r"'action' is a name the model already uses"),
    (dict(obs_space={"grid": (4, 4)}), r"obs_space\['grid'\] must be \(size,\) for a vector"),
    (dict(obs_space={"a": (16, 16, 3), "b": (32, 32, 1)}), "must share height and width"),
    (dict(obs_space={"a": (20, 20, 3)}), r"obs_space\['a'\] height 20 must be a multiple of 2"),
    (dict(obs_space={"a": (3,)}, obs_dim=3), "give obs_space or its short forms"),
    (dict(obs_space={}), "non-empty dict"),
    (dict(obs_space={"a": (0,)}), r"obs_space\['a'\] must be"),
])
def test_bad_space_is_named(fields, words):
    with pytest.raises(ValueError, match=words):
        RssmConfig(action_dim=2, **fields)


def test_action_dim_is_required():
    with pytest.raises(ValueError, match="action_dim is required"):
        RssmConfig(obs_space={"a": (3,)})


# ------------------------------------------------------- encoder and decoder
def test_encoder_concatenates_vectors_and_stacks_images():
    """One MLP on the symlog of the vector keys in key order, one CNN on the image keys
    stacked on channels: the embedding equals those layers run by hand."""
    encoder = ObsEncoder(CONFIG)
    encoder.build()
    ep = multi_episode(3)
    obs = {k: ep[k] for k in CONFIG.obs_keys}
    got = encoder(obs).numpy()
    vec = encoder.vector(np.concatenate([ep["joints"], ep["velocity"]], -1)).numpy()
    img = encoder.image(np.concatenate([ep["camera"], ep["depth"]], -1)).numpy()
    np.testing.assert_allclose(got, np.concatenate([vec, img], -1), atol=1e-6)
    assert encoder.vector.hidden[0].dense.kernel.shape[0] == 5
    # the vector MLP sees symlog(x), not x
    x = np.array([[2.0, -3.0, 0.5, 10.0, -1.0]], "f")
    assert not np.allclose(encoder.vector(x), Mlp.call(encoder.vector, x), atol=1e-4)
    np.testing.assert_allclose(encoder.vector(x), Mlp.call(encoder.vector, symlog(x)),
                               atol=1e-6)


def test_decoder_splits_one_mlp_and_one_cnn_per_key():
    decoder = ObsDecoder(CONFIG)
    decoder.build()
    feat = np.random.default_rng(0).normal(size=(2, CONFIG.feat_size)).astype("f")
    out = decoder(feat)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "joints": (2, 3), "velocity": (2, 2), "camera": (2, 16, 16, 3),
        "depth": (2, 16, 16, 1)}
    vec, img = decoder.vector(feat).numpy(), decoder.image(feat).numpy()
    np.testing.assert_array_equal(out["joints"], vec[:, :3])
    np.testing.assert_array_equal(out["velocity"], vec[:, 3:])
    np.testing.assert_array_equal(out["camera"], img[..., :3])
    np.testing.assert_array_equal(out["depth"], img[..., 3:])


def test_reconstruction_terms_by_hand():
    recon = {"joints": np.array([[1.0, 0.0, -1.0]], "f"), "velocity": np.zeros((1, 2), "f"),
             "camera": np.zeros((1, 16, 16, 3), "f"), "depth": np.full((1, 16, 16, 1), 0.5, "f")}
    batch = {"joints": np.array([[np.e - 1, 0.0, 0.0]], "f"),   # symlog -> [1, 0, 0]
             "velocity": np.array([[np.e - 1, -(np.e - 1)]], "f"),  # symlog -> [1, -1]
             "camera": np.full((1, 16, 16, 3), 255, np.uint8),   # -> 0.5 each
             "depth": np.zeros((1, 16, 16, 1), np.uint8)}        # -> -0.5 each
    got = {k: float(v[0]) for k, v in reconstruction_losses(CONFIG, recon, batch).items()}
    assert got["joints"] == pytest.approx(1.0, abs=1e-5)          # (-1 - 0)^2
    assert got["velocity"] == pytest.approx(2.0, abs=1e-5)
    assert got["camera"] == pytest.approx(16 * 16 * 3 * 0.25, rel=1e-6)
    assert got["depth"] == pytest.approx(16 * 16 * 1 * 1.0, rel=1e-6)


@pytest.mark.parametrize("change, error, words", [
    (lambda o: o.pop("depth"), ValueError, r"missing \['depth'\]"),
    (lambda o: o.update(extra=o["joints"]), ValueError, r"unknown \['extra'\]"),
    (lambda o: o.update(joints=o["joints"][:, :2]), ValueError,
     r"joints must have shape \[B, 3\], got shape \[2, 2\]"),
    (lambda o: o.update(camera=o["camera"][..., 0]), ValueError, r"camera must have shape"),
    (lambda o: o.update(depth=o["depth"].astype("f")), ValueError,
     "depth must be uint8 pixels"),
    (lambda o: o.update(camera=o["camera"][:, :8, :8]), ValueError,
     r"camera must have shape \[B, 16, 16, 3\], got shape \[2, 8, 8, 3\]"),
])
def test_bad_observation_is_named_before_the_state_changes(change, error, words):
    from rssm_tf import Rssm

    rssm = Rssm(CONFIG)
    ep = multi_episode(2)
    obs = {k: ep[k] for k in CONFIG.obs_keys}
    change(obs)
    with pytest.raises(error, match=words):
        rssm.obs_step(rssm.initial_state(2), ep["action"], obs)


# ----------------------------------------------------------------- training
def test_fit_logs_each_key_and_rec_is_their_sum(tmp_path):
    keras.utils.set_random_seed(0)
    model = WorldModel(CONFIG, seed=1)
    model.compile()
    episodes = [multi_episode(12, seed=i) for i in range(3)]
    history = model.fit(make_dataset(episodes, 2, 6), epochs=2, steps_per_epoch=3, verbose=0)
    names = {"rec/joints", "rec/velocity", "rec/camera", "rec/depth"}
    assert names <= set(history.history)
    batch = next(iter(make_dataset(episodes, 2, 6, seed=5)))
    logs = model.evaluate(batch, verbose=0, return_dict=True)
    assert logs["rec"] == pytest.approx(sum(logs[n] for n in names), rel=1e-5)
    # each term by hand from the posterior states (mode, as evaluate uses)
    b = {k: v.numpy() for k, v in batch.items()}
    states, _, _ = model.rssm.observe({k: b[k] for k in CONFIG.obs_keys}, b["action"],
                                      b["is_first"], sample=False)
    recon = {k: v.numpy() for k, v in model.decoder(states.feat()).items()}
    joints = np.sign(b["joints"]) * np.log1p(np.abs(b["joints"]))
    assert logs["rec/joints"] == pytest.approx(
        ((recon["joints"] - joints) ** 2).sum(-1).mean(), rel=1e-4)
    camera = b["camera"] / 255.0 - 0.5
    assert logs["rec/camera"] == pytest.approx(
        ((recon["camera"] - camera) ** 2).sum((-3, -2, -1)).mean(), rel=1e-4)
    # the .keras round trip: same config, same outputs for every key, same optimiser step
    from rssm_tf.saving import load_world_model, save_world_model

    again = load_world_model(save_world_model(model, tmp_path / "multi.keras"))
    assert again.config == CONFIG
    assert int(again.optimizer.iterations) == int(model.optimizer.iterations) == 6
    before, after = model(batch), again(batch)
    for key in (*SPACE, "reward"):
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())


def test_model_saved_before_obs_space_loads_and_computes_the_same():
    """tests/fixtures/world_model_v0.keras was saved by the code before obs_space (an
    "obs" vector and an "image" image, two training steps); its outputs on the stored
    batch were recorded then."""
    from rssm_tf.saving import load_world_model

    model = load_world_model(FIXTURES / "world_model_v0.keras")
    io = np.load(FIXTURES / "world_model_v0_io.npz")
    batch = {k: io[k] for k in model.batch_keys}
    out = model(batch)
    for key in ("obs", "image", "reward"):
        np.testing.assert_allclose(out[key].numpy(), io[f"out_{key}"], atol=1e-6)
    np.testing.assert_allclose(out["post_logits"].numpy(), io["out_post"], atol=1e-5)
    assert model.config.obs_shapes == {"obs": (3,), "image": (16, 16, 3)}
    assert int(model.optimizer.iterations) == 2
    model.fit(tf.data.Dataset.from_tensors(batch), verbose=0)  # training goes on
    assert int(model.optimizer.iterations) == 3


# ---------------------------------------------------------------------- data
def test_episode_keys_store_stream_and_config(tmp_path):
    episodes = [multi_episode(9, seed=i) for i in range(3)]
    for i, ep in enumerate(episodes):
        save_episode(tmp_path, {**ep, "step_info": np.arange(9.0)}, f"ep{i}", compress=i == 1)
    checked = validate_episode({**episodes[0], "step_info": np.arange(9.0)})
    assert sorted(checked) == sorted(episodes[0])  # the [T] extra is not an observation
    assert EpisodeStore(tmp_path).load()[0]["camera"].dtype == np.uint8
    assert config_for_episode(episodes[0], **SMALL) == CONFIG
    picked = config_for_episode(episodes[0], ("camera", "velocity"), **SMALL)
    assert picked.obs_shapes == {"camera": (16, 16, 3), "velocity": (2,)}
    replay = Replay(tmp_path, 5, obs_keys=("depth", "joints"))
    batch = next(iter(replay.dataset(2, seed=0)))
    assert set(batch) == {"depth", "joints", "action", "reward", "is_first", "is_terminal"}
    assert batch["depth"].dtype == tf.uint8 and batch["joints"].dtype == tf.float32
    streamed = next(iter(make_dataset(tmp_path, 2, 5, seed=3)))
    in_memory = next(iter(make_dataset(episodes, 2, 5, seed=3)))
    assert set(streamed) == set(in_memory) == set(episodes[0])
    for key in streamed:
        np.testing.assert_array_equal(streamed[key].numpy(), in_memory[key].numpy())
    with pytest.raises(ValueError, match="obs_keys must be a non-empty subset"):
        make_dataset(episodes, 2, 5, obs_keys=("camera", "lidar"))


def test_open_loop_errors_per_key():
    model = WorldModel(CONFIG, seed=0)
    episodes = [multi_episode(8, seed=i) for i in range(2)]
    result = evaluate_open_loop(model, episodes, context=3, horizon=5)
    for key in CONFIG.obs_keys + ("reward",):
        assert len(result[f"{key}_mse"]) == 5 and len(result[f"mean_{key}_mse"]) == 5
    # the mean predictor by hand: per-dimension mean over all steps, pixels / 255
    for key, scale in (("velocity", 1.0), ("depth", 1 / 255.0)):
        stream = np.concatenate([e[key] for e in episodes]).astype("float64") * scale
        true = np.stack([e[key][3:8] for e in episodes]).astype("float64") * scale
        want = ((stream.mean(0) - true) ** 2).mean(tuple(range(2, true.ndim))).mean(0)
        np.testing.assert_allclose(result[f"mean_{key}_mse"], want, rtol=1e-6)


# ----------------------------------------------------------------- collector
class _DictEnv:
    """A gymnasium env with a Dict observation: a joint vector and a camera image."""

    def __new__(cls, render_mode=None):
        import gymnasium as gym
        from gymnasium import spaces

        class Env(gym.Env):
            observation_space = spaces.Dict({
                "joints": spaces.Box(-1.0, 1.0, (2, 2), np.float32),
                "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8)})
            action_space = spaces.Discrete(3)

            def reset(self, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return self._obs(), {}

            def step(self, action):
                self.t += 1
                return self._obs(), float(action), False, self.t >= 4, {}

            def render(self):
                return np.full((8, 8, 3), 99, np.uint8)

            def _obs(self):
                return {"joints": np.full((2, 2), self.t / 10, np.float32),
                        "camera": np.full((8, 8, 3), self.t * 10, np.uint8)}

        return Env()


def test_collector_dict_spaces_and_named_vector_parts(tmp_path):
    import gymnasium as gym

    from rssm_tf.collect import collect

    gym.register("RssmTfDictEnv-v0", entry_point=_DictEnv)
    try:
        path, = collect("RssmTfDictEnv-v0", 1, tmp_path / "dict", image_size=(4, 4))
    finally:
        gym.registry.pop("RssmTfDictEnv-v0")
    with np.load(path) as ep:
        assert ep["joints"].shape == (5, 4) and ep["camera"].dtype == np.uint8
        np.testing.assert_allclose(ep["joints"][:, 0], [0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
        assert ep["camera"].shape == (5, 4, 4, 3) and ep["camera"][2, 0, 0, 0] == 20
        assert ep["image"].shape == (5, 4, 4, 3) and ep["image"][0, 0, 0, 0] == 99
    # CartPole's vector split into named parts: velocity = obs[1], angle = obs[2]
    path, = collect("CartPole-v1", 1, tmp_path / "split", max_steps=6,
                    vector_keys={"velocity": [1], "angle": 2})
    env = gym.make("CartPole-v1")
    first, _ = env.reset(seed=0)
    with np.load(path) as ep:
        assert "obs" not in ep and ep["velocity"].shape == (6, 1)
        assert ep["velocity"][0, 0] == first[1] and ep["angle"][0, 0] == first[2]
    with pytest.raises(ValueError, match=r"vector_keys\['v'\] must be indices in \[0, 4\)"):
        collect("CartPole-v1", 1, tmp_path / "bad", vector_keys={"v": [4]})


# ------------------------------------------------------------ export / serving
@pytest.fixture(scope="module")
def multi_export(tmp_path_factory):
    """The four-key model after a short fit, through .keras and the exporter (ONNX and
    LiteRT). Tests compare the files with the Keras model (tests/served.py), not with
    the exporter's report."""
    from rssm_tf_export.exporter import export_model

    from rssm_tf.saving import save_world_model

    keras.utils.set_random_seed(2)
    model = WorldModel(CONFIG, seed=2)
    model.compile()
    model.fit(make_dataset([multi_episode(12, seed=i) for i in range(3)], 2, 6), epochs=1,
              steps_per_epoch=3, verbose=0)
    root = tmp_path_factory.mktemp("multi_export")
    path = save_world_model(model, root / "model.keras")
    return root / "out", export_model(path, root / "out", name="multi", verbose=False,
                                      litert=True, parity=False)


def test_export_computes_what_keras_does_on_every_backend(multi_export, tmp_path):
    """Every signature (decode included) and two 5-step rollouts, through TF Serving's
    session loader (fresh process without rssm_tf), SavedModel, ONNX Runtime and LiteRT,
    against the reloaded .keras model run in this test."""
    from rssm_tf_export.runner import litert_cases, run_all
    from rssm_tf_serving.backends import LiteRtBackend, OnnxBackend, SavedModelBackend
    from served import cases_for, keras_call, run_in_tf_serving_loader

    from rssm_tf.saving import load_world_model

    out, _ = multi_export
    model = load_world_model(out.parent / "model.keras", compile=False)
    assert model.config == CONFIG
    cases = cases_for(model, seed=3)
    assert set(cases["rollout_obs_step_mode"]["steps"]) == {"action", *SPACE}
    reference = run_all(keras_call(model), cases)
    served = run_in_tf_serving_loader(out / "saved_model" / "multi" / "1", cases, tmp_path)
    others = {"litert": LiteRtBackend(out / "litert"), "onnx": OnnxBackend(out / "onnx"),
              "savedmodel": SavedModelBackend(out / "saved_model" / "multi")}
    outputs = {"session": served, **{k: run_all(b.call, litert_cases(cases) if k == "litert"
                                                else cases) for k, b in others.items()}}
    assert set(reference["decode"]) == set(SPACE)
    for what, got in outputs.items():
        assert "rollout_obs_step_noise" in got, what
        for case in got:
            for key, value in reference[case].items():
                if key.startswith("z_"):
                    np.testing.assert_array_equal(got[case][key], value, err_msg=what)
                else:
                    np.testing.assert_allclose(got[case][key], value, atol=1e-5, rtol=1e-5,
                                               err_msg=f"{what} {case} {key}")


def test_every_signature_of_a_many_key_model_in_both_rest_formats(multi_export):
    """TF Serving's row and columnar REST forms (api_rest.md) for four observation keys,
    vectors and uint8 images, and a four-output decode (tests/served.py)."""
    from served import rest_forms_agree

    out, manifest = multi_export
    rest_forms_agree(out, manifest)


def test_export_inputs_are_named_after_the_keys(multi_export):
    import subprocess
    import sys

    out, manifest = multi_export
    inputs = manifest["signatures"]["obs_step_noise"]["inputs"]
    assert {k: inputs[k] for k in SPACE} == {
        "joints": {"dtype": "float32", "shape": [None, 3]},
        "velocity": {"dtype": "float32", "shape": [None, 2]},
        "camera": {"dtype": "uint8", "shape": [None, 16, 16, 3]},
        "depth": {"dtype": "uint8", "shape": [None, 16, 16, 1]}}
    assert manifest["obs_space"]["depth"] == {"shape": [16, 16, 1], "dtype": "uint8"}
    assert set(manifest["signatures"]["decode"]["outputs"]) == set(SPACE)
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                            "show", "--dir", str(out / "saved_model" / "multi" / "1"),
                            "--tag_set", "serve", "--signature_def", "obs_step"],
                           capture_output=True, text=True, check=True).stdout
    assert "inputs['camera'] tensor_info:\n      dtype: DT_UINT8" in shown
    assert "inputs['joints'] tensor_info:\n      dtype: DT_FLOAT" in shown


def test_exported_graph_has_no_xla_compiled_function(multi_export):
    """The image norms' backward is an XLA-compiled function (layers.norm_act);
    TensorFlow Serving runs such functions only behind an experimental flag, so nothing
    in the exported SavedModel may carry ``_XlaMustCompile``."""
    from tensorflow.core.protobuf import saved_model_pb2

    out, _ = multi_export
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((out / "saved_model" / "multi" / "1" / "saved_model.pb")
                          .read_bytes())
    graph = proto.meta_graphs[0].graph_def
    functions = graph.library.function
    assert len(functions) > 10  # the signatures' functions are there to be checked
    flagged = [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
    flagged += [f"{f.signature.name}/{n.name}" for f in functions for n in f.node_def
                if n.attr["_XlaMustCompile"].b]
    flagged += [n.name for n in graph.node if n.attr["_XlaMustCompile"].b]
    assert flagged == []


def test_loading_the_export_drops_only_the_expected_unsaved_gradient_notes(multi_export):
    """The export leaves the image norms' custom gradients out, so TensorFlow notes
    "with ops with unsaved custom gradients" for each function that held one when the
    SavedModel is loaded; the serving loader drops exactly those notes."""
    import logging

    from rssm_tf_serving.backends import SavedModelBackend, load_saved_model

    out, _ = multi_export
    path = out / "saved_model" / "multi" / "1"

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    log = logging.getLogger("absl")  # TensorFlow's SavedModel loader logs through absl
    keep = Keep()
    log.addHandler(keep)
    try:
        tf.saved_model.load(str(path))
        plain = [m for m in keep.messages if "unsaved custom gradients" in m]
        keep.messages.clear()
        loaded = load_saved_model(path)
        backend = SavedModelBackend(path)
        log.warning("a note that is not about gradients")
    finally:
        log.removeHandler(keep)
    assert plain, "TensorFlow no longer notes unsaved custom gradients: drop the filter"
    assert keep.messages == ["a note that is not about gradients"]
    assert set(loaded.signatures) == set(backend.signatures) and "obs_step" in loaded.signatures
    assert log.filters == [] and logging.getLogger("tensorflow").filters == []


def test_client_takes_the_dict_and_decodes_per_key(multi_export):
    """Every backend of the client observes the same dict steps to the same state, and
    ``decode`` gives each key as the Keras model decodes it."""
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.standin import StandInServer

    from rssm_tf.saving import load_world_model
    from rssm_tf.world_model import decode_observation

    out, _ = multi_export
    rng = np.random.default_rng(5)
    steps = [{k: np.stack([multi_episode(3, seed=10 * t + b)[k][t] for b in range(2)])
              for k in SPACE} for t in range(3)]
    actions = rng.uniform(-1, 1, (3, 2, 2)).astype(np.float32)
    noise = rng.uniform(0.01, 0.99, (3, 2, 4, 4)).astype(np.float32)
    with StandInServer(out / "saved_model" / "multi", name="multi") as server:
        clients = {"onnx": WorldModelClient.from_export(out, "onnx"),
                   "litert": WorldModelClient.from_export(out, "litert"),
                   "savedmodel": WorldModelClient.from_export(out, "savedmodel"),
                   "rest": WorldModelClient.from_export(out, "rest", url=server.rest_url),
                   "grpc": WorldModelClient.from_export(out, "grpc",
                                                        target=server.grpc_target)}
        traces, decoded = {}, {}
        for name, client in clients.items():
            assert client.obs_keys == ("camera", "depth", "joints", "velocity")
            client.reset(2)
            traces[name] = [client.observe(a, o, noise=n)
                            for a, o, n in zip(actions, steps, noise)]
            if name != "litert":  # decode is not converted to LiteRT
                decoded[name] = client.decode()
    for name in ("litert", "savedmodel", "rest", "grpc"):
        for a, b in zip(traces["onnx"], traces[name]):
            np.testing.assert_array_equal(a["z"], b["z"], err_msg=name)
            np.testing.assert_allclose(a["h"], b["h"], atol=1e-5, err_msg=name)
    model = load_world_model(out.parent / "model.keras", compile=False)
    last = traces["onnx"][-1]
    feat = np.concatenate([last["h"], last["z"]], -1)
    want = decode_observation(CONFIG, model.decoder(feat))
    for name, got in decoded.items():
        assert set(got) == set(SPACE), name
        for key in SPACE:
            np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-5,
                                       err_msg=f"{name} {key}")
    client = clients["onnx"]
    with pytest.raises(ValueError, match="camera must be uint8"):
        client.observe(actions[0], {**steps[0], "camera": steps[0]["camera"] / 255.0})
    with pytest.raises(ValueError, match=r"depth must have shape \[2, 16, 16, 1\]"):
        client.observe(actions[0], {**steps[0], "depth": steps[0]["depth"][:, :8]})
    with pytest.raises(ValueError, match=r"missing \['velocity'\], unknown \['speed'\]"):
        client.observe(actions[0], {**{k: v for k, v in steps[0].items() if k != "velocity"},
                                    "speed": steps[0]["velocity"]})
    with pytest.raises(TypeError, match="obs must be a dict"):
        client.observe(actions[0], steps[0]["joints"])


def test_imagination_pictures_per_image_key_and_cli_keys(tmp_path):
    from rssm_tf.callbacks import ImaginationCallback
    from rssm_tf.cli import parse_vector_keys

    model = WorldModel(CONFIG, seed=0)
    callback = ImaginationCallback([multi_episode(10, seed=1)], tmp_path, context=3,
                                   horizon=4)
    callback.set_model(model)
    callback.on_epoch_end(0)
    assert sorted(callback.paths) == ["imagination", "imagination_frames_camera",
                                      "imagination_frames_depth"]
    for path in callback.paths.values():
        image = tf.image.decode_png(path.read_bytes())
        assert image.shape[0] > 50 and image.shape[1] > 50
    assert parse_vector_keys(["velocity=1,3", "angle=2"]) == {"velocity": [1, 3],
                                                             "angle": [2]}
    with pytest.raises(ValueError, match="--vector-keys takes KEY=I"):
        parse_vector_keys(["velocity"])


# ------------------------------------------------------- categorical keys (DreamerV3's)
CELL = RssmConfig(obs_space={"obs": (3,), "cell": {"shape": (2,), "classes": 3}},
                  action_dim=2, **{k: v for k, v in SMALL.items() if k != "cnn_depth"})


def cell_episode(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``cell`` counts 0, 1, 2, 0, ... from a random phase (its second value runs the
    other way): predictable from the previous step. Stored as episodes store every
    non-image array, float32."""
    rng = np.random.default_rng(seed)
    phase = rng.integers(0, 3)
    t = np.arange(length) + phase
    return {"obs": rng.normal(size=(length, 3)).astype("f"),
            "cell": np.stack([t % 3, (-t) % 3], -1).astype("f"),
            "action": rng.uniform(-1, 1, (length, 2)).astype("f"),
            "reward": rng.normal(size=length).astype("f"),
            "is_first": np.eye(1, length, dtype="f")[0], "is_terminal": np.zeros(length, "f")}


def test_a_categorical_key_by_hand():
    key = CELL.space["cell"]
    assert (key.kind, key.dtype, key.width, CELL.vector_size) == ("categorical", "int32", 6, 9)
    assert CELL.space.mlp_keys == ("obs", "cell") and CELL.vector_keys == ("obs",)
    assert CELL.space.manifest()["cell"] == {"shape": [2], "dtype": "int32", "classes": 3}
    assert RssmConfig.from_json(CELL.to_json()) == CELL
    np.testing.assert_array_equal(key.encode(np.array([[2, 0]])).numpy(),
                                  [[0, 0, 1, 1, 0, 0]])
    logits = np.log(np.array([[[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]], "f"))
    # -log p(2) - log p(0) for the two values
    np.testing.assert_allclose(key.loss(tf.constant(logits), np.array([[2.0, 0.0]], "f")),
                               [-np.log(0.5) - np.log(0.6)], rtol=1e-6)
    np.testing.assert_allclose(key.decode(tf.constant(logits)), np.exp(logits), rtol=1e-6)
    np.testing.assert_array_equal(key.to_unit(np.array([1.0, 2.0])), [[0, 1, 0], [0, 0, 1]])
    assert key.convert(np.array([[1.0, 2.0]], "f")).dtype == tf.int32
    for bad, words in ((np.array([[1, 3]]), r"cell must hold class indices in \[0, 3\)"),
                       (np.array([[0.5, 1]]), "cell must hold class indices"),
                       (np.array([["a", "b"]]), "cell must be class indices")):
        with pytest.raises((ValueError, TypeError), match=words):
            key.convert(bad)
    for space, words in (({"cell": {"shape": (2,), "classes": 1}}, "integer N >= 2"),
                         ({"cell": {"shape": (2, 2), "classes": 3}}, r"obs_space\['cell'\]"),
                         ({"cell": {"classes": 3, "low": 0}}, "categorical key")):
        with pytest.raises(ValueError, match=words):
            RssmConfig(obs_space=space, action_dim=1)


@pytest.fixture(scope="module")
def cell_export(tmp_path_factory):
    """A vector + categorical model after a short fit, through .keras and the exporter
    (ONNX); the tests compare the files with the reloaded Keras model."""
    from rssm_tf_export.exporter import export_model

    from rssm_tf.saving import save_world_model

    keras.utils.set_random_seed(4)
    model = WorldModel(CELL, seed=4)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    history = model.fit(make_dataset([cell_episode(40, seed=i) for i in range(4)], 4, 10),
                        epochs=4, steps_per_epoch=25, verbose=0)
    root = tmp_path_factory.mktemp("cell_export")
    path = save_world_model(model, root / "model.keras")
    manifest = export_model(path, root / "out", name="cell", verbose=False, parity=False)
    return root / "out", manifest, history.history


def test_a_categorical_key_trains_and_exports_with_int_inputs(cell_export, tmp_path):
    """fit lowers the key's cross-entropy below the uniform guess (2 log 3); every
    signature on TF Serving's session loader and on ONNX Runtime computes what the
    reloaded Keras model does, the observation going in as int32 class indices."""
    from rssm_tf_export.runner import run_all
    from rssm_tf_serving.backends import OnnxBackend
    from served import cases_for, keras_call, run_in_tf_serving_loader

    from rssm_tf.saving import load_world_model

    out, manifest, history = cell_export
    # from about the uniform guess's 2 log 3 = 2.2 in the first epoch (1.13 when written)
    assert history["rec/cell"][0] > 0.9 * 2 * np.log(3) > 0.7 * 2 * np.log(3) \
        > history["rec/cell"][-1]
    assert manifest["obs_space"]["cell"] == {"shape": [2], "dtype": "int32", "classes": 3}
    assert manifest["signatures"]["obs_step"]["inputs"]["cell"]["dtype"] == "int32"
    model = load_world_model(out.parent / "model.keras", compile=False)
    cases = cases_for(model, seed=6)
    assert cases["obs_step_mode"]["inputs"]["cell"].dtype == np.int32
    reference = run_all(keras_call(model), cases)
    assert reference["decode"]["cell"].shape == (3, 2, 3)
    np.testing.assert_allclose(reference["decode"]["cell"].sum(-1), 1.0, rtol=1e-6)
    got = {"session": run_in_tf_serving_loader(out / "saved_model" / "cell" / "1", cases,
                                               tmp_path),
           "onnx": run_all(OnnxBackend(out / "onnx").call, cases)}
    for what, outputs in got.items():
        for case in cases:
            for key, value in reference[case].items():
                if key.startswith("z_"):
                    np.testing.assert_array_equal(outputs[case][key], value, err_msg=what)
                else:
                    np.testing.assert_allclose(outputs[case][key], value, atol=1e-5,
                                               rtol=1e-5, err_msg=f"{what} {case} {key}")


def test_the_client_sends_class_indices_and_names_bad_ones(cell_export):
    """ONNX Runtime and the stand-in's REST API (TF Serving's JSON integers) observe the
    same int steps to the same state; decode gives class probabilities; a class out of
    range is refused by name before anything is sent."""
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.standin import StandInServer

    out, _, _ = cell_export
    steps = [{k: v[t:t + 2] for k, v in cell_episode(4, seed=8).items() if k in ("obs", "cell")}
             for t in range(2)]
    steps = [{"obs": s["obs"], "cell": s["cell"].astype(np.int64)} for s in steps]
    actions = np.zeros((2, 2, 2), np.float32)
    with StandInServer(out / "saved_model" / "cell", name="cell") as server:
        clients = {"onnx": WorldModelClient.from_export(out, "onnx"),
                   "rest": WorldModelClient.from_export(out, "rest", url=server.rest_url)}
        traces, decoded = {}, {}
        for name, client in clients.items():
            client.reset(2)
            traces[name] = [client.observe(a, o, sample="mode") for a, o in zip(actions, steps)]
            decoded[name] = client.decode()
    for a, b in zip(traces["onnx"], traces["rest"]):
        np.testing.assert_array_equal(a["z"], b["z"])
        np.testing.assert_allclose(a["h"], b["h"], atol=1e-5)
    np.testing.assert_allclose(decoded["onnx"]["cell"], decoded["rest"]["cell"], atol=1e-5)
    np.testing.assert_allclose(decoded["onnx"]["cell"].sum(-1), 1.0, rtol=1e-5)
    client = clients["onnx"]
    with pytest.raises(ValueError, match=r"cell must hold class indices in \[0, 3\)"):
        client.observe(actions[0], {**steps[0], "cell": steps[0]["cell"] + 3})
    with pytest.raises(TypeError, match="cell must be class indices"):
        client.observe(actions[0], {**steps[0], "cell": steps[0]["cell"] + 0.5})
    assert client.random_observation(np.random.default_rng(0), 4)["cell"].max() < 3
