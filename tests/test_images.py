"""Image observations: the convolutional encoder and decoder, uint8 episodes, fitting
on pixels, export parity and serving of an image model."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import ImageDecoder, ImageEncoder, Rssm, RssmConfig
from rssm_tf.callbacks import ImaginationCallback
from rssm_tf.data import EpisodeError, EpisodeStore, load_episode, make_dataset, save_episode
from rssm_tf.heads import image_to_float
from rssm_tf.world_model import WorldModel, evaluate_open_loop

SMALL = dict(deterministic_size=16, n_categories=4, n_classes=4, hidden_size=16, n_blocks=2)
IMAGE_CONFIG = RssmConfig(obs_dim=0, action_dim=2, image_shape=(16, 16, 3), cnn_depth=4,
                          **SMALL)
BOTH_CONFIG = RssmConfig(obs_dim=3, action_dim=2, image_shape=(16, 16, 1), cnn_depth=4,
                         **SMALL)


def square_episode(length, size=16, channels=3, seed=0, with_obs=False):
    """A bright 4x4 square moving one pixel right per step on a dark background: the
    action is constant, so the next frame is predictable."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, size - 4))
    image = np.full((length, size, size, channels), 20, np.uint8)
    for t in range(length):
        x = (start + t) % (size - 4)
        image[t, 6:10, x:x + 4] = 230
    episode = {"image": image, "action": np.ones((length, 2), np.float32),
               "reward": np.zeros(length, np.float32),
               "is_first": np.eye(1, length, dtype=np.float32)[0],
               "is_terminal": np.zeros(length, np.float32)}
    if with_obs:
        episode["obs"] = rng.normal(size=(length, 3)).astype(np.float32)
    return episode


# ------------------------------------------------------------- encoder / decoder
@pytest.mark.parametrize("shape, stages, embed", [
    ((16, 16, 3), 2, 4 * 4 * 8),       # 16 -> 8 -> 4: channels 4, 8
    ((32, 48, 1), 3, 4 * 6 * 16),      # 32 -> 16 -> 8 -> 4: channels 4, 8, 16
    ((64, 64, 3), 4, 4 * 4 * 32),      # DreamerV3's 64x64 -> 4x4
])
def test_encoder_and_decoder_shapes(shape, stages, embed):
    config = RssmConfig(obs_dim=0, action_dim=2, image_shape=shape, cnn_depth=4, **SMALL)
    assert config.cnn_stages == stages
    encoder = ImageEncoder(4, stages)
    encoder.build((None, *shape))
    images = np.zeros((2, 3, *shape), np.uint8)
    assert encoder(images).shape == (2, 3, embed) == (2, 3, encoder.output_size(shape))
    decoder = ImageDecoder(shape, 4, stages)
    decoder.build((None, config.feat_size))
    assert decoder(tf.zeros((2, 3, config.feat_size))).shape == (2, 3, *shape)
    rssm = Rssm(config)
    assert rssm.encoder.embed_size == embed
    assert [v.shape for v in encoder.trainable_weights if "conv" in v.path][0] == (4, 4,
                                                                                   shape[2], 4)


def test_default_encoder_is_dreamerv3_size_s():
    config = RssmConfig(obs_dim=0, action_dim=2, image_shape=(64, 64, 3))
    encoder = Rssm(config).encoder.image
    assert [conv.filters for conv in encoder.convs] == [32, 64, 128, 256]
    assert encoder.convs[0].kernel_size == (4, 4) and encoder.convs[0].strides == (2, 2)


@pytest.mark.parametrize("shape, message", [
    ((50, 50, 3), r"image_shape height 50 must be a multiple of 2\*\*4 = 16.*48 or 64"),
    ((64, 40, 3), r"image_shape width 40 must be a multiple of 2\*\*4 = 16"),
    ((4, 4, 3), r"taller than cnn_minres"),
    ((64, 64), r"image_shape must be \(height, width, channels\)"),
])
def test_image_sizes_the_strides_cannot_divide_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        RssmConfig(obs_dim=0, action_dim=2, image_shape=shape)


