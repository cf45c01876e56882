import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import Rssm, RssmConfig, RssmState


@pytest.fixture
def rssm(small_config):
    return Rssm(small_config, seed=1)


def _seq(rng, config, b=2, t=6):
    obs = rng.normal(size=(b, t, config.obs_dim)).astype("float32")
    act = rng.normal(size=(b, t, config.action_dim)).astype("float32")
    noise = rng.uniform(size=(b, t, config.n_categories, config.n_classes))
    return obs, act, noise.astype("float32")


def test_three_line_use_and_shapes():
    rssm = Rssm(RssmConfig(obs_dim=4, action_dim=2))
    state, post, prior = rssm.obs_step(rssm.initial_state(3), np.ones((3, 2)), np.ones((3, 4)))
    assert state.h.shape == (3, 512) and state.z.shape == (3, 1024)
    assert post.shape == prior.shape == (3, 32, 32)
    np.testing.assert_array_equal(state.z.numpy().reshape(3, 32, 32).sum(-1), 1.0)
    assert state.feat().shape == (3, 1536)


def test_zero_reward_head_and_continue_shape(rssm, small_config):
    state = rssm.initial_state(4)
    logits = rssm.predict_reward(state.h + 0.3, state.z)
    assert logits.shape == (4, 255)
    assert np.all(logits.numpy() == 0.0)
    assert np.all(rssm.decode_reward(logits).numpy() == 0.0)
    assert rssm.predict_continue(state.h, state.z).shape == (4, 1)


def test_logits_are_unimix_adjusted(rssm, small_config):
    state, post, prior = rssm.obs_step(rssm.initial_state(2), np.ones((2, 3)), np.ones((2, 5)))
    for logits in (post, prior):
        probs = np.exp(logits.numpy())
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        assert probs.min() >= 0.01 / small_config.n_classes * (1 - 1e-4)


def test_observe_equals_stepping_with_the_same_noise(rssm, small_config, rng):
    obs, act, noise = _seq(rng, small_config)
    states, posts, priors = rssm.observe(obs, act, np.zeros((2, 6)), noise=noise)
    state = rssm.initial_state(2)
    for t in range(6):
        state, post, prior = rssm.obs_step(state, act[:, t], obs[:, t], noise=noise[:, t])
        np.testing.assert_allclose(state.h.numpy(), states.h[:, t].numpy(), atol=1e-5)
        np.testing.assert_array_equal(state.z.numpy(), states.z[:, t].numpy())
        np.testing.assert_allclose(post.numpy(), posts[:, t].numpy(), atol=1e-5)
        np.testing.assert_allclose(prior.numpy(), priors[:, t].numpy(), atol=1e-5)


def test_reset_in_the_middle_equals_starting_fresh(rssm, small_config, rng):
    obs, act, _ = _seq(rng, small_config)
    is_first = np.zeros((2, 6), np.float32)
    is_first[:, 3] = 1.0
    whole = rssm.observe(obs, act, is_first, sample=False)
    fresh = rssm.observe(obs[:, 3:], act[:, 3:], is_first[:, 3:], sample=False)
    for a, b in zip(whole, fresh):
        a = a if not isinstance(a, RssmState) else a.h
        b = b if not isinstance(b, RssmState) else b.h
        np.testing.assert_allclose(a[:, 3:].numpy(), b.numpy(), atol=1e-6)
    # and without the reset the tail differs
    cont = rssm.observe(obs, act, np.zeros((2, 6)), sample=False)
    assert np.abs(cont[0].h[:, 3:].numpy() - fresh[0].h.numpy()).max() > 1e-3


def test_imagine_with_actions_equals_policy_and_steps(rssm, small_config, rng):
    obs, act, noise = _seq(rng, small_config)
    start, _, _ = rssm.obs_step(rssm.initial_state(2), act[:, 0], obs[:, 0], sample=False)
    states, priors = rssm.imagine(start, act, noise=noise)
    counter = iter(range(6))
    by_policy, _ = rssm.imagine(start, lambda s: act[:, next(counter)], horizon=6,
                                noise=noise)
    np.testing.assert_allclose(states.h.numpy(), by_policy.h.numpy(), atol=1e-6)
    state = start
    for t in range(6):
        state, prior = rssm.imagine_step(state, act[:, t], noise=noise[:, t],
                                         return_logits=True)
        np.testing.assert_allclose(prior.numpy(), priors[:, t].numpy(), atol=1e-5)
        np.testing.assert_array_equal(state.z.numpy(), states.z[:, t].numpy())
    assert rssm.imagine(start, act, horizon=4)[0].h.shape == (2, 4, 16)


def test_eager_function_and_xla_agree(rssm, small_config, rng):
    obs, act, noise = _seq(rng, small_config)
    is_first = np.zeros((2, 6), np.float32)
    eager = rssm.observe(obs, act, is_first, sample=False)
    # autograph off: the layer has no Python control flow on tensors to convert, and
    # in a long pytest session autograph's conversion cache once handed this lambda
    # another function's converted code
    graph = tf.function(lambda o, a, f: rssm.observe(o, a, f, sample=False),
                        autograph=False)(obs, act, is_first)
    xla = tf.function(lambda o, a, f: rssm.observe(o, a, f, sample=False),
                      jit_compile=True, autograph=False)(obs, act, is_first)
    for other in (graph, xla):
        np.testing.assert_array_equal(eager[0].z.numpy(), other[0].z.numpy())
        np.testing.assert_allclose(eager[0].h.numpy(), other[0].h.numpy(), atol=1e-5)
        np.testing.assert_allclose(eager[1].numpy(), other[1].numpy(), atol=1e-5)
        np.testing.assert_allclose(eager[2].numpy(), other[2].numpy(), atol=1e-5)


