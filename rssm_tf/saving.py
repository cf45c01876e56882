"""Saving and loading world models without ever leaving a half-written file.

``save_world_model`` writes the ``.keras`` archive to a temporary file in the same
directory and renames it over the target, so the previous file stays intact until the
new one is complete. ``load_world_model`` keeps Keras' ``safe_mode`` and turns a
missing, foreign or corrupt file into one clear error naming the file.
"""

from __future__ import annotations

import os
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
    """Saves the whole model (weights and optimiser state) to ``path`` after every
    epoch, atomically; resume with :func:`load_world_model` and ``fit`` again."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        save_world_model(self.model, self.path)
