import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import (
    KlBalanceConfig,
    TwohotEncoder,
    categorical_entropy,
    categorical_kl,
    kl_balanced_loss,
    latent_distribution,
    mix_logits,
    symexp,
    symlog,
)

# two groups, p = [0.5, 0.5], q = [0.25, 0.75] in each
P = np.log(np.array([[0.5, 0.5], [0.5, 0.5]], np.float32))
Q = np.log(np.array([[0.25, 0.75], [0.25, 0.75]], np.float32))
KL_PER_GROUP = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)  # 0.1438410362


def test_symlog_symexp_values():
    x = np.array([-1e8, -3.0, -1.0, 0.0, 0.5, 1e8], np.float32)
    np.testing.assert_allclose(symlog(x).numpy(), np.sign(x) * np.log1p(np.abs(x)),
                               rtol=1e-6)
    np.testing.assert_allclose(symexp(symlog(x)).numpy(), x, rtol=1e-5)
    assert symlog(tf.constant(0.0)).numpy() == 0.0


@pytest.mark.parametrize("free_nats, expected", [
    (0.0, 2 * KL_PER_GROUP), (1.0, 1.0), (3.0, 3.0)])
def test_kl_free_nats_on_summed_kl(free_nats, expected):
    result = kl_balanced_loss(P[None], Q[None], KlBalanceConfig(0.5, 0.1, free_nats))
    np.testing.assert_allclose(result.kl.numpy(), [2 * KL_PER_GROUP], rtol=1e-5)
    np.testing.assert_allclose(result.dyn.numpy(), [expected], rtol=1e-5)
    np.testing.assert_allclose(result.rep.numpy(), [expected], rtol=1e-5)
    np.testing.assert_allclose(result.loss.numpy(), 0.6 * expected, rtol=1e-5)


def test_kl_and_entropy_by_hand_and_equal_to_tfp():
    np.testing.assert_allclose(categorical_kl(P, Q).numpy(), 2 * KL_PER_GROUP, rtol=1e-6)
    # entropy of [0.5, 0.5] is log 2 per group; of [0.25, 0.75] 0.5623351 per group
    np.testing.assert_allclose(categorical_entropy(P).numpy(), 2 * np.log(2.0), rtol=1e-6)
    h_q = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    np.testing.assert_allclose(categorical_entropy(Q).numpy(), 2 * h_q, rtol=1e-6)
    # on mixed logits (what the model passes): values and gradients equal TFP's
    rng = np.random.default_rng(0)
    p = tf.Variable(mix_logits(rng.normal(size=(3, 4, 8)).astype(np.float32) * 3, 0.01))
    q = tf.Variable(mix_logits(rng.normal(size=(3, 4, 8)).astype(np.float32) * 3, 0.01))
    with tf.GradientTape(persistent=True) as tape:
        ours = categorical_kl(p, q) + categorical_entropy(p)
        dist = latent_distribution(p)
        theirs = dist.kl_divergence(latent_distribution(q)) + dist.entropy()
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(tape.gradient(ours, [p, q]), tape.gradient(theirs, [p, q])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_free_nats_do_not_clip_each_group():
    # each group's KL (0.144) is below 0.2 but their sum (0.288) is above it
    result = kl_balanced_loss(P[None], Q[None], KlBalanceConfig(1.0, 0.0, 0.2))
    np.testing.assert_allclose(result.loss.numpy(), 2 * KL_PER_GROUP, rtol=1e-5)


@pytest.mark.parametrize("dyn, rep, moves_post, moves_prior", [
    (1.0, 0.0, False, True), (0.0, 1.0, True, False)])
def test_stop_gradient_directions(dyn, rep, moves_post, moves_prior):
    post = tf.Variable(P[None])
    prior = tf.Variable(Q[None])
    with tf.GradientTape() as tape:
        loss = kl_balanced_loss(post, prior, KlBalanceConfig(dyn, rep, 0.0)).loss
    g_post, g_prior = tape.gradient(loss, [post, prior])
    assert (g_post is not None and np.abs(g_post.numpy()).max() > 1e-3) == moves_post
    assert (g_prior is not None and np.abs(g_prior.numpy()).max() > 1e-3) == moves_prior


def test_twohot_grid_is_symmetric():
    enc = TwohotEncoder()
    c = enc.bins_np
    assert c.shape == (255,) and c[127] == 0.0 and c[0] == -20.0 and c[-1] == 20.0
    np.testing.assert_array_equal(c, -c[::-1])
    raw = TwohotEncoder(space="raw").bins_np
    np.testing.assert_array_equal(raw, -raw[::-1])
    np.testing.assert_allclose(raw[-1], np.expm1(20.0), rtol=1e-6)


def test_twohot_symlog_weights_by_hand():
    enc = TwohotEncoder(5, -2.0, 2.0)  # bins -2, -1, 0, 1, 2 in symlog space
    y = np.array([np.expm1(0.5), np.expm1(1.0), 1e8, -1e8, 0.0], np.float32)
    w = enc.encode(y).numpy()
    np.testing.assert_allclose(w[0], [0, 0, 0.5, 0.5, 0], atol=1e-6)  # between bins
    np.testing.assert_allclose(w[1], [0, 0, 0, 1, 0], atol=1e-6)      # on a bin
    np.testing.assert_allclose(w[2], [0, 0, 0, 0, 1], atol=1e-6)      # beyond the end
    np.testing.assert_allclose(w[3], [1, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[4], [0, 0, 1, 0, 0], atol=1e-6)


def test_twohot_raw_weights_by_hand():
    enc = TwohotEncoder(5, -2.0, 2.0, space="raw")  # bins symexp(-2..2)
    w = enc.encode(np.array([1.0, 1e8], np.float32)).numpy()
    hi = 1.0 / np.expm1(1.0)  # 1 lies between 0 and e - 1
    np.testing.assert_allclose(w[0], [0, 0, 1 - hi, hi, 0], atol=1e-6)
    np.testing.assert_allclose(w[1], [0, 0, 0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("space", ["symlog", "raw"])
def test_encode_then_decode_and_uniform_zero(space):
    enc = TwohotEncoder(space=space)
    y = np.array([-123.4, -1.0, 0.0, 0.37, 5.0, 2500.0], np.float32)
    decoded = enc.decode(tf.math.log(enc.encode(y))).numpy()
    np.testing.assert_allclose(decoded, y, rtol=2e-4, atol=1e-4)
    assert enc.decode(tf.zeros([3, 255])).numpy().tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("space", ["symlog", "raw"])
def test_huge_targets_give_finite_loss_and_gradients(space):
    enc = TwohotEncoder(space=space)
    logits = tf.Variable(tf.random.stateless_normal([4, 255], [1, 2]))
    y = tf.constant([1e8, -1e8, 3e7, 0.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(enc.loss(logits, y))
    grad = tape.gradient(loss, logits)
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad.numpy()))


def test_twohot_argument_errors():
    with pytest.raises(ValueError, match="num_bins"):
        TwohotEncoder(1)
    with pytest.raises(ValueError, match="space"):
        TwohotEncoder(space="log")
    with pytest.raises(ValueError, match="low must be < high"):
        TwohotEncoder(low=3.0, high=1.0)
