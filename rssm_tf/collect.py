"""Collect episodes from a gymnasium environment into an episode directory.

Needs the ``examples`` extra (``gymnasium``). Observations become episode keys:

- a vector ``Box`` is flattened into ``obs`` (``vector_keys={"velocity": [1, 3]}``
  stores named parts of it instead, picked by index);
- an image ``Box`` (uint8 [H, W, C]) is stored as ``image``;
- a ``Dict`` space gives one key per entry, named after it (images by the same rule,
  every other ``Box`` flattened);
- ``image_size=(H, W)`` also records the rendered frame of every step
  (``render_mode="rgb_array"``) as ``image``, so a vector environment such as
  CartPole becomes a pixel one offline. Images are resized with area averaging, after
  ``image_crop=(top, bottom, left, right)`` (pixel bounds, ``frame[top:bottom,
  left:right]``) when given: a camera pointed at where things happen, so that a small
  frame still resolves them.

``Box`` actions are stored as they are, ``Discrete`` ones one-hot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from rssm_tf.config import IMAGE_KEY, VECTOR_KEY
from rssm_tf.episodes import save_episode
from rssm_tf.spaces import IMAGE, kind_of, stored_dtype
from rssm_tf.validation import check_positive_int


def _action_codec(space: Any) -> tuple[int, Callable[[Any], np.ndarray]]:
    """(action_dim, encode) for a gymnasium action space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        return n, lambda a: np.eye(n, dtype=np.float32)[int(a) - int(space.start)]
    if isinstance(space, spaces.Box):
        dim = int(np.prod(space.shape))
        return dim, lambda a: np.asarray(a, np.float32).reshape(dim)
    raise TypeError(f"unsupported action space {space}: use Box or Discrete")


