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
