import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import BlockGRU, BlockLinear, Mlp, NormDense


def _gru(units, blocks, x_dim=6):
    gru = BlockGRU(units, blocks)
    gru.build((None, x_dim))
    return gru


@pytest.mark.parametrize("blocks", [4, 0])
def test_update_gate_bias_with_zero_weights(blocks):
    gru = _gru(8, blocks)
    for w in gru.weights:
        if "scale" not in w.path:
            w.assign(tf.zeros_like(w))
    h = tf.constant(np.linspace(-1, 1, 16).reshape(2, 8), tf.float32)
    out = gru(tf.ones([2, 6]), h)
    # pre = 0 -> r = 0.5, c = tanh(0) = 0, u = sigmoid(0 - 1): h' = (1 - sigmoid(-1)) h
    expected = (1 - 1 / (1 + np.exp(1.0))) * h.numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_norm_couples_the_blocks_as_dreamerv3(rng):
    """DreamerV3 normalises the flat D units after the block-diagonal map: block 0 of
    h' depends on block 1 of h through the norm's statistic; the scale has D entries."""
    gru = _gru(16, 4)
    assert tuple(gru.norm.scale.shape) == (16,)
    h = tf.constant(rng.normal(size=(1, 16)), tf.float32)
    x = tf.constant(rng.normal(size=(1, 6)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = gru(x, h)
    jac = tape.batch_jacobian(out, h)[0].numpy()  # [16 out, 16 in]
    for i in range(4):
        for j in range(4):
            assert np.abs(jac[4 * i:4 * i + 4, 4 * j:4 * j + 4]).max() > 1e-5, (i, j)
    # the weights themselves stay block-diagonal: one [d + X, d] matrix per block
    assert tuple(gru.hidden.kernel.shape) == (4, 4, 4)
    assert tuple(gru.gates.kernel.shape) == (4, 4, 12)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_blocks_first_norm_equals_keras_norm_on_the_flat_layout(rng, norm):
    gru = BlockGRU(12, 3, norm=norm)
    gru.build((None, 5))
    for w in gru.norm.weights:  # non-trivial per-unit scale and offset
        w.assign(rng.normal(size=w.shape).astype("float32"))
    x = rng.normal(size=(2, 12)).astype("float32") * 3.0 + 1.0
    blocks = tf.transpose(tf.reshape(x, [2, 3, 4]), [1, 0, 2])  # [G, B, d]
    got = tf.reshape(tf.transpose(gru._norm_blocks(blocks), [1, 0, 2]), [2, 12])
    np.testing.assert_allclose(got.numpy(), gru.norm(x).numpy(), rtol=1e-5, atol=1e-5)
    if norm == "rms":  # by hand: x / sqrt(mean(x^2) + eps) * scale, over all 12 units
        want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-4) * gru.norm.scale.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_dense_gru_mixes_all_units(rng):
    gru = _gru(16, 0)
    h = tf.constant(rng.normal(size=(1, 16)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = gru(tf.ones([1, 6]), h)
    jac = tape.batch_jacobian(out, h)[0].numpy()
    assert np.abs(jac[:4, 12:]).max() > 1e-4


def test_block_linear_is_per_block_matmul(rng):
    layer = BlockLinear(3, 2)
    layer.build((None, 2, 4))
    x = rng.normal(size=(5, 2, 4)).astype("float32")
    k = layer.kernel.numpy()
    b = rng.normal(size=(2, 3)).astype("float32")
    layer.bias.assign(b)
    expected = np.stack([x[:, g] @ k[g] + b[g] for g in range(2)], 1)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2, in\]"):
        BlockLinear(3, 2).build((None, 3, 4))


def test_norm_dense_value():
    layer = NormDense(2, norm_eps=1e-4)
    layer.build((None, 2))
    layer.dense.kernel.assign([[1.0, 0.0], [0.0, 3.0]])
    out = layer(tf.constant([[1.0, 1.0]])).numpy()
    pre = np.array([1.0, 3.0])
    normed = pre / np.sqrt(np.mean(pre ** 2) + 1e-4)
    np.testing.assert_allclose(out[0], normed / (1 + np.exp(-normed)), rtol=1e-5)


@pytest.mark.parametrize("cls, kwargs", [
    (BlockGRU, dict(units=8, n_blocks=2)),
    (BlockLinear, dict(units=4, n_blocks=2)),
    (NormDense, dict(units=4, norm="layer")),
    (Mlp, dict(layers=2, units=4, out_dim=3, zero_init=True)),
])
def test_layer_config_round_trip(cls, kwargs):
    layer = cls(**kwargs)
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_invalid_layer_arguments():
    with pytest.raises(ValueError, match="divisible by n_blocks"):
        BlockGRU(10, 3)
    with pytest.raises(ValueError, match="units"):
        NormDense(0)


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("compiled", [None, False, True])
def test_norm_act_silu_gradient_equals_autodiff(rng, kind, compiled):
    """The image encoder/decoder's ``norm_act`` for SiLU (written-out backward compiled by XLA):
    the same values as ``silu(norm(x))`` and the same gradients for the input and every
    norm weight as TensorFlow's autodiff of it; eagerly, as a ``tf.function`` and under
    XLA (where it is inlined)."""
    from rssm_tf.layers import make_norm, norm_act

    norm = make_norm(kind, 1e-4)
    norm.build((None, 6))
    for weight in norm.weights:  # away from the ones/zeros start, so every term counts
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    x = tf.constant(rng.normal(size=(2, 3, 6)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, 3, 6)), tf.float32)

    def run(fused):
        def value_and_grads():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = norm_act(norm, x) if fused else tf.nn.silu(norm(x))
                loss = tf.reduce_sum(y * upstream)
            return [y] + tape.gradient(loss, [x] + norm.trainable_variables)

        if compiled is None:
            return value_and_grads()
        return tf.function(value_and_grads, jit_compile=compiled)()

    expected, got = run(False), run(True)
    assert len(got) == (4 if kind == "layer" else 3)
    for name, e, g in zip(["y", "dx", "dscale", "doffset"], expected, got):
        assert float(tf.reduce_max(tf.abs(g))) > 1e-3, name  # a real, non-zero gradient
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=2e-6, err_msg=name)
