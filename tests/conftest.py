"""Shared fixtures: quiet TensorFlow logs, small configurations, seeded numpy."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA's persistent compilation cache (TensorFlow's --tf_xla_persistent_cache_directory),
# one directory per test run, shared by the xdist workers (they inherit this process's
# environment) and the processes tests start: many tests compile the same small
# configuration's update, and XLA looks a compiled executable up by its whole HLO module
# (checked in full on load; files written to a temporary name and renamed), so a cached
# executable is the one a fresh compile would give. Measured: a repeated compile of the
# small update 12-18 s -> 8-13 s. Removed when the run ends.
_XLA_CACHE_VAR = "RSSM_TF_TESTS_XLA_CACHE"
_XLA_CACHE_OWNER = _XLA_CACHE_VAR not in os.environ
if _XLA_CACHE_OWNER:
    import tempfile

    os.environ[_XLA_CACHE_VAR] = tempfile.mkdtemp(prefix="rssm_tf_xla_cache_")
_flag = f"--tf_xla_persistent_cache_directory={os.environ[_XLA_CACHE_VAR]}"
if _flag not in os.environ.get("TF_XLA_FLAGS", ""):
    os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {_flag}".strip()

# rssm_tf before TensorFlow, as a user's script usually has it: the tests run the CPU
# kernels a user gets (rssm_tf/cpu.py)
from rssm_tf import BehaviorConfig, Dreamer, RssmConfig  # noqa: E402, I001  # isort: skip

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# The model the export and serving tests share (exported once per test session).
EXPORT_CONFIG = RssmConfig(obs_dim=4, action_dim=2, deterministic_size=32, n_categories=4,
                           n_classes=4, hidden_size=16, n_blocks=4)


# The session-scoped models each export once per worker process that uses them: the tests
# that use one run together in one worker (pytest-xdist's --dist loadgroup).
SHARED = {"model_path": "export", "exported": "export", "multi_export": "multi_export"}


def pytest_unconfigure(config):
    if _XLA_CACHE_OWNER:
        import shutil

        shutil.rmtree(os.environ[_XLA_CACHE_VAR], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = {SHARED[name] for name in getattr(item, "fixturenames", ()) if name in SHARED}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses the models of {sorted(groups)}: "
                                    "they would be exported in two workers")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups.pop()))


@pytest.fixture
def small_config() -> RssmConfig:
    """A block-GRU configuration small enough for fast tests."""
    return RssmConfig(obs_dim=5, action_dim=3, deterministic_size=16, n_categories=4,
                      n_classes=3, hidden_size=8, n_blocks=4)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# The shared export's actor: a discrete one (CartPole's two actions fit EXPORT_CONFIG)
EXPORT_BEHAVIOR = BehaviorConfig(discrete=True, layers=2, units=16)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A briefly trained small Dreamer (a world model and a discrete actor) saved as
    .keras (non-trivial heads): its export has every signature, the actor's too."""
    from rssm_tf.saving import save_world_model

    model = Dreamer(EXPORT_CONFIG, EXPORT_BEHAVIOR, seed=3)
    # without XLA: the export needs trained weights, not the compiled update (tested in
    # test_behavior); measured 30 s -> 17 s for this fixture
    model.compile(jit_compile=False)
    batch = {"obs": np.ones((2, 4, 4), "f"), "action": np.ones((2, 4, 2), "f"),
             "reward": np.ones((2, 4), "f"), "is_first": np.eye(1, 4, dtype="f").repeat(2, 0),
             "is_terminal": np.zeros((2, 4), "f")}
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), verbose=0)
    return save_world_model(model, tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture(scope="session")
def exported(model_path, tmp_path_factory):
    """``(out, manifest)`` of ``python -m export --litert --int8``'s work on
    ``model_path`` (name "wm")."""
    from rssm_tf_export.exporter import export_model

    out = tmp_path_factory.mktemp("exported")
    return out, export_model(model_path, out, name="wm", verbose=False, litert=True,
                             int8=True)


@pytest.fixture
def op_determinism():
    """TF op determinism for one test. It is process-wide, and while it is on Keras
    compiles without XLA, so it is switched off again afterwards."""
    from tensorflow.python.framework import config  # disable_* is not in the public API

    tf.config.experimental.enable_op_determinism()
    yield
    config.disable_op_determinism()
