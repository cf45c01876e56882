"""The ``tf.data`` pipeline that feeds ``WorldModel.fit``: random windows over episodes
held in memory or streamed from a directory (:mod:`rssm_tf.replay`).

The episode format and its files are :mod:`rssm_tf.episodes`; its names are
re-exported here, where they were first defined.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from rssm_tf.episodes import (
    STEP_KEYS,
    EpisodeError,
    EpisodeStore,
    _pick_obs_keys,
    config_for_episode,
    load_episode,
    observation_keys,
    save_episode,
    step_shapes,
    validate_episode,
)
from rssm_tf.replay import Replay, one_pass_starts, uniform_start
from rssm_tf.validation import check_positive_int

__all__ = ["STEP_KEYS", "EpisodeError", "EpisodeStore", "config_for_episode",
           "load_episode", "make_dataset", "observation_keys", "save_episode",
           "step_shapes", "validate_episode"]


def make_dataset(directory: str | os.PathLike | list[dict[str, Any]], batch_size: int,
                 seq_len: int, seed: int | None = 0, repeat: bool = True,
                 prefetch: bool = True, obs_keys: tuple[str, ...] | None = None,
                 **replay_options: Any) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of random fixed-length windows over the episodes.

    Episodes are laid end to end in one stream (their ``is_first`` flags mark the
    joins), and each window is ``seq_len`` consecutive steps starting at a uniformly
    drawn position, so a window may cross into the next episode; the model resets its
    state where ``is_first`` is 1. The first step of every window is marked
    ``is_first = 1``: each window starts from the initial state. Episodes shorter
    than ``seq_len`` are used as parts of windows.

    ``directory``: a directory of episode files, streamed from disk by
    :class:`rssm_tf.replay.Replay` (windows read when drawn, the directory may grow
    while ``fit`` runs; ``replay_options`` go to it: ``capacity``, ``recent``,
    ``cache_mb``, ``refresh_seconds``, ``shard``), or a list of episode dicts (held in
    memory). Both give the same windows for the same seed.
    Yields dicts ``{action [B, T, A], reward [B, T], is_first [B, T], is_terminal
    [B, T]}`` (float32) and every observation key: vectors float32 [B, T, O_k], images
    uint8 [B, T, H, W, C_k] (as stored: the model scales them in its first op, so
    batches stay 4x smaller); ``obs_keys`` picks the observation keys (default: those
    the episodes have, e.g. ``("image",)`` to leave out a vector a pixel model does not
    use).
    Windows are shuffled by the ``seed``, batched
    (``drop_remainder``) and prefetched. ``repeat=False`` gives one pass of
    ``total_steps // seq_len`` windows.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    if not isinstance(directory, (list, tuple)):
        replay = Replay(directory, seq_len, obs_keys=obs_keys, **replay_options)
        return replay.dataset(batch_size, seed=seed, repeat=repeat, prefetch=prefetch)
    if replay_options:
        raise TypeError(f"{sorted(replay_options)}: options of a streamed directory, not "
                        "of an episode list")
    episodes = [validate_episode(e, f"episode {i}") for i, e in enumerate(directory)]
    where = "the episode list"
    if not episodes:
        raise ValueError(f"no episodes in {where}")
    keys = _pick_obs_keys([step_shapes(e) for e in episodes], obs_keys, where) + STEP_KEYS
    shapes = {tuple((k, e[k].shape[1:]) for k in keys if k != "reward") for e in episodes}
    if len(shapes) != 1:
        raise ValueError(f"episodes in {where} disagree on their per-step shapes: "
                         f"{sorted(shapes)}")
    stream = {k: np.concatenate([e[k] for e in episodes]) for k in keys}
    stream["is_first"][np.cumsum([0] + [len(e["action"]) for e in episodes[:-1]])] = 1.0
    total = len(stream["action"])
    if total < seq_len:
        raise ValueError(f"the episodes in {where} hold {total} steps in all, fewer "
                         f"than seq_len={seq_len}")
    tensors = {k: tf.constant(v) for k, v in stream.items()}
    window_first = tf.one_hot(0, seq_len)

    def window(start: tf.Tensor) -> dict[str, tf.Tensor]:
        item = {k: v[start:start + seq_len] for k, v in tensors.items()}
        item["is_first"] = tf.maximum(item["is_first"], window_first)
        return item

    if repeat:
        starts = tf.data.Dataset.random(seed=seed).map(
            lambda r: tf.cast(uniform_start(r, total, seq_len), tf.int32))
    else:
        order = one_pass_starts(total, seq_len, seed)
        starts = tf.data.Dataset.from_tensor_slices(order.astype(np.int32))
    dataset = starts.map(window, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True).batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset
