import numpy as np
import tensorflow as tf

from rssm_tf import latent_distribution, mix_logits, sample_latent
from rssm_tf.latents import gumbel, sample_log_probs


def test_unimix_floor_and_normalisation():
    logits = tf.constant([[[50.0, 0.0, -50.0, -50.0]]])
    probs = np.exp(mix_logits(logits, 0.01).numpy())
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[0, 0, 2], 0.01 / 4, rtol=1e-5)
    np.testing.assert_allclose(probs[0, 0, 0], 0.99 + 0.0025, rtol=1e-5)
    np.testing.assert_allclose(mix_logits(logits, 0.0).numpy(),
                               tf.nn.log_softmax(logits).numpy(), rtol=1e-6)


def test_value_is_exact_onehot_and_gradient_is_straight_through(rng):
    logits = tf.Variable(rng.normal(size=(2, 3, 5)).astype("float32"))
    noise = tf.constant(rng.uniform(size=(2, 3, 5)).astype("float32"))
    weights = tf.constant(rng.normal(size=(2, 15)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        z = sample_latent(logits, noise)
        through_z = tf.reduce_sum(z * weights)
        probs = tf.reshape(tf.nn.softmax(logits), [2, 15])
        through_probs = tf.reduce_sum(probs * weights)
    zs = z.numpy().reshape(2, 3, 5)
    assert set(np.unique(zs)) == {0.0, 1.0}
    np.testing.assert_array_equal(zs.sum(-1), 1.0)
    np.testing.assert_allclose(tape.gradient(through_z, logits).numpy(),
                               tape.gradient(through_probs, logits).numpy(), rtol=1e-6)


def test_gumbel_max_with_hand_noise():
    logits = tf.math.log(tf.constant([[[0.5, 0.5]]]))
    # -log(-log(u)) grows with u: the larger noise wins between equal logits
    z = sample_latent(logits, tf.constant([[[0.2, 0.9]]]))
    np.testing.assert_array_equal(z.numpy(), [[0.0, 1.0]])
    z = sample_latent(logits, tf.constant([[[0.9, 0.2]]]))
    np.testing.assert_array_equal(z.numpy(), [[1.0, 0.0]])
    mode = sample_latent(tf.constant([[[0.1, 2.0, 0.3]]]))
    np.testing.assert_array_equal(mode.numpy(), [[0.0, 1.0, 0.0]])


def test_tfp_distribution_entropy():
    dist = latent_distribution(tf.zeros([2, 4, 8]))
    assert dist.event_shape == [4, 8]
    np.testing.assert_allclose(dist.entropy().numpy(), 4 * np.log(8.0), rtol=1e-6)


def test_fast_path_on_log_probs_matches_sample_latent(rng):
    # the step's sampler (exp instead of softmax in the straight-through term) gives
    # the same one-hot and the same gradient with respect to the raw logits
    raw = tf.Variable(rng.normal(size=(4, 3, 5)).astype("float32") * 2)
    noise = tf.constant(rng.uniform(0.01, 0.99, size=(4, 3, 5)).astype("float32"))
    weights = tf.constant(rng.normal(size=(4, 15)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        mixed = mix_logits(raw, 0.01)
        fast = sample_log_probs(mixed, gumbel(noise))
        slow = sample_latent(mixed, noise)
        loss_fast = tf.reduce_sum(fast * weights)
        loss_slow = tf.reduce_sum(slow * weights)
    np.testing.assert_array_equal(fast.numpy(), slow.numpy())
    assert set(np.unique(fast.numpy())) == {0.0, 1.0}
    g_fast = tape.gradient(loss_fast, raw).numpy()
    g_slow = tape.gradient(loss_slow, raw).numpy()
    assert np.abs(g_slow).max() > 1e-3
    np.testing.assert_allclose(g_fast, g_slow, rtol=1e-5, atol=1e-7)
