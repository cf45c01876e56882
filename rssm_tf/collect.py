"""Collect episodes from a gymnasium environment into an episode directory.

Needs the ``examples`` extra (``gymnasium``). Vector observations (``Box``) are
flattened; ``Box`` actions are stored as they are, ``Discrete`` ones one-hot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rssm_tf.data import save_episode


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


def collect(env_id: str, episodes: int, directory: str | os.PathLike,
            policy: Callable[[np.ndarray], Any] | None = None, seed: int = 0,
            max_steps: int | None = None, prefix: str = "episode",
            progress: bool = False) -> list[Path]:
    """Runs ``episodes`` episodes of ``env_id`` and saves each one atomically.

    ``policy(obs) -> action`` in the environment's own action format; the default
    samples the action space uniformly (seeded by ``seed``). ``max_steps`` cuts an
    episode (a time limit: not terminal). Returns the written paths.
    """
    import gymnasium as gym
    from gymnasium import spaces

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    try:
        env = gym.make(env_id)
    except Exception as error:  # gymnasium raises several error types here
        raise ValueError(f"env_id {env_id!r} cannot be made by gymnasium: {error}") from None
    if not isinstance(env.observation_space, spaces.Box):
        env.close()
        raise TypeError(f"env_id {env_id!r} has observation space "
                        f"{env.observation_space}; only vector (Box) observations are "
                        "supported")
    action_dim, encode = _action_codec(env.action_space)
    env.action_space.seed(seed)
    paths = []
    try:
        for index in range(episodes):
            obs, _ = env.reset(seed=seed + index)
            steps = {"obs": [np.asarray(obs, np.float32).ravel()],
                     "action": [np.zeros(action_dim, np.float32)], "reward": [0.0],
                     "is_first": [1.0], "is_terminal": [0.0]}
            while True:
                action = env.action_space.sample() if policy is None else policy(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                steps["obs"].append(np.asarray(obs, np.float32).ravel())
                steps["action"].append(encode(action))
                steps["reward"].append(float(reward))
                steps["is_first"].append(0.0)
                steps["is_terminal"].append(float(terminated))
                if terminated or truncated or (max_steps and len(steps["obs"]) >= max_steps):
                    break
            episode = {k: np.asarray(v, np.float32) for k, v in steps.items()}
            paths.append(save_episode(directory, episode, f"{prefix}-{seed + index:06d}"))
            if progress:
                print(f"\rcollect {env_id}: {index + 1}/{episodes} episodes", end="",
                      flush=True)
    finally:
        env.close()
        if progress:
            print()
    return paths
