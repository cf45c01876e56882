"""The hand-written backward of the observe loop equals TensorFlow's autodiff."""

import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import Rssm, RssmConfig


def gradients(rssm, manual, sampled, compiled, seed=0):
    rng = np.random.default_rng(seed)
    c = rssm.config
    obs = tf.constant(rng.normal(size=(3, 7, c.obs_dim)), tf.float32)
    act = tf.constant(rng.normal(size=(3, 7, c.action_dim)), tf.float32)
    first = tf.constant(rng.uniform(size=(3, 7)) < 0.3, tf.float32)
    noise = tf.constant(rng.uniform(size=(3, 7, c.n_categories, c.n_classes)), tf.float32) \
        if sampled else None
    weights = [tf.constant(rng.normal(size=s), tf.float32) for s in
               [(3, 7, c.deterministic_size), (3, 7, c.stoch_size),
                (3, 7, c.n_categories, c.n_classes)]]

    def run():
        with tf.GradientTape() as tape:
            states, post, prior = rssm.observe(obs, act, first, noise=noise, sample=False)
            loss = (tf.reduce_mean(states.h * weights[0]) + tf.reduce_mean(states.z * weights[1])
                    + tf.reduce_mean(post * weights[2]) + tf.reduce_mean(prior * weights[2]))
        return loss, tape.gradient(loss, rssm.trainable_variables)

    rssm.manual_gradient = manual
    return (tf.function(run, jit_compile=True) if compiled else run)()


@pytest.mark.parametrize("blocks,norm,unimix", [(4, "rms", 0.01), (0, "rms", 0.01),
                                                (4, "layer", 0.01), (0, "layer", 0.0)])
@pytest.mark.parametrize("sampled", [True, False])
def test_manual_backward_equals_autodiff(blocks, norm, unimix, sampled):
    """Block and dense GRU, both norms, with and without the uniform mix."""
    config = RssmConfig(5, 3, deterministic_size=16, n_categories=4, n_classes=3,
                        hidden_size=8, n_blocks=blocks, posterior_layers=2, norm=norm,
                        unimix=unimix)
    rssm = Rssm(config, seed=0)
    loss_a, auto = gradients(rssm, False, sampled, False)
    loss_m, manual = gradients(rssm, True, sampled, False)
    assert float(loss_a) == float(loss_m)
    checked = 0
    for var, a, m in zip(rssm.trainable_variables, auto, manual):
        assert (a is None) == (m is None), var.path
        if a is not None:
            np.testing.assert_allclose(m.numpy(), a.numpy(), atol=1e-5, rtol=1e-5,
                                       err_msg=var.path)
            checked += 1
    assert checked >= 20  # every weight of the loop, the encoder, the prior and inp_a


def test_manual_backward_under_xla():
    config = RssmConfig(5, 3, deterministic_size=16, n_categories=4, n_classes=3,
                        hidden_size=8, n_blocks=4)
    rssm = Rssm(config, seed=0)
    _, auto = gradients(rssm, False, True, True)
    _, manual = gradients(rssm, True, True, True)
    for var, a, m in zip(rssm.trainable_variables, auto, manual):
        if a is not None:
            np.testing.assert_allclose(m.numpy(), a.numpy(), atol=1e-5, rtol=1e-5,
                                       err_msg=var.path)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_manual_backward_under_mixed_precision(policy):
    """Under a mixed policy both backwards multiply in the low precision: they agree to
    within its rounding: every weight's gradient within 1.5% (bfloat16, 8 bits of
    mantissa) or 0.5% (float16, 11 bits) of autodiff's in norm, and pointing the same
    way. The worst weight measured: bfloat16 0.33% over 12 initialisations on an
    AVX-512 CPU with native bfloat16 dot products, 1.12% over 6 on an AVX2-only CPU
    (1.08% for this one, with TensorFlow's oneDNN or Eigen kernels alike); float16
    0.21%. Seeded, so the test does not depend on what ran before it in the process.
    docs/fidelity.md states these bounds."""
    import keras

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        config = RssmConfig(5, 3, deterministic_size=16, n_categories=4, n_classes=3,
                            hidden_size=8, n_blocks=4)
        rssm = Rssm(config, seed=0)
        _, auto = gradients(rssm, False, True, False)
        _, manual = gradients(rssm, True, True, False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    worst = 0.0
    for var, a, m in zip(rssm.trainable_variables, auto, manual):
        if a is None:
            continue
        a, m = a.numpy().astype(np.float64).ravel(), m.numpy().astype(np.float64).ravel()
        if np.linalg.norm(a) < 1e-6:
            continue
        error = np.linalg.norm(m - a) / np.linalg.norm(a)
        worst = max(worst, error)
        assert error < {"mixed_bfloat16": 1.5e-2, "mixed_float16": 5e-3}[policy], (var.path,
                                                                                 error)
        assert a @ m / (np.linalg.norm(a) * np.linalg.norm(m)) > 0.999, var.path
    assert worst > 0  # the comparison ran in the low precision


def test_repeated_site_name_is_refused():
    """Two multiplications under one site name would share one stored output and one
    kernel gradient: the loop refuses to build instead."""
    from rssm_tf.scan import LoopInputs, _sites

    config = RssmConfig(5, 3, deterministic_size=16, n_categories=4, n_classes=3,
                        hidden_size=8, n_blocks=4)
    rssm = Rssm(config, seed=0)
    inputs = LoopInputs(tf.zeros([2, 16]), tf.zeros([2, 12]), tf.zeros([1, 2, 1]),
                        tf.zeros([1, 2, 16]), tf.zeros([1, 2, 8]), None)
    names = [site.name for site in _sites(rssm, inputs)]
    assert names == ["inp_h", "inp_z", "gru/input", "gru/hidden", "gru/gates", "post/0",
                     "post/out"]
    original = rssm._observe_step

    def clashing(h, z, first, a, e, noise, mm):
        def renamed(site, *args):
            return mm("inp_h" if site == "inp_z" else site, *args)

        return original(h, z, first, a, e, noise, renamed)

    rssm._observe_step = clashing
    with pytest.raises(ValueError, match=r"\['inp_h'\] more than once"):
        _sites(rssm, inputs)


def test_kernel_views_split_the_rows_once():
    """The named views cover the GRU input kernel's [L(h) | L(z) | L(a)] rows and the
    posterior's [h | embed] rows exactly, without overlap."""
    config = RssmConfig(5, 3, deterministic_size=16, n_categories=4, n_classes=3,
                        hidden_size=8, n_blocks=4)
    rssm = Rssm(config, seed=0)
    views = rssm.views
    assert views["gru/input"].rows == (0, 16) and views["gru/input_a"].rows == (16, 24)
    assert views["gru/input"].kernel is views["gru/input_a"].kernel is rssm.gru.input_kernel
    assert rssm.gru.input_kernel.shape[0] == 24
    embed = rssm.encoder.embed_size
    assert views["post/0"].rows == (0, 16) and views["post/embed"].rows == (16, 16 + embed)
    assert views["post/0"].kernel.shape[0] == 16 + embed
    # a property: Keras does not track the variables a second time
    paths = [v.path for v in rssm.variables]
    assert len(paths) == len(set(paths))
