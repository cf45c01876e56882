"""rssm_tf behaves as Keras users expect: public names, compile's arguments, the
jit_compile flag, the training flag, checkpoints, no printing from the library, and
the one private Keras/TensorFlow hook it relies on, pinned."""

import ast
import inspect
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import rssm_tf
from rssm_tf import AtomicModelCheckpoint, Rssm, RssmConfig, WorldModel, load_world_model

ROOT = Path(__file__).resolve().parent.parent
SMALL = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=16, n_categories=4,
                   n_classes=4, hidden_size=16, n_blocks=2)


def batches(n=4, b=2, t=6, seed=0):
    rng = np.random.default_rng(seed)
    first = np.zeros((n, b, t), "float32")
    first[:, :, 0] = 1
    return tf.data.Dataset.from_tensor_slices({
        "obs": rng.normal(size=(n, b, t, 3)).astype("float32"),
        "action": rng.uniform(-1, 1, (n, b, t, 2)).astype("float32"),
        "reward": rng.normal(size=(n, b, t)).astype("float32"), "is_first": first,
        "is_terminal": np.zeros((n, b, t), "float32")})


def test_every_name_the_readme_imports_from_the_package_exists():
    readme = (ROOT / "README.md").read_text()
    tree = ast.parse("\n".join(line for line in readme.splitlines()
                               if line.startswith("from rssm_tf")))
    names = [(node.module, alias.name) for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert ("rssm_tf", "Rssm") in names
    for module, name in names:
        assert hasattr(__import__(module, fromlist=[name]), name), (module, name)
    for name in ("WorldModel", "make_dataset", "evaluate_open_loop", "load_world_model",
                 "save_world_model", "AtomicModelCheckpoint", "NonFiniteGuard"):
        assert name in rssm_tf.__all__ and hasattr(rssm_tf, name)


@pytest.mark.parametrize("argument", ["metrics", "weighted_metrics", "loss"])
def test_compile_refuses_what_it_would_ignore(argument):
    model = WorldModel(SMALL)
    with pytest.raises(ValueError, match=rf"compile\({argument}=\.\.\.\) is not supported"
                       if argument != "loss" else "computes its own loss"):
        model.compile(**{argument: ["mae"] if argument != "loss" else "mse"})


def test_jit_compile_tells_whether_the_update_runs_under_xla():
    model = WorldModel(SMALL)
    model.compile()
    assert model.jit_compile is True and model.xla
    off = WorldModel(SMALL)
    off.compile(jit_compile=False)
    assert off.jit_compile is False
    # Keras' own step functions are built with the whole-step setting (no XLA around
    # the batch checks on one device), while the property reports the update's XLA
    model.make_train_function()
    assert model.jit_compile is True and model.train_function is not None


def test_the_private_hooks_this_library_relies_on_still_exist():
    """If a Keras or TensorFlow upgrade changes these, world_model.py must change too
    (see the comments at ``WorldModel._maybe_symbolic_build`` and
    ``op_determinism_enabled``), or cpu.py (``onednn_enabled``)."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    from tensorflow.python.framework import config as tf_config
    from tensorflow.python.util import _pywrap_util_port

    # conftest imports rssm_tf first, which asks for oneDNN's kernels unless the
    # variable was set before the tests started
    wanted = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") in ("1", "true")
    assert _pywrap_util_port.IsMklEnabled() is wanted

    hook = TensorFlowTrainer._maybe_symbolic_build
    assert list(inspect.signature(hook).parameters) == ["self", "iterator", "data_batch"]
    assert "strategy.reduce" in inspect.getsource(hook).replace("distribute_strategy", "strategy")
    assert tf_config.is_op_determinism_enabled() is False


def test_the_library_never_prints():
    offenders = []
    for path in sorted((ROOT / "rssm_tf").glob("*.py")):
        if path.name == "cli.py":  # a command prints its results
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_rssm_in_a_functional_model_follows_the_training_flag():
    obs, act, first = keras.Input((5, 3)), keras.Input((5, 2)), keras.Input((5,))
    states, post, prior = Rssm(SMALL, seed=1)(obs, act, first)
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([states.h, states.z]))
    model = keras.Model([obs, act, first], [out, post])
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, 5, 3)).astype("f"), rng.normal(size=(2, 5, 2)).astype("f"),
         np.zeros((2, 5), "f")]
    inference = [model(x, training=False)[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])  # the mode: deterministic
    training = [model(x, training=True)[0].numpy() for _ in range(2)]
    assert not np.array_equal(training[0], training[1])  # samples
    assert model.predict(x, verbose=0)[0].shape == (2, 5, 1)
    grads = None
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True)[0])
    grads = tape.gradient(loss, model.trainable_variables)
    assert sum(g is not None for g in grads) > 20


def test_checkpoint_monitor_best_only_template_and_batch_frequency(tmp_path):
    model = WorldModel(SMALL)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = batches(4)
    best = AtomicModelCheckpoint(tmp_path / "best-{epoch:02d}-{val_loss:.4f}.keras",
                                 monitor="val_loss", save_best_only=True)
    every = AtomicModelCheckpoint(tmp_path / "w-{epoch}-{batch}.weights.h5",
                                  save_weights_only=True, save_freq=3)
    history = model.fit(data, epochs=3, validation_data=data, callbacks=[best, every],
                        verbose=0)
    val = history.history["val_loss"]
    improved = [i for i, v in enumerate(val) if v == min(val[:i + 1])]
    saved = sorted(p.name for p in tmp_path.glob("best-*.keras"))
    assert saved == sorted(f"best-{i + 1:02d}-{val[i]:.4f}.keras" for i in improved)
    assert best.last_saved == tmp_path / saved[-1]
    # 12 batches, one save every 3: epoch 1 batch 2, epoch 2 batch 1, ...
    assert sorted(p.name for p in tmp_path.glob("w-*.weights.h5")) == sorted(
        ["w-1-2.weights.h5", "w-2-1.weights.h5", "w-3-0.weights.h5", "w-3-3.weights.h5"])
    again = WorldModel(SMALL)
    again.load_weights(tmp_path / "w-3-3.weights.h5")
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    with pytest.raises(ValueError, match="filepath must end in .keras"):
        AtomicModelCheckpoint(tmp_path / "model.h5")
    with pytest.raises(ValueError, match="save_freq"):
        AtomicModelCheckpoint(tmp_path / "m.keras", save_freq=0)
    with pytest.warns(UserWarning, match="'val_rec' is not in the logs"):
        model.fit(data.take(1), callbacks=[AtomicModelCheckpoint(
            tmp_path / "x.keras", monitor="val_rec", save_best_only=True)], verbose=0)


def test_a_model_saved_before_training_loads_without_optimizer_warnings(tmp_path):
    model = WorldModel(SMALL)
    model.compile()
    assert model.optimizer.built
    model.save(tmp_path / "fresh.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_world_model(tmp_path / "fresh.keras")
    assert [str(w.message) for w in caught if "optimizer" in str(w.message).lower()] == []
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    loaded.fit(batches(1), verbose=0)  # and it trains on


def test_a_trained_model_can_be_saved_with_tf_saved_model(tmp_path):
    """The cached compiled update is held where tf.saved_model does not look: a module
    holding a trained WorldModel saves, and its variables come back."""
    model = WorldModel(SMALL)
    model.compile()
    model.fit(batches(1), verbose=0)
    assert model._compiled.value  # the update was compiled and cached
    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, str(tmp_path / "saved"))
    reader = tf.train.load_checkpoint(str(tmp_path / "saved" / "variables" / "variables"))
    saved = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()]
    for weight in model.weights:  # every trained value is in the SavedModel's checkpoint
        value = weight.numpy()
        assert any(getattr(s, "shape", None) == value.shape and np.array_equal(s, value)
                   for s in saved), weight.path