def test_a_model_needs_an_observation():
    with pytest.raises(ValueError, match="obs_dim is 0 and image_shape is None"):
        RssmConfig(obs_dim=0, action_dim=2)


def test_config_with_image_round_trips_through_json():
    again = RssmConfig.from_json(BOTH_CONFIG.to_json())
    assert again == BOTH_CONFIG and again.image_shape == (16, 16, 1)
    assert BOTH_CONFIG.obs_keys == ("obs", "image") and IMAGE_CONFIG.obs_keys == ("image",)


def test_pixels_scale_to_minus_half_to_half():
    pixels = tf.constant([0, 51, 255], tf.uint8)
    np.testing.assert_allclose(image_to_float(pixels).numpy(), [-0.5, -0.3, 0.5], atol=1e-7)


def test_bad_images_are_named_before_any_step():
    rssm = Rssm(IMAGE_CONFIG)
    state, action = rssm.initial_state(2), np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match="image must be uint8 pixels"):
        rssm.obs_step(state, action, np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"image must have shape \[B, 16, 16, 3\]"):
        rssm.obs_step(state, action, np.zeros((2, 16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"obs must have the keys \['image'\]"):
        rssm.obs_step(state, action, {"obs": np.zeros((2, 3), np.float32)})
    both = Rssm(BOTH_CONFIG)
    with pytest.raises(TypeError, match=r"obs must be a dict with keys \['obs', 'image'\]"):
        both.obs_step(state, action, np.zeros((2, 3), np.float32))


def test_both_keys_concatenate_their_embeddings():
    rssm = Rssm(BOTH_CONFIG)
    assert rssm.encoder.embed_size == 16 + 4 * 4 * 8  # vector H + image 4x4x8
    obs = {"obs": np.zeros((2, 5, 3), np.float32),
           "image": np.zeros((2, 5, 16, 16, 1), np.uint8)}
    states, post, _ = rssm.observe(obs, np.zeros((2, 5, 2), np.float32), np.zeros((2, 5)))
    assert states.h.shape == (2, 5, 16) and post.shape == (2, 5, 4, 4)
    # the posterior sees the image: a different frame changes its logits
    obs2 = {**obs, "image": np.full((2, 5, 16, 16, 1), 255, np.uint8)}
    _, post2, _ = rssm.observe(obs2, np.zeros((2, 5, 2), np.float32), np.zeros((2, 5)))
    assert np.abs(post.numpy() - post2.numpy()).max() > 1e-3


# --------------------------------------------------------------------- episodes
def test_uint8_images_round_trip_through_the_episode_store(tmp_path):
    episode = square_episode(7, with_obs=True)
    path = EpisodeStore(tmp_path).add(episode, "ep")
    loaded = load_episode(path)
    assert loaded["image"].dtype == np.uint8
    np.testing.assert_array_equal(loaded["image"], episode["image"])
    np.testing.assert_array_equal(loaded["obs"], episode["obs"])
    with pytest.raises(EpisodeError, match="image must be uint8"):
        save_episode(tmp_path, {**episode, "image": episode["image"] / 255.0})
    with pytest.raises(EpisodeError, match=r"image must have shape \[T, O\] \(a vector\) or \[T, H, W, C\]"):
        save_episode(tmp_path, {**episode, "image": episode["image"][..., 0]})


def test_dataset_keeps_pixels_uint8_and_picks_keys(tmp_path):
    episodes = [square_episode(9, seed=i, with_obs=True) for i in range(3)]
    batch = next(iter(make_dataset(episodes, 2, 5, obs_keys=("image",))))
    assert "obs" not in batch and batch["image"].dtype == tf.uint8
    assert batch["image"].shape == (2, 5, 16, 16, 3)
    stream = np.concatenate([e["image"] for e in episodes])
    for window in batch["image"].numpy():  # every window is a slice of the stream
        assert any(np.array_equal(window, stream[s:s + 5]) for s in range(len(stream) - 4))
    with pytest.raises(ValueError, match="obs_keys must be a non-empty subset"):
        make_dataset([square_episode(9)], 2, 5, obs_keys=("obs",))


# ----------------------------------------------------------------------- model
def test_image_reconstruction_loss_by_hand():
    model = WorldModel(IMAGE_CONFIG)
    last = model.decoder.image.convs[-1]
    last.kernel.assign(tf.zeros_like(last.kernel))
    last.bias.assign(tf.zeros_like(last.bias))  # predicts 0, i.e. pixel 127.5
    episode = square_episode(4)
    batch = model.validate_batch({k: v[None] for k, v in episode.items()})
    _, logs = model.compute_losses(batch)
    target = episode["image"].astype(np.float64) / 255.0 - 0.5
    expected = (target ** 2).sum((1, 2, 3)).mean()  # summed over pixels, mean over T
    np.testing.assert_allclose(logs["rec"].numpy(), expected, rtol=1e-6)


def test_short_fit_on_pixel_episodes_lowers_the_loss(tmp_path):
    keras.utils.set_random_seed(0)
    episodes = [square_episode(24, seed=i) for i in range(12)]
    model = WorldModel(IMAGE_CONFIG, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    callback = ImaginationCallback(episodes, tmp_path, context=3, horizon=5)
    history = model.fit(make_dataset(episodes, 4, 8), epochs=3, steps_per_epoch=25,
                        callbacks=[callback], verbose=0)
    rec = history.history["rec"]
    assert rec[-1] < 0.5 * rec[0], rec
    assert sorted(callback.paths) == ["imagination", "imagination_frames"]
    png = tf.image.decode_png(callback.paths["imagination_frames"].read_bytes())
    assert png.shape[0] > 50 and png.shape[1] > 300
    result = evaluate_open_loop(model, episodes, context=3, horizon=5)
    assert len(result["image_mse"]) == 5 and len(result["mean_image_mse"]) == 5
    assert "obs_mse" not in result and result["windows"] == 36  # 3 per episode


def test_batch_with_a_float_image_is_refused():
    model = WorldModel(IMAGE_CONFIG)
    batch = {k: v[None] for k, v in square_episode(4).items()}
    batch["image"] = batch["image"].astype(np.float32)
    with pytest.raises(TypeError, match="image must be uint8"):
        model.validate_batch(batch)
    del batch["image"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['image'\]"):
        model.validate_batch(batch)


def test_image_model_round_trips_through_keras_file(tmp_path):
    from rssm_tf.saving import load_world_model, save_world_model

    model = WorldModel(BOTH_CONFIG)
    model.compile()
    batch = {k: v[None] for k, v in square_episode(5, channels=1, with_obs=True).items()}
    before = model(batch)
    again = load_world_model(save_world_model(model, tmp_path / "m.keras"))
    after = again(batch)
    assert again.config == BOTH_CONFIG
    for key in ("image", "obs", "reward"):
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())


# ---------------------------------------------------------------- export / serving
@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """A briefly trained vector+image model, exported with ONNX and LiteRT. Its parity is
    checked by the tests below against the Keras model (the exporter's own report is
    tested on the vector model's export)."""
    from rssm_tf_export.exporter import export_model

    from rssm_tf.saving import save_world_model

    model = WorldModel(BOTH_CONFIG, seed=2)
    model.compile()
    episodes = [square_episode(10, channels=1, seed=i, with_obs=True) for i in range(3)]
    model.fit(make_dataset(episodes, 2, 6), epochs=1, steps_per_epoch=3, verbose=0)
    root = tmp_path_factory.mktemp("image_export")
    path = save_world_model(model, root / "model.keras")
    return root / "out", export_model(path, root / "out", name="pix", verbose=False,
                                      litert=True, parity=False)


def test_image_export_computes_what_keras_does_on_every_backend(image_export, tmp_path):
    """The CNN's weights are restored by TF Serving's loader and carried into the
    SavedModel, ONNX and LiteRT: each against the Keras model run in this test."""
    from rssm_tf_export.runner import run_all, litert_cases
    from rssm_tf_serving.backends import LiteRtBackend, OnnxBackend, SavedModelBackend
    from served import cases_for, keras_call, run_in_tf_serving_loader

    from rssm_tf.saving import load_world_model

    out, _ = image_export
    model = load_world_model(out.parent / "model.keras", compile=False)
    cases = cases_for(model, seed=3)
    reference = run_all(keras_call(model), cases)
    served = run_in_tf_serving_loader(out / "saved_model" / "pix" / "1", cases, tmp_path)
    others = {"litert": LiteRtBackend(out / "litert"), "onnx": OnnxBackend(out / "onnx"),
              "savedmodel": SavedModelBackend(out / "saved_model" / "pix")}
    for what, outputs in (("session", served),
                          *((k, run_all(b.call, litert_cases(cases) if k == "litert"
                                        else cases)) for k, b in others.items())):
        for case in outputs:
            ref = reference[case]
            for key, value in ref.items():
                if key.startswith("z_"):
                    np.testing.assert_array_equal(outputs[case][key], value, err_msg=what)
                else:
                    np.testing.assert_allclose(outputs[case][key], value, atol=1e-5,
                                               rtol=1e-5, err_msg=f"{what} {case} {key}")


def test_image_export_signatures_take_uint8_pixels(image_export):
    out, manifest = image_export
    inputs = manifest["signatures"]["obs_step_noise"]["inputs"]
    assert inputs["image"] == {"dtype": "uint8", "shape": [None, 16, 16, 1]}
    assert inputs["obs"] == {"dtype": "float32", "shape": [None, 3]}
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                            "show", "--dir", str(out / "saved_model" / "pix" / "1"),
                            "--tag_set", "serve", "--signature_def", "obs_step"],
                           capture_output=True, text=True, check=True).stdout
    assert "inputs['image'] tensor_info:\n      dtype: DT_UINT8" in shown


def test_image_client_backends_agree(image_export):
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.standin import StandInServer

    out, _ = image_export
    rng = np.random.default_rng(5)
    steps = [{"obs": rng.normal(size=(2, 3)).astype(np.float32),
              "image": rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)} for _ in range(4)]
    actions = rng.uniform(-1, 1, (4, 2, 2)).astype(np.float32)
    noise = rng.uniform(0.01, 0.99, (4, 2, 4, 4)).astype(np.float32)
    with StandInServer(out / "saved_model" / "pix", name="pix") as server:
        clients = {"onnx": WorldModelClient.from_export(out, "onnx"),
                   "litert": WorldModelClient.from_export(out, "litert"),
                   "savedmodel": WorldModelClient.from_export(out, "savedmodel"),
                   "rest": WorldModelClient.from_export(out, "rest", url=server.rest_url),
                   "grpc": WorldModelClient.from_export(out, "grpc",
                                                        target=server.grpc_target)}
        traces = {}
        for name, client in clients.items():
            assert client.obs_keys == ("obs", "image")
            client.reset(2)
            traces[name] = [client.observe(a, o, noise=n) for a, o, n in
                            zip(actions, steps, noise)]
    for name in ("litert", "savedmodel", "rest", "grpc"):
        for a, b in zip(traces["onnx"], traces[name]):
            np.testing.assert_array_equal(a["z"], b["z"], err_msg=name)
            np.testing.assert_allclose(a["h"], b["h"], atol=1e-5, err_msg=name)
    client = clients["onnx"]
    with pytest.raises(TypeError, match="image must be uint8"):
        client.observe(actions[0], {**steps[0], "image": steps[0]["image"] / 255.0})
    with pytest.raises(ValueError, match=r"image must have shape \[2, 16, 16, 1\]"):
        client.observe(actions[0], {**steps[0], "image": steps[0]["image"][:, :8]})
    with pytest.raises(TypeError, match="obs must be a dict"):
        client.observe(actions[0], steps[0]["obs"])
