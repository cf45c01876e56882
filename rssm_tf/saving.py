"""Saving and loading world models without ever leaving a half-written file.

``save_world_model`` writes the ``.keras`` archive to a temporary file in the same
directory and renames it over the target, so the previous file stays intact until the
new one is complete. ``load_world_model`` keeps Keras' ``safe_mode`` and turns a
missing, foreign or corrupt file into one clear error naming the file.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import keras

from rssm_tf.atomic import atomic_path


class ModelFileError(ValueError):
    """A model file that is missing, of the wrong kind, or corrupt."""


def save_world_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves ``model`` (with its optimiser state) to ``path`` (``.keras``) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"path must end in .keras, got {str(path)!r}")
    with atomic_path(path, suffix=".tmp.keras") as tmp:  # Keras wants the .keras ending
        model.save(tmp)
    return path


def load_world_model(path: str | os.PathLike, compile: bool = True) -> Any:
    """Loads a ``.keras`` world model (``safe_mode`` on); errors name the file."""
    # Importing the package registers the serialisable classes.
    import rssm_tf.world_model  # noqa: F401

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory; expected a .keras file (an "
                             "exported SavedModel is served, not loaded for training)")
    if path.suffix != ".keras":
        raise ModelFileError(f"{path}: expected a .keras file, got '{path.suffix}'")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a .keras archive (truncated or corrupt)")
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad archive
        raise ModelFileError(f"{path}: cannot load the model: "
                             f"{type(error).__name__}: {error}") from None
    from rssm_tf.world_model import WorldModel

    if not isinstance(model, WorldModel):
        raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a "
                             "rssm_tf WorldModel")
    return model


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """``keras.callbacks.ModelCheckpoint``'s options, with every file written to a
    temporary name and renamed, so a crash mid-save never leaves a broken checkpoint.

    Args:
        filepath: the ``.keras`` file (``.weights.h5`` with ``save_weights_only``), or a
            template formatted with ``epoch`` (1-based), ``batch`` and the logs, e.g.
            ``"run/model-{epoch:03d}-{val_loss:.3f}.keras"``.
        monitor: the logged value that ``save_best_only`` compares ("val_loss").
        mode: "min", "max" or "auto" (max for accuracy-like names, else min).
        save_best_only: save only when ``monitor`` improves on the best so far (and on
            ``initial_value_threshold``, if given).
        save_weights_only: ``model.save_weights`` instead of the whole model.
        save_freq: "epoch", or a number of training batches between saves.
        verbose: 1 logs each save (``logging``, logger ``rssm_tf``, level INFO).

    Resume with :func:`load_world_model` and ``fit`` again.
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss",
                 verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto",
                 save_freq: str | int = "epoch",
                 initial_value_threshold: float | None = None) -> None:
        super().__init__()
        self.filepath = os.fspath(filepath)
        suffix = ".weights.h5" if save_weights_only else ".keras"
        if not self.filepath.endswith(suffix):
            raise ValueError(f"filepath must end in {suffix}"
                             f"{' with save_weights_only' if save_weights_only else ''}, "
                             f"got {self.filepath!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or
                                     not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer, got "
                             f"{save_freq!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor or monitor.startswith("fmeasure") else "min"
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self.epoch, self._batches = 0, 0
        self.last_saved: Path | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self._save(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            self._save(None, logs)

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def _save(self, batch: int | None, logs: dict | None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                warnings.warn(f"AtomicModelCheckpoint: '{self.monitor}' is not in the "
                              f"logs ({sorted(logs)}); nothing saved", stacklevel=2)
                return
            if not self._improved(value):
                return
            self.best = value
        try:
            path = Path(self.filepath.format(epoch=self.epoch + 1, batch=batch, **logs))
        except KeyError as error:
            raise KeyError(f"AtomicModelCheckpoint: filepath {self.filepath!r} names "
                           f"{error}, which is not in the logs {sorted(logs)}") from None
        if self.save_weights_only:
            with atomic_path(path, suffix=".tmp.weights.h5") as tmp:
                self.model.save_weights(tmp)
        else:
            save_world_model(self.model, path)
        self.last_saved = path
        if self.verbose:
            logging.getLogger("rssm_tf").info("AtomicModelCheckpoint: saved %s", path)
