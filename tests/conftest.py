"""Shared fixtures: quiet TensorFlow logs, small configurations, seeded numpy."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rssm_tf import RssmConfig  # noqa: E402


@pytest.fixture
def small_config() -> RssmConfig:
    """A block-GRU configuration small enough for fast tests."""
    return RssmConfig(obs_dim=5, action_dim=3, deterministic_size=16, n_categories=4,
                      n_classes=3, hidden_size=8, n_blocks=4)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
