"""A replay read from the episode files: windows streamed from disk, a directory that
grows while ``fit`` runs, a capacity, and shards for several workers.

:class:`Replay` keeps an index of the episode files (their lengths and per-step shapes,
read from the ``.npy`` headers inside each ``.npz`` without loading the arrays; cached in
``episode-index.json`` beside the files and updated for the files that changed), and
reads a window's episodes when it is drawn, through a bounded cache of recently read
episodes. The episodes are laid end to end in file-name order, as in
:func:`rssm_tf.data.make_dataset` (one rule, :func:`uniform_start`): a window of
``seq_len`` steps starts at a uniformly drawn step, may run into the next episode (its
``is_first`` marks the join) and has ``is_first = 1`` at its first step.

The directory may grow while the pipeline runs: the index is refreshed at most every
``refresh_seconds``, so new episodes (from a collector, a planner loop, another
process) are drawn from without rebuilding anything. A file that cannot be read (a
collector killed mid-write by a writer that does not rename) is skipped with a warning
naming it; a file whose shapes disagree with the others is refused with its name (an
error when the replay is built, a warning and a skip while it runs).
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from rssm_tf.atomic import write_atomic
from rssm_tf.episodes import STEP_KEYS, EpisodeError, _pick_obs_keys, load_episode
from rssm_tf.spaces import stored_dtype
from rssm_tf.validation import check_positive_int

INDEX_FILE = "episode-index.json"
INDEX_VERSION = 2  # 2: every array of a file indexed (1: only obs, image, step keys)


def uniform_start(draw: Any, total: int, seq_len: int) -> Any:
    """The windowing rule, for both pipelines: the start of the window of ``seq_len``
    steps that the random integer ``draw`` picks out of a stream of ``total`` steps,
    ``draw mod (total - seq_len + 1)`` (a floor modulo for Python ints and tensors)."""
    return draw % (total - seq_len + 1)


def one_pass_starts(total: int, seq_len: int, seed: int | None) -> np.ndarray:
    """The starts of one seeded pass (``repeat=False``): ``total // seq_len`` distinct
    starts in a random order, int64."""
    order = np.random.default_rng(seed).permutation(total - seq_len + 1)
    return order[:total // seq_len].astype(np.int64)


def read_header(path: Path) -> dict[str, Any]:
    """``{"length": T, "shapes": {key: per-step shape}}`` of an episode file, read from
    the arrays' headers (nothing is decompressed but them)."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            key = member.removesuffix(".npy")
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, _ = read(handle)
            shapes[key] = list(shape)
    if "action" not in shapes or not shapes["action"]:
        raise EpisodeError(f"{path}: no action array; not an episode file")
    length = shapes["action"][0]
    if any(not s or s[0] != length for s in shapes.values()):
        raise EpisodeError(f"{path}: the arrays disagree on the episode length: {shapes}")
    return {"length": int(length), "shapes": {k: s[1:] for k, s in shapes.items()}}


