"""Episodes on disk: the file format, its validation, reading and writing.

Episode format: one ``.npz`` file per episode with

==============  =========  ===================================================
key             shape      meaning
==============  =========  ===================================================
<key>           [T, O]     a vector observation at step t (float), e.g. ``obs``
<key>           [T, H,     an image observation at step t, uint8 in [0, 255],
                W, C]      e.g. ``image`` (any number of keys of either kind)
``action``      [T, A]     the action that led to the observations of step t
                           (zeros at t=0; discrete actions one-hot)
``reward``      [T]        reward received on arriving at step t (0 at t=0)
``is_first``    [T]        1 at t=0, else 0
``is_terminal`` [T]        1 where the episode ended by termination (not by a
                           time limit), else 0
==============  =========  ===================================================

The observation keys are the arrays other than the four step keys with at least one
axis per step (they must be vectors [T, O] or images [T, H, W, C]); arrays [T] of
per-step scalars (and scalars) are not observations and are dropped when an episode
is validated.

Files are written to a temporary name in the same directory and renamed, so a crash
never leaves a half-written episode under a real name.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rssm_tf.atomic import atomic_path
from rssm_tf.config import RssmConfig
from rssm_tf.spaces import IMAGE, kind_of

STEP_KEYS = ("action", "reward", "is_first", "is_terminal")


def observation_keys(shapes: dict[str, Any]) -> tuple[str, ...]:
    """The observation keys among ``shapes`` (``{key: per-step shape}``), sorted: the
    keys other than :data:`STEP_KEYS` with a per-step shape (what kind each is:
    :func:`rssm_tf.spaces.kind_of`; :func:`validate_episode` refuses other shapes)."""
    return tuple(sorted(k for k, s in shapes.items() if k not in STEP_KEYS and len(s)))


def step_shapes(episode: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{key: per-step shape}`` of an episode's arrays."""
    return {k: tuple(np.shape(v)[1:]) for k, v in episode.items() if np.ndim(v) >= 1}


class EpisodeError(ValueError):
    """A malformed or unreadable episode file; the message names the file."""


def validate_episode(episode: dict[str, Any], where: str = "episode") -> dict[str, np.ndarray]:
    """Checks keys, ranks, lengths and finiteness; returns the observation keys (see
    :func:`observation_keys`: vectors as float32, images uint8) and the step keys
    (float32). Other arrays are dropped.

    ``where`` names the episode in error messages (a file path, for instance).
    """
    if not isinstance(episode, dict) and not hasattr(episode, "keys"):
        raise EpisodeError(f"{where}: an episode must be a dict of arrays, got "
                           f"{type(episode).__name__}")
    arrays = {k: np.asarray(episode[k]) for k in episode.keys()}
    obs_keys = observation_keys(step_shapes(arrays))
    missing = [k for k in STEP_KEYS if k not in arrays]
    if not obs_keys:
        missing.insert(0, "an observation key")
    if missing:
        found = {k: list(v.shape) for k, v in arrays.items()}
        raise EpisodeError(f"{where}: missing key(s) {missing}; an episode has observation keys "
                           f"([T, O] floats or [T, H, W, C] uint8 images, e.g. 'obs') and "
                           f"{list(STEP_KEYS)}; got {found}")
    out = {}
    for key in obs_keys + STEP_KEYS:
        value = arrays[key]
        kind = kind_of(value.shape[1:]) if key in obs_keys else None
        if key in obs_keys and kind is None:
            raise EpisodeError(f"{where}: {key} must have shape [T, O] (a vector) or "
                               f"[T, H, W, C] (an image), got {list(value.shape)}")
        if kind == IMAGE:
            if value.dtype != np.uint8:
                raise EpisodeError(f"{where}: {key} must be uint8 pixels in [0, 255] (an "
                                   f"image [T, H, W, C]), got dtype {value.dtype}")
            out[key] = value
            continue
        if value.dtype.kind not in "fiub":
            raise EpisodeError(f"{where}: {key} must be numeric, got dtype {value.dtype}")
        out[key] = value.astype(np.float32)
    ranks = {"action": (2, "[T, A]"), "reward": (1, "[T]"), "is_first": (1, "[T]"),
             "is_terminal": (1, "[T]")}
    for key, (rank, want) in ranks.items():
        if out[key].ndim != rank:
            raise EpisodeError(f"{where}: {key} must have shape {want}, got "
                               f"{list(out[key].shape)}")
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise EpisodeError(f"{where}: all keys must have the same length T, got {lengths}")
    if lengths["action"] < 1:
        raise EpisodeError(f"{where}: an episode needs at least one step")
    for key, value in out.items():
        if value.dtype != np.uint8 and not np.all(np.isfinite(value)):
            raise EpisodeError(f"{where}: {key} contains NaN or Inf values")
    for key in ("is_first", "is_terminal"):
        if not np.all((out[key] == 0) | (out[key] == 1)):
            raise EpisodeError(f"{where}: {key} must hold only 0 and 1")
    return out