def resize_image(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [*size, C] by area averaging (``size`` None: as is)."""
    frame = np.asarray(frame)
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame.astype(np.uint8)
    import tensorflow as tf

    resized = tf.image.resize(frame.astype(np.float32), size, method="area")
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _check_crop(image_crop: Any) -> tuple[int, int, int, int] | None:
    if image_crop is None:
        return None
    values = tuple(image_crop) if isinstance(image_crop, (tuple, list)) else ()
    if (len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                for v in values)
            or not (values[0] < values[1] and values[2] < values[3])):
        raise ValueError(f"image_crop must be (top, bottom, left, right) pixel bounds, "
                         f"integers >= 0 with top < bottom and left < right; got "
                         f"{image_crop!r}")
    return values


def crop_image(frame: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """``frame[top:bottom, left:right]``; refuses bounds outside the frame."""
    if crop is None:
        return frame
    top, bottom, left, right = crop
    if bottom > frame.shape[0] or right > frame.shape[1]:
        raise ValueError(f"image_crop {crop} reaches outside the frame of shape "
                         f"{tuple(frame.shape)} (bottom <= {frame.shape[0]}, right <= "
                         f"{frame.shape[1]})")
    return frame[top:bottom, left:right]


def _check_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                   for v in image_size):
        raise ValueError(f"image_size must be (height, width) of positive integers, "
                         f"got {image_size!r}")
    return tuple(image_size)


class EpisodeRecorder:
    """Builds one episode in the episode format, step by step (docs/design.md section 7)."""

    def __init__(self, first_obs: dict[str, np.ndarray], action_dim: int) -> None:
        self.steps: dict[str, list] = {k: [v] for k, v in first_obs.items()}
        self.steps.update(action=[np.zeros(action_dim, np.float32)], reward=[0.0],
                          is_first=[1.0], is_terminal=[0.0])
        self.total_reward = 0.0

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray, reward: float,
            terminated: bool) -> None:
        """``action`` (encoded) led to ``obs`` and ``reward``."""
        for key, value in obs.items():
            self.steps[key].append(value)
        self.steps["action"].append(action)
        self.steps["reward"].append(float(reward))
        self.steps["is_first"].append(0.0)
        self.steps["is_terminal"].append(float(terminated))
        self.total_reward += float(reward)

    def __len__(self) -> int:
        return len(self.steps["action"])

    def episode(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, stored_dtype(np.shape(v[0]))) for k, v in self.steps.items()}


def _is_image(space: Any) -> bool:
    """Whether a gymnasium ``Box`` holds frames: uint8 of an image's rank."""
    return space.dtype == np.uint8 and kind_of(space.shape) == IMAGE


def _check_vector_keys(vector_keys: Any, size: int) -> dict[str, list[int]] | None:
    if vector_keys is None:
        return None
    if not isinstance(vector_keys, dict) or not vector_keys:
        raise ValueError(f"vector_keys must be a non-empty dict {{key: indices}}, got "
                         f"{vector_keys!r}")
    out = {}
    for key, indices in vector_keys.items():
        indices = [indices] if isinstance(indices, int) else list(indices)
        if not indices or any(isinstance(i, bool) or not isinstance(i, int)
                              or not 0 <= i < size for i in indices):
            raise ValueError(f"vector_keys[{key!r}] must be indices in [0, {size}) of "
                             f"the flattened observation, got {vector_keys[key]!r}")
        out[str(key)] = indices
    return out


def make_env(env_id: str, image_size: Any = None,
             vector_keys: dict[str, Any] | None = None, image_crop: Any = None
             ) -> tuple[Any, Callable[[Any], dict]]:
    """``(env, observe)``: the gymnasium environment (rendering frames when
    ``image_size`` is set) and ``observe(obs) -> {key: array}`` in the episode format
    (the keys as the module docstring says)."""
    import gymnasium as gym
    from gymnasium import spaces

    size = _check_size(image_size)
    crop = _check_crop(image_crop)
    if size:
        # Frames are drawn offscreen; without a display SDL (pygame, which gymnasium's
        # classic-control renderers use) would print "XDG_RUNTIME_DIR is invalid" while
        # probing for one. The dummy driver gives the same frames.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    try:
        env = gym.make(env_id, **({"render_mode": "rgb_array"} if size else {}))
    except Exception as error:  # gymnasium raises several error types here
        raise ValueError(f"env_id {env_id!r} cannot be made by gymnasium: {error}") from None
    space = env.observation_space
    parts = dict(space.spaces) if isinstance(space, spaces.Dict) else None
    if not all(isinstance(s, spaces.Box) for s in (parts or {"": space}).values()):
        env.close()
        raise TypeError(f"env_id {env_id!r} has observation space {space}; supported: "
                        "Box (vectors or uint8 images) and a Dict of Box")
    try:
        if parts is not None and vector_keys is not None:
            raise ValueError("vector_keys splits a Box vector observation; "
                             f"{env_id!r} has a Dict observation space (its keys are used)")
        pixels = parts is None and _is_image(space)
        split = None if parts is not None or pixels else _check_vector_keys(
            vector_keys, int(np.prod(space.shape)))
        if size and IMAGE_KEY in (parts or split or {}):
            raise ValueError(f"image_size records rendered frames as {IMAGE_KEY!r}, but "
                             f"{env_id!r} observations already have that key")
    except ValueError:
        env.close()
        raise

    def frame(image: np.ndarray) -> np.ndarray:
        return resize_image(crop_image(np.asarray(image), crop), size)

    def observe(obs: Any) -> dict[str, np.ndarray]:
        if parts is not None:
            out = {k: frame(obs[k]) if _is_image(parts[k])
                   else np.asarray(obs[k], np.float32).ravel() for k in parts}
        elif pixels:
            return {IMAGE_KEY: frame(obs)}
        else:
            flat = np.asarray(obs, np.float32).ravel()
            out = {VECTOR_KEY: flat} if split is None else \
                {k: flat[i] for k, i in split.items()}
        if size:
            out[IMAGE_KEY] = frame(env.render())
        return out

    return env, observe


def collect(env_id: str, episodes: int, directory: str | os.PathLike,
            policy: Callable[[np.ndarray], Any] | None = None, seed: int = 0,
            max_steps: int | None = None, prefix: str = "episode",
            progress: bool = False, image_size: tuple[int, int] | int | None = None,
            compress: bool = False, vector_keys: dict[str, Any] | None = None,
            image_crop: tuple[int, int, int, int] | None = None) -> list[Path]:
    """Runs ``episodes`` episodes of ``env_id`` and saves each one atomically.

    ``policy(obs) -> action`` in the environment's own action format; the default
    samples the action space uniformly (seeded by ``seed``). ``max_steps`` cuts an
    episode (a time limit: not terminal). ``image_size`` (H, W) records rendered
    frames as ``image`` (and resizes image observations), cropped first to
    ``image_crop`` (top, bottom, left, right) when given; ``vector_keys`` stores named
    parts of a vector observation (``{"velocity": [1]}``); ``compress`` writes
    compressed files (see :func:`rssm_tf.data.save_episode`). Returns the written paths.
    """
    check_positive_int("episodes", episodes)
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    env, observe = make_env(env_id, image_size, vector_keys, image_crop)
    action_dim, encode = _action_codec(env.action_space)
    env.action_space.seed(seed)
    paths = []
    bar = keras.utils.Progbar(episodes, unit_name="episode") if progress else None
    try:
        for index in range(episodes):
            obs, _ = env.reset(seed=seed + index)
            record = EpisodeRecorder(observe(obs), action_dim)
            while True:
                action = env.action_space.sample() if policy is None else policy(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                record.add(observe(obs), encode(action), reward, terminated)
                if terminated or truncated or (max_steps and len(record) >= max_steps):
                    break
            episode = record.episode()
            paths.append(save_episode(directory, episode, f"{prefix}-{seed + index:06d}",
                                      compress=compress))
            if bar is not None:
                bar.update(index + 1, [("steps", len(episode["action"]))])
    finally:
        env.close()
    return paths