def test_seeded_sampling_is_reproducible(small_config, rng):
    obs, act, _ = _seq(rng, small_config)
    runs = [Rssm(small_config, seed=7) for _ in range(2)]
    for r in runs[1:]:
        r.set_weights(runs[0].get_weights())
    a, b = (r.observe(obs, act, np.zeros((2, 6)))[0].z.numpy() for r in runs)
    np.testing.assert_array_equal(a, b)


def test_gradients_reach_every_weight_through_observe(rssm, small_config, rng):
    obs, act, noise = _seq(rng, small_config)
    with tf.GradientTape() as tape:
        states, post, prior = rssm.observe(obs, act, np.zeros((2, 6)), noise=noise)
        feat = states.feat()
        loss = tf.reduce_sum(post) + tf.reduce_sum(prior) \
            + tf.reduce_sum(rssm.predict_continue(states.h, states.z)) \
            + tf.reduce_sum(rssm.predict_reward(states.h, states.z) * feat[..., :1])
    grads = tape.gradient(loss, rssm.trainable_weights)
    missing = [w.path for w, g in zip(rssm.trainable_weights, grads) if g is None]
    assert missing == []


@pytest.mark.parametrize("manual", [False, True])
def test_the_next_memory_reaches_the_posterior_only_through_the_straight_through_z(
        small_config, rng, manual):
    """End to end through the step, not just at the sampler: h2 depends on the
    posterior's weights only through the one-hot z1. Its true derivative is therefore
    zero (a small change of the weights leaves z1, so h2, exactly as it was), while the
    straight-through gradient is non-zero and flows through the GRU's z input; the
    prior, which the observe path does not feed into h, gets none. Checked through
    ``observe`` with autodiff and with the hand-written backward."""
    rssm = Rssm(small_config, seed=1, manual_gradient=manual)
    obs, act, noise = _seq(rng, small_config, t=2)
    weights = tf.constant(rng.normal(size=(2, small_config.deterministic_size)), "float32")
    rssm.observe(obs, act, np.zeros((2, 2)), noise=noise)  # builds the weights

    def next_memory():
        states, _, _ = rssm.observe(obs, act, np.zeros((2, 2)), noise=noise)
        return tf.reduce_sum(states.h[:, 1] * weights)

    post_kernel = rssm.post_net.out.kernel  # the posterior logits layer's kernel
    assert post_kernel.shape[-1] == small_config.stoch_size
    with tf.GradientTape() as tape:
        loss = next_memory()
    post, z_in, prior = tape.gradient(
        loss, [post_kernel, rssm.inp_z.trainable_weights, rssm.prior_net.trainable_weights])
    assert np.abs(post.numpy()).max() > 1e-4
    assert all(g is not None and np.abs(g.numpy()).max() > 1e-4 for g in z_in)
    assert all(g is None or np.abs(g.numpy()).max() == 0 for g in prior)
    before = loss.numpy()
    post_kernel.assign_add(1e-4 * np.sign(post.numpy()))  # uphill for the gradient
    assert next_memory().numpy() == before  # ... yet nothing moved: z1 stayed one-hot


@pytest.mark.parametrize("call, words", [
    (lambda r: r.obs_step(r.initial_state(2), np.ones((2, 4)), np.ones((2, 5))),
     r"action must have shape \[B, 3\]"),
    (lambda r: r.obs_step(r.initial_state(2), np.ones((2, 3)), np.ones((3, 5))),
     "batch size must agree"),
    (lambda r: r.obs_step((np.ones((2, 7)), np.ones((2, 12))), np.ones((2, 3)),
                          np.ones((2, 5))), r"state.h must have shape \[B, 16\]"),
    (lambda r: r.observe(np.ones((2, 6, 5)), np.ones((2, 5, 3)), np.zeros((2, 6))),
     "sequence length must agree"),
    (lambda r: r.observe(np.ones((2, 6)), np.ones((2, 6, 3)), np.zeros((2, 6))),
     r"obs must have shape \[B, T, 5\]"),
    (lambda r: r.imagine(r.initial_state(2), np.ones((2, 4, 3)), horizon=9),
     r"horizon must be in \[1, 4\]"),
    (lambda r: r.imagine(r.initial_state(2), lambda s: s.h[:, :3]), "horizon"),
    (lambda r: r.obs_step(r.initial_state(2), np.ones((2, 3)), np.ones((2, 5)),
                          noise=np.ones((2, 4, 4))), r"noise must have shape"),
    (lambda r: r.initial_state(0), "batch"),
    (lambda r: r.obs_step(r.initial_state(1), ["a", "b", "c"], np.ones((1, 5))),
     "action must be numeric"),
])
def test_bad_input_is_named(rssm, call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call(rssm)


def test_dense_gru_config_runs(rng):
    config = RssmConfig(3, 2, deterministic_size=8, n_categories=2, n_classes=4,
                        hidden_size=8, n_blocks=0)
    rssm = Rssm(config)
    states, post, prior = rssm.observe(rng.normal(size=(1, 3, 3)),
                                       rng.normal(size=(1, 3, 2)), np.zeros((1, 3)))
    assert states.h.shape == (1, 3, 8) and post.shape == (1, 3, 2, 4)
