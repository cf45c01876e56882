"""Collect episodes from a gymnasium environment into an episode directory.

Needs the ``examples`` extra (``gymnasium``). Vector observations (``Box``) are
flattened into ``obs``; image observations (a uint8 ``Box`` of shape [H, W, C]) are
stored as ``image``. ``image_size=(H, W)`` also records the rendered frame of every
step (``render_mode="rgb_array"``) as ``image``, resized with area averaging, so a
vector environment such as CartPole becomes a pixel one offline. ``Box`` actions are
stored as they are, ``Discrete`` ones one-hot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from rssm_tf.data import save_episode
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
    """Builds one episode in the episode format, step by step (SPEC section 4)."""

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
        return {k: np.asarray(v, np.uint8 if k == "image" else np.float32)
                for k, v in self.steps.items()}


def make_env(env_id: str, image_size: Any = None) -> tuple[Any, Callable[[Any], dict]]:
    """``(env, observe)``: the gymnasium environment (rendering frames when
    ``image_size`` is set) and ``observe(obs) -> {"obs": [O]} and/or {"image": [H, W, C]}``
    in the episode format (see the module docstring)."""
    import gymnasium as gym
    from gymnasium import spaces

    size = _check_size(image_size)
    try:
        env = gym.make(env_id, **({"render_mode": "rgb_array"} if size else {}))
    except Exception as error:  # gymnasium raises several error types here
        raise ValueError(f"env_id {env_id!r} cannot be made by gymnasium: {error}") from None
    space = env.observation_space
    if not isinstance(space, spaces.Box):
        env.close()
        raise TypeError(f"env_id {env_id!r} has observation space {space}; only Box "
                        "observations (vectors or uint8 images) are supported")
    pixels = space.dtype == np.uint8 and len(space.shape) == 3

    def observe(obs: Any) -> dict[str, np.ndarray]:
        if pixels:
            return {"image": resize_image(obs, size)}
        out = {"obs": np.asarray(obs, np.float32).ravel()}
        if size:
            out["image"] = resize_image(env.render(), size)
        return out

    return env, observe


def collect(env_id: str, episodes: int, directory: str | os.PathLike,
            policy: Callable[[np.ndarray], Any] | None = None, seed: int = 0,
            max_steps: int | None = None, prefix: str = "episode",
            progress: bool = False, image_size: tuple[int, int] | int | None = None,
            compress: bool = False) -> list[Path]:
    """Runs ``episodes`` episodes of ``env_id`` and saves each one atomically.

    ``policy(obs) -> action`` in the environment's own action format; the default
    samples the action space uniformly (seeded by ``seed``). ``max_steps`` cuts an
    episode (a time limit: not terminal). ``image_size`` (H, W) records rendered
    frames as ``image`` (and resizes image observations); ``compress`` writes compressed
    files (see :func:`rssm_tf.data.save_episode`). Returns the written paths.
    """
    check_positive_int("episodes", episodes)
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    env, observe = make_env(env_id, image_size)
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
