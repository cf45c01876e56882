"""Acting with a world model in gymnasium: the agent loop and PlaNet-style training.

:func:`run_episodes` runs a batch of environments in lockstep with a planner: every
step it feeds the posterior the action taken and the new observation (``observe``),
asks for the next action (``plan``), adds exploration noise if asked, and steps the
environments; finished episodes are written to an episode directory. A planner is any
object with ``reset(batch_size)``, ``observe(action [B, A], obs)``, ``plan() -> [B, A]``
and ``obs_keys``: :class:`rssm_tf.planning.Planner` (Keras) or
``rssm_tf_serving.planner.ClientPlanner`` (ONNX Runtime, SavedModel, TF Serving).

:func:`train_with_planner` alternates collecting episodes with the planner and refitting
the model on all data so far (PlaNet's loop, with DreamerV3's world model).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rssm_tf.collect import EpisodeRecorder, _action_codec, make_env
from rssm_tf.data import make_dataset
from rssm_tf.episodes import EpisodeStore, save_episode
from rssm_tf.validation import check_positive_int


def _env_action(space: Any, planned: np.ndarray, explore: float,
                rng: np.random.Generator) -> Any:
    """The environment's action for one planned row [A], with exploration: a random
    action with probability ``explore`` (Discrete), or Gaussian noise of ``explore``
    times half the range (Box), clipped to the bounds."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        if explore and rng.random() < explore:
            return int(space.start) + int(rng.integers(space.n))
        return int(space.start) + int(np.argmax(planned))
    low, high = space.low.ravel(), space.high.ravel()
    action = planned.astype(np.float64)
    if explore:
        action = action + rng.normal(size=action.shape) * explore * (high - low) / 2.0
    return np.clip(action, low, high).astype(space.dtype).reshape(space.shape)


def run_episodes(env_id: str, planner: Any, episodes: int, seed: int = 0,
                 explore: float = 0.0, directory: str | os.PathLike | None = None,
                 prefix: str = "plan", max_steps: int | None = None,
                 image_size: Any = None, vector_keys: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Runs ``episodes`` episodes of ``env_id`` at once (seeds ``seed``, ``seed + 1``,
    ...) with ``planner`` choosing every action.

    ``explore``: exploration (see :func:`_env_action`; 0 for evaluation). ``directory``:
    where to save the episodes (episode format, ``{prefix}-{seed:06d}.npz``).
    ``max_steps`` cuts an episode (not terminal); ``image_size`` and ``vector_keys``
    name the observations as :func:`rssm_tf.collect.make_env` does. Returns per
    episode ``return``,
    ``length`` and ``path`` (or None).
    """
    check_positive_int("episodes", episodes)
    if not isinstance(explore, (int, float)) or not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore must be in [0, 1], got {explore!r}")
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    keys = tuple(planner.obs_keys)
    made = [make_env(env_id, image_size, vector_keys) for _ in range(episodes)]
    envs, observers = [m[0] for m in made], [m[1] for m in made]
    action_dim, encode = _action_codec(envs[0].action_space)
    rng = np.random.default_rng(seed)
    try:
        first = [observers[i](envs[i].reset(seed=seed + i)[0]) for i in range(episodes)]
        records = [EpisodeRecorder(obs, action_dim) for obs in first]
        missing = set(keys) - set(first[0])
        if missing:
            raise ValueError(f"the planner's model needs observation keys {list(keys)}; "
                             f"{env_id} gives {sorted(first[0])} (image_size renders "
                             "frames as 'image', vector_keys names parts of a vector)")
        planner.reset(episodes)
        last_action = np.zeros((episodes, action_dim), np.float32)
        current = first
        active = [True] * episodes
        while any(active):
            planner.observe(last_action, {k: np.stack([o[k] for o in current]) for k in keys})
            planned = np.asarray(planner.plan())
            for i in range(episodes):
                if not active[i]:
                    continue  # finished: its row is planned but not used
                action = _env_action(envs[i].action_space, planned[i], explore, rng)
                obs, reward, terminated, truncated, _ = envs[i].step(action)
                current[i] = observers[i](obs)
                taken = encode(action)
                last_action[i] = taken
                records[i].add(current[i], taken, reward, terminated)
                if terminated or truncated or (max_steps and len(records[i]) >= max_steps):
                    active[i] = False
    finally:
        for env in envs:
            env.close()
    results = []
    for i, record in enumerate(records):
        path = None
        if directory is not None:
            path = save_episode(directory, record.episode(), f"{prefix}-{seed + i:06d}")
        results.append({"return": record.total_reward, "length": len(record) - 1,
                        "path": path})
    return results


def train_with_planner(model: Any, planner: Any, env_id: str, directory: str | os.PathLike,
                       rounds: int, episodes: int, updates: int, explore: float = 0.3,
                       seed: int = 0, batch_size: int = 16, seq_len: int = 32,
                       max_steps: int | None = None,
                       log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """PlaNet's loop: ``rounds`` times, collect ``episodes`` episodes with ``planner``
    (on ``model``) plus ``explore`` noise into ``directory``, then refit ``model`` for
    ``updates`` updates on every episode in ``directory`` (the random-policy episodes
    already there included). Returns per round the mean and spread of the collected
    returns, the episodes in the directory and the last training loss.
    """
    for name, value in (("rounds", rounds), ("episodes", episodes), ("updates", updates)):
        check_positive_int(name, value)
    history = []
    for index in range(rounds):
        t0 = time.time()
        got = run_episodes(env_id, planner, episodes, seed=seed + 1000 * (index + 1),
                           explore=explore, directory=directory, prefix=f"round{index:03d}",
                           max_steps=max_steps)
        collect_seconds = time.time() - t0
        data = make_dataset(directory, batch_size, seq_len, seed=seed + index,
                            obs_keys=model.config.obs_keys)
        fit = model.fit(data, epochs=1, steps_per_epoch=updates, verbose=0)
        returns = [r["return"] for r in got]
        stored = len(EpisodeStore(directory))
        entry = {"round": index, "mean_return": float(np.mean(returns)),
                 "std_return": float(np.std(returns)), "episodes_in_directory": stored,
                 "loss": float(fit.history["loss"][-1]),
                 "collect_seconds": round(collect_seconds, 1),
                 "fit_seconds": round(time.time() - t0 - collect_seconds, 1)}
        history.append(entry)
        if log is not None:
            log(f"[{env_id}] round {index}: return {entry['mean_return']:.1f} "
                f"+- {entry['std_return']:.1f} (explore {explore}), loss {entry['loss']:.3f}, "
                f"{stored} episodes, collect {entry['collect_seconds']}s, "
                f"fit {entry['fit_seconds']}s")
    return history
