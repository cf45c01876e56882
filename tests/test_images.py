"""Image observations: the convolutional encoder and decoder, uint8 episodes, fitting
on pixels (the export and serving of image keys: tests/test_obs_space.py)."""


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
    with pytest.raises(EpisodeError, match=r"image must have shape \[T, O\] \(a vector\) or "
                                           r"\[T, H, W, C\]"):
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
