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


def test_block_structure_via_gradients(rng):
    gru = _gru(16, 4)
    h = tf.constant(rng.normal(size=(1, 16)), tf.float32)
    x = tf.constant(rng.normal(size=(1, 6)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = gru(x, h)
    jac = tape.batch_jacobian(out, h)[0].numpy()  # [16 out, 16 in]
    for i in range(4):
        for j in range(4):
            block = jac[4 * i:4 * i + 4, 4 * j:4 * j + 4]
            if i == j:
                assert np.abs(block).max() > 1e-3
            else:
                assert np.abs(block).max() == 0.0


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