class Replay:
    """Windows of ``seq_len`` steps drawn from the episode files in ``directory``.

    ``obs_keys``: the observation keys to read (default: those the first episode has).
    ``capacity``: the most steps drawn from (the oldest episodes, first in file-name
    order, are dropped first; ``delete_dropped`` also deletes their files).
    ``recent``: the probability that a window starts among the newest ``recent_steps``
    steps instead of anywhere (0: uniform, today's semantics). ``cache_mb``: the bound on
    the episodes kept in memory. ``shard=(index, count)``: read only the files whose
    name hashes to ``index`` of ``count`` (one share per worker).
    """

    def __init__(self, directory: str | os.PathLike, seq_len: int,
                 obs_keys: tuple[str, ...] | None = None, capacity: int | None = None,
                 delete_dropped: bool = False, recent: float = 0.0,
                 recent_steps: int = 10_000, cache_mb: float = 256.0,
                 refresh_seconds: float = 10.0, shard: tuple[int, int] = (0, 1)) -> None:
        check_positive_int("seq_len", seq_len)
        check_positive_int("recent_steps", recent_steps)
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(
                capacity, int) or capacity < seq_len):
            raise ValueError(f"capacity must be an integer >= seq_len ({seq_len}) or None, "
                             f"got {capacity!r}")
        if not isinstance(recent, (int, float)) or not 0.0 <= recent <= 1.0:
            raise ValueError(f"recent must be in [0, 1], got {recent!r}")
        if not isinstance(cache_mb, (int, float)) or cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb!r}")
        index, count = shard
        if not (isinstance(count, int) and count >= 1 and isinstance(index, int)
                and 0 <= index < count):
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, "
                             f"got {shard!r}")
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"episode directory {self.directory} does not exist")
        self.seq_len, self.capacity, self.delete_dropped = seq_len, capacity, delete_dropped
        self.recent, self.recent_steps = float(recent), recent_steps
        self.cache_bytes, self.refresh_seconds = int(cache_mb * 2**20), refresh_seconds
        self.shard = (index, count)
        self._lock = threading.Lock()
        self._headers: dict[str, dict] = {}  # file name -> header + size/mtime
        self._refused: dict[str, tuple] = {}  # file name -> (size, mtime) warned about
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self._load_index()
        self.obs_keys: tuple[str, ...] = ()
        self.shapes: dict[str, list] = {}
        self.refresh(strict=True, obs_keys=obs_keys)

    # ---------------------------------------------------------------- index
    def _load_index(self) -> None:
        try:
            saved = json.loads((self.directory / INDEX_FILE).read_text())
            if saved.get("version") == INDEX_VERSION:
                self._headers = saved["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self._headers = {}

    def _save_index(self) -> None:
        text = json.dumps({"version": INDEX_VERSION, "files": self._headers})
        try:
            write_atomic(self.directory / INDEX_FILE, text.encode())
        except OSError:  # a read-only directory: the index stays in memory
            pass

    def _in_shard(self, name: str) -> bool:
        index, count = self.shard
        return count == 1 or zlib.crc32(name.encode()) % count == index

    def refresh(self, strict: bool = False, obs_keys: Any = None) -> bool:
        """Re-reads the directory: new and changed files are indexed, removed ones
        forgotten, the capacity applied. Returns whether the drawable steps changed.
        ``strict`` (when the replay is built): a refused file raises instead of warning."""
        with self._lock:
            return self._refresh(strict, obs_keys)

    def _refresh(self, strict: bool, obs_keys: Any) -> bool:
        files = {}
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".npz") and not entry.name.startswith(".") \
                    and self._in_shard(entry.name):
                stat = entry.stat()
                files[entry.name] = (stat.st_size, stat.st_mtime_ns)
        dirty = False
        for name in list(self._headers):
            if name not in files:
                del self._headers[name]
                self._cache.pop(name, None)
                dirty = True
        for name, stamp in sorted(files.items()):
            known = self._headers.get(name)
            if known is not None and tuple(known["stamp"]) == stamp:
                continue
            if self._refused.get(name) == stamp:
                continue
            try:
                header = read_header(self.directory / name)
            except (EpisodeError, zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
                self._refused[name] = stamp
                warnings.warn(f"skipping episode file {self.directory / name}: unreadable "
                              f"(truncated or corrupt?): {error}", stacklevel=3)
                continue
            self._headers[name] = {**header, "stamp": list(stamp)}
            self._cache.pop(name, None)
            dirty = True
        names = sorted(n for n in self._headers if n in files)
        if not names:
            raise ValueError(f"no episodes in {self.directory} that can be read"
                             + (f" (shard {self.shard[0]} of {self.shard[1]})"
                                if self.shard[1] > 1 else ""))
        if not self.shapes:  # the first refresh fixes the keys and per-step shapes
            first = self._headers[names[0]]["shapes"]
            self.obs_keys = _pick_obs_keys([first], obs_keys, str(self.directory / names[0]))
            self.shapes = {k: first[k] for k in self.obs_keys + STEP_KEYS}
        usable = []
        for name in names:
            shapes = self._headers[name]["shapes"]
            if all(shapes.get(k) == s for k, s in self.shapes.items()):
                usable.append(name)
                continue
            message = (f"episode file {self.directory / name} has per-step shapes "
                       f"{ {k: shapes.get(k) for k in self.shapes} }, the replay's are "
                       f"{self.shapes}")
            if strict:
                raise ValueError(message)
            if self._refused.get(name) != tuple(self._headers[name]["stamp"]):
                self._refused[name] = tuple(self._headers[name]["stamp"])
                warnings.warn(f"skipping {message}", stacklevel=3)
        usable = self._apply_capacity(usable)
        lengths = np.array([self._headers[n]["length"] for n in usable], np.int64)
        total = int(lengths.sum())
        if total < self.seq_len:
            if strict:
                raise ValueError(f"the episodes in {self.directory} hold {total} steps in "
                                 f"all, fewer than seq_len={self.seq_len}")
            return False  # keep drawing from what was there
        changed = not hasattr(self, "names") or usable != self.names
        self.names, self.total = usable, total
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._checked = time.monotonic()
        if dirty:
            self._save_index()
        return changed

    def _apply_capacity(self, names: list[str]) -> list[str]:
        if self.capacity is None:
            return names
        kept, steps = [], 0
        for name in reversed(names):  # newest (last in file-name order) first
            steps += self._headers[name]["length"]
            if steps > self.capacity and kept:
                break
            kept.append(name)
        dropped = names[:len(names) - len(kept)]
        if self.delete_dropped:
            for name in dropped:
                (self.directory / name).unlink(missing_ok=True)
                self._headers.pop(name, None)
                self._cache.pop(name, None)
        return kept[::-1]

    # ---------------------------------------------------------------- reads
    def _episode(self, name: str) -> dict[str, np.ndarray]:
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
        episode = load_episode(self.directory / name)  # outside the lock: reads overlap
        arrays = {k: episode[k] for k in self.obs_keys + STEP_KEYS}
        with self._lock:
            self._cache[name] = arrays
            self._cached_bytes += sum(a.nbytes for a in arrays.values())
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(a.nbytes for a in old.values())
        return arrays

    def start_for(self, draw: int, total: int | None = None) -> int:
        """The window start for the random integer ``draw`` over ``total`` steps
        (default: now): ``draw % (total - seq_len + 1)`` (the in-memory pipeline's
        rule), or among the newest ``recent_steps`` with probability ``recent``
        (decided by ``draw``'s high bits)."""
        draw = int(draw)
        total = self.total if total is None else total
        if self.recent and ((draw >> 40) % 1_000_000) < self.recent * 1_000_000:
            starts = total - self.seq_len + 1
            window = min(starts, self.recent_steps)
            return starts - window + draw % window
        return uniform_start(draw, total, self.seq_len)

    def window(self, start: int, view: tuple | None = None) -> dict[str, np.ndarray]:
        """The ``seq_len`` steps from ``start`` of the stream, ``is_first[0] = 1``;
        ``view`` = (names, offsets) of the stream (default: now)."""
        names, offsets = view if view is not None else (self.names, self.offsets)
        index = int(np.searchsorted(offsets, start, side="right") - 1)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.shapes}
        need, offset = self.seq_len, start - int(offsets[index])
        while need > 0:
            try:
                episode = self._episode(names[index])
            except EpisodeError as error:
                error.episode_name = names[index]  # which one, for sample() to skip
                raise
            take = min(need, len(episode["action"]) - offset)
            for key in parts:
                piece = episode[key][offset:offset + take]
                if key == "is_first" and offset == 0:  # the join with the episode before
                    piece = np.concatenate([[1.0], piece[1:]]).astype(np.float32)
                parts[key].append(piece)
            need, index, offset = need - take, index + 1, 0
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["is_first"][0] = 1.0  # every window starts from the initial state
        return out

    def sample(self, draw: int) -> dict[str, np.ndarray]:
        """The window for ``draw`` (refreshing the index when it is due); an episode
        that cannot be read is skipped with a warning and another window drawn."""
        for attempt in range(8):
            with self._lock:
                if time.monotonic() - self._checked >= self.refresh_seconds:
                    self._refresh(False, None)
                names, offsets, total = self.names, self.offsets, self.total
            start = self.start_for(draw + attempt * 0x9E3779B97F4A7C15, total)
            try:
                return self.window(start, (names, offsets))
            except EpisodeError as error:
                warnings.warn(f"skipping an unreadable episode: {error}", stacklevel=2)
                bad = error.episode_name
                with self._lock:
                    known = self._headers.pop(bad, None)
                    if known is not None:
                        self._refused[bad] = tuple(known["stamp"])
                    self._refresh(False, None)
        raise EpisodeError(f"no readable window in {self.directory} after 8 tries")

    # ------------------------------------------------------------- tf.data
    def specs(self) -> dict[str, tf.TensorSpec]:
        return {k: tf.TensorSpec([self.seq_len, *s], stored_dtype(s))
                for k, s in self.shapes.items()}

    def dataset(self, batch_size: int, seed: int | None = 0, repeat: bool = True,
                prefetch: bool = True) -> tf.data.Dataset:
        """Batches of windows (the :func:`rssm_tf.data.make_dataset` contract): drawn by
        ``tf.data.Dataset.random(seed)`` (``repeat``), or one seeded pass of
        ``total // seq_len`` windows (``repeat=False``, over the episodes there now);
        read in parallel, batched (``drop_remainder``) and prefetched."""
        check_positive_int("batch_size", batch_size)
        specs = self.specs()
        keys = list(specs)

        def read(draw: np.ndarray, fixed: np.ndarray) -> list[np.ndarray]:
            window = self.window(int(draw)) if fixed else self.sample(int(draw))
            return [window[k] for k in keys]

        def load(draw: tf.Tensor, fixed: bool) -> dict[str, tf.Tensor]:
            values = tf.numpy_function(read, [draw, fixed], [specs[k].dtype for k in keys],
                                       stateful=True)
            return {k: tf.ensure_shape(v, specs[k].shape) for k, v in zip(keys, values)}

        if repeat:
            draws = tf.data.Dataset.random(seed=seed).map(lambda r: load(r, False),
                                                          num_parallel_calls=tf.data.AUTOTUNE,
                                                          deterministic=True)
        else:
            order = one_pass_starts(self.total, self.seq_len, seed)
            draws = tf.data.Dataset.from_tensor_slices(order).map(
                lambda s: load(s, True), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
        dataset = draws.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset


def replay_dataset(directory: str | os.PathLike, batch_size: int, seq_len: int,
                   seed: int | None = 0, repeat: bool = True, prefetch: bool = True,
                   obs_keys: tuple[str, ...] | None = None,
                   input_context: tf.distribute.InputContext | None = None,
                   **options: Any) -> tf.data.Dataset:
    """A streamed :class:`Replay` pipeline. ``input_context`` (from
    ``strategy.distribute_datasets_from_function``): this worker's share of the files
    and of the global batch, and its own seed; ``options`` go to :class:`Replay`."""
    if input_context is not None:
        index, count = input_context.input_pipeline_id, input_context.num_input_pipelines
        options.setdefault("shard", (index, count))
        batch_size = input_context.get_per_replica_batch_size(batch_size) * \
            input_context.num_replicas_in_sync // count
        seed = None if seed is None else seed + index
    replay = Replay(directory, seq_len, obs_keys=obs_keys, **options)
    return replay.dataset(batch_size, seed=seed, repeat=repeat, prefetch=prefetch)