def config_for_episode(episode: dict[str, np.ndarray], obs_keys: tuple[str, ...] | None = None,
                       **fields: Any) -> RssmConfig:
    """An :class:`RssmConfig` sized for ``episode``'s arrays: the observation space
    from the ``obs_keys`` chosen (default all the episode has; one ``obs`` and/or one
    ``image`` give the short forms ``obs_dim``/``image_shape``), ``action_dim`` from
    ``action``; ``fields`` set the rest."""
    keys = _pick_obs_keys([step_shapes(episode)], obs_keys, "the episode")
    space = {k: tuple(np.shape(episode[k])[1:]) for k in keys}
    return RssmConfig.for_space(space, np.shape(episode["action"])[1], **fields)


def _pick_obs_keys(shapes: list[dict[str, Any]], obs_keys: Any, where: str
                   ) -> tuple[str, ...]:
    """``obs_keys`` (default: the observation keys every episode has), checked;
    ``shapes``: one ``{key: per-step shape}`` per episode."""
    have = [k for k in observation_keys(shapes[0]) if all(k in e for e in shapes)]
    if isinstance(obs_keys, str):
        obs_keys = (obs_keys,)
    keys = tuple(obs_keys) if obs_keys is not None else tuple(have)
    if not keys or any(k not in have for k in keys):
        raise ValueError(f"obs_keys must be a non-empty subset of the observation keys "
                         f"every episode in {where} has ({have}), got {list(keys)}")
    return keys


def save_episode(directory: str | os.PathLike, episode: dict[str, Any],
                 name: str | None = None, compress: bool = False) -> Path:
    """Validates ``episode`` and writes it atomically as ``directory/name.npz``.

    The default name is unique (``episode-<uuid>``). An existing file is never
    overwritten. ``compress``: zip-deflate the arrays (``np.savez_compressed``; rendered
    frames shrink several times, read back transparently). Returns the path.
    """
    directory = Path(directory)
    arrays = validate_episode(episode)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"episode-{uuid.uuid4().hex}"
    path = directory / f"{name}.npz"
    if path.exists():
        raise FileExistsError(f"{path} already exists; episodes are never overwritten")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **arrays)
    return path


def load_episode(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads and validates one episode file; errors name the file and the problem."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise EpisodeError(f"{path}: no such episode file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise EpisodeError(f"{path}: not a readable episode .npz file (truncated or "
                           f"corrupt): {error}") from None
    return validate_episode(episode, str(path))


class EpisodeStore:
    """A directory of episode files: ``add`` writes one atomically (compressed with
    ``compress``), ``load`` reads all (for data beyond memory, stream the directory with
    :func:`make_dataset`).

    Temporary files of interrupted writes (``.*.tmp``) are ignored.
    """

    def __init__(self, directory: str | os.PathLike, compress: bool = False) -> None:
        self.directory = Path(directory)
        self.compress = compress

    def add(self, episode: dict[str, Any], name: str | None = None) -> Path:
        return save_episode(self.directory, episode, name, compress=self.compress)

    def paths(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.npz") if not p.name.startswith("."))

    def load(self) -> list[dict[str, np.ndarray]]:
        return [load_episode(p) for p in self.paths()]

    def __len__(self) -> int:
        return len(self.paths())
