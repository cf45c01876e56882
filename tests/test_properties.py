"""Property tests: any valid configuration, shape and value range gives exact one-hot
latents, no NaN and a finite loss."""

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rssm_tf import Rssm, RssmConfig
from rssm_tf.world_model import WorldModel


@st.composite
def configs(draw):
    blocks = draw(st.sampled_from([0, 1, 2, 4]))
    deter = draw(st.sampled_from([4, 8, 16]))
    if blocks and deter % blocks:
        blocks = 0
    return RssmConfig(obs_dim=draw(st.integers(1, 5)), action_dim=draw(st.integers(1, 3)),
                      deterministic_size=deter, n_categories=draw(st.integers(1, 4)),
                      n_classes=draw(st.integers(2, 5)), hidden_size=draw(st.sampled_from([4, 8])),
                      n_blocks=blocks, unimix=draw(st.sampled_from([0.0, 0.01, 0.3])),
                      norm=draw(st.sampled_from(["rms", "layer"])), encoder_layers=1,
                      decoder_layers=1, head_layers=1, prior_layers=1)


SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(config=configs(), batch=st.integers(1, 3), length=st.integers(1, 4),
       obs_scale=st.sampled_from([0.0, 1.0, 1e4, 1e8]),
       action_scale=st.sampled_from([0.0, 1.0, 1e6]), seed=st.integers(0, 2 ** 16))
def test_observe_and_imagine_stay_finite_and_one_hot(config, batch, length, obs_scale,
                                                     action_scale, seed):
    rng = np.random.default_rng(seed)
    rssm = Rssm(config, seed=seed)
    obs = rng.normal(size=(batch, length, config.obs_dim)) * obs_scale
    act = rng.normal(size=(batch, length, config.action_dim)) * action_scale
    first = (rng.uniform(size=(batch, length)) < 0.3).astype("f")
    states, post, prior = rssm.observe(obs, act, first)
    for t in (states.h, states.z, post, prior):
        assert np.all(np.isfinite(t.numpy()))
    z = states.z.numpy().reshape(batch, length, config.n_categories, config.n_classes)
    assert set(np.unique(z)) <= {0.0, 1.0}
    np.testing.assert_array_equal(z.sum(-1), 1.0)
    last = type(states)(states.h[:, -1], states.z[:, -1])
    dream, logits = rssm.imagine(last, act)
    assert np.all(np.isfinite(dream.h.numpy())) and np.all(np.isfinite(logits.numpy()))


@SETTINGS
@given(config=configs(), length=st.integers(1, 4),
       reward_scale=st.sampled_from([0.0, 1.0, 1e8]), obs_scale=st.sampled_from([0.0, 1e8]),
       seed=st.integers(0, 2 ** 16))
def test_loss_and_gradients_are_finite(config, length, reward_scale, obs_scale, seed):
    rng = np.random.default_rng(seed)
    model = WorldModel(config, seed=seed)
    batch = {"obs": rng.normal(size=(2, length, config.obs_dim)) * obs_scale,
             "action": rng.normal(size=(2, length, config.action_dim)),
             "reward": rng.normal(size=(2, length)) * reward_scale,
             "is_first": np.eye(1, length).repeat(2, 0),
             "is_terminal": (rng.uniform(size=(2, length)) < 0.5)}
    batch = model.validate_batch(batch)
    with tf.GradientTape() as tape:
        loss, logs = model.compute_losses(batch)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy())
    assert all(np.isfinite(v.numpy()) for v in logs.values())
    assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)
