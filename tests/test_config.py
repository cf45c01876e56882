import json

import pytest

from rssm_tf import KlBalanceConfig, Rssm, RssmConfig


def test_seed_defaults():
    c = RssmConfig(64, 11)
    assert (c.deterministic_size, c.n_categories, c.n_classes, c.hidden_size,
            c.n_blocks, c.unimix) == (512, 32, 32, 512, 8, 0.01)
    assert (c.activation, c.norm, c.norm_eps) == ("silu", "rms", 1e-4)
    assert c.stoch_size == 1024 and c.feat_size == 1536


@pytest.mark.parametrize("field, value, words", [
    ("deterministic_size", 100, "divisible by n_blocks"),
    ("hidden_size", 0, "hidden_size"),
    ("n_classes", -1, "n_classes"),
    ("unimix", 1.0, "unimix"),
    ("unimix", -0.1, "unimix"),
    ("n_blocks", -2, "n_blocks"),
    ("norm", "batch", "norm"),
    ("obs_dim", 2.5, "obs_dim"),
])
def test_invalid_values_name_the_field(field, value, words):
    kwargs = dict(obs_dim=4, action_dim=2)
    kwargs[field] = value
    with pytest.raises(ValueError, match=words):
        RssmConfig(**kwargs)


def test_kl_config_validation():
    assert KlBalanceConfig() == KlBalanceConfig(0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="free_nats"):
        KlBalanceConfig(free_nats=-1)


def test_dict_json_round_trip():
    c = RssmConfig(7, 2, deterministic_size=64, n_blocks=0, unimix=0.0, norm="layer")
    assert RssmConfig.from_dict(c.to_dict()) == c
    assert RssmConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["n_blocks"] == 0
    with pytest.raises(ValueError, match="unknown RssmConfig field"):
        RssmConfig.from_dict({**c.to_dict(), "depth": 3})
    k = KlBalanceConfig(0.3, 0.2, 0.0)
    assert KlBalanceConfig.from_dict(k.to_dict()) == k


def test_keras_get_config_round_trip(small_config):
    rssm = Rssm(small_config, seed=3)
    clone = Rssm.from_config(rssm.get_config())
    assert clone.config == small_config
    assert clone.twohot.get_config() == rssm.twohot.get_config()
    assert [w.shape for w in clone.weights] == [w.shape for w in rssm.weights]


def test_activation_is_read_by_every_layer():
    """``activation="gelu"`` reaches every hidden layer: NormDense computes
    gelu_tanh(rms(x @ W)) by hand, and a whole model's outputs differ from SiLU's with
    the same weights."""
    import math

    import numpy as np

    from rssm_tf.layers import NormDense

    layer = NormDense(2, norm_eps=1e-4, activation="gelu")
    layer.build((None, 2))
    layer.dense.kernel.assign([[1.0, 0.0], [0.0, 2.0]])
    x = np.array([[1.0, 1.0]], "float32")
    pre = np.array([1.0, 2.0])
    n = pre / math.sqrt((1.0 + 4.0) / 2 + 1e-4)

    def gelu(v):
        return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    np.testing.assert_allclose(layer(x).numpy()[0], [gelu(v) for v in n], rtol=1e-5)
    assert NormDense.from_config(layer.get_config()).activation == "gelu"

    silu = Rssm(RssmConfig(3, 2, deterministic_size=16, hidden_size=8, n_categories=2,
                           n_classes=4, n_blocks=2))
    gelu_model = Rssm(RssmConfig(3, 2, deterministic_size=16, hidden_size=8,
                                 n_categories=2, n_classes=4, n_blocks=2,
                                 activation="gelu"))
    gelu_model.set_weights(silu.get_weights())
    state = silu.initial_state(1)
    a, o = np.ones([1, 2], "float32"), np.ones([1, 3], "float32")
    _, post_s, _ = silu.obs_step(state, a, o)
    _, post_g, _ = gelu_model.obs_step(state, a, o)
    assert np.abs(post_s.numpy() - post_g.numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="activation"):
        RssmConfig(3, 2, activation="relu")


def test_configs_saved_with_the_removed_initial_field_still_load():
    values = RssmConfig(4, 2).to_dict()
    assert "initial" not in values
    assert RssmConfig.from_dict({**values, "initial": "zeros"}) == RssmConfig(4, 2)
    with pytest.raises(ValueError, match="initial"):
        RssmConfig.from_dict({**values, "initial": "learned"})
