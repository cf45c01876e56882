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
:func:`train_agent` is DreamerV3's loop with a :class:`~rssm_tf.Dreamer`: collect with
its actor, train at a ``train_ratio``, evaluate, checkpoint and resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rssm_tf.atomic import write_atomic
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


def action_bounds(env_id: str) -> tuple[bool, int, float, float]:
    """``(discrete, action_dim, low, high)`` of an environment's action space; a Box
    must have the same bounds in every dimension (what :class:`~rssm_tf.Dreamer` maps
    onto)."""
    from gymnasium import spaces

    env, _ = make_env(env_id)
    try:
        space = env.action_space
    finally:
        env.close()
    if isinstance(space, spaces.Discrete):
        return True, int(space.n), -1.0, 1.0
    low, high = np.unique(space.low), np.unique(space.high)
    if len(low) != 1 or len(high) != 1 or not np.all(np.isfinite([low, high])):
        raise ValueError(f"{env_id}: a Dreamer maps actions onto one finite [low, high] "
                         f"for every dimension; this space has low={space.low}, "
                         f"high={space.high}")
    return False, int(np.prod(space.shape)), float(low[0]), float(high[0])


def eval_seed(seed: int = 0) -> int:
    """The first evaluation episode's seed of a :func:`train_agent` run with ``seed``
    (far from the collection seeds, so no evaluation episode was trained on)."""
    return 10_000_000 + seed


def train_agent(model: Any, env_id: str, directory: str | os.PathLike, env_steps: int,
                train_ratio: float = 64.0, episodes_per_round: int = 4,
                batch_size: int = 16, seq_len: int = 64, eval_every: int = 5000,
                eval_episodes: int = 10, checkpoint: str | os.PathLike | None = None,
                checkpoint_rounds: int = 10, seed: int = 0, max_steps: int | None = None,
                log: Callable[[str], None] | None = print,
                stop_at: float | None = None) -> list[dict[str, Any]]:
    """DreamerV3's loop with a :class:`~rssm_tf.Dreamer`: collect episodes with the
    actor (sampled) into ``directory``, train at ``train_ratio`` replayed steps per
    environment step, evaluate the actor's mode every ``eval_every`` environment
    steps on ``eval_episodes`` episodes, until ``env_steps`` environment steps.

    Collection and training alternate in rounds of ``episodes_per_round`` episodes
    (run in lockstep): after a round of S new steps, ``S * train_ratio / (batch_size *
    seq_len)`` updates on windows of everything collected so far (the actor's first
    rounds, from its near-uniform initial policy, are the random prefill).
    ``checkpoint`` (a ``.keras`` path): the model is saved there atomically every
    ``checkpoint_rounds`` rounds and at every evaluation, with the loop's progress
    beside it (``<checkpoint>.json``); a run started again with the same arguments
    resumes from both (the rounds after the last save are collected again, into new
    files: the episodes already written stay and are trained on). ``stop_at``: stop
    after the first evaluation whose mean return reaches it (the checkpoint is then
    that model). Evaluations run on the seeds ``eval_seed(seed)``, ``+ 1``, ... every
    time. Returns the evaluations: ``env_steps``, ``mean_return``, ``std_return``,
    ``returns``, ``seconds``.
    """
    import json

    from rssm_tf.dreamer import ActorPolicy
    from rssm_tf.saving import load_world_model, save_world_model

    check_positive_int("env_steps", env_steps)
    for name, value in (("episodes_per_round", episodes_per_round),
                        ("batch_size", batch_size), ("seq_len", seq_len),
                        ("eval_every", eval_every), ("eval_episodes", eval_episodes),
                        ("checkpoint_rounds", checkpoint_rounds)):
        check_positive_int(name, value)
    if not isinstance(train_ratio, (int, float)) or not train_ratio > 0:
        raise ValueError(f"train_ratio must be > 0, got {train_ratio!r}")
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(
            stop_at, (int, float)) or not np.isfinite(stop_at)):
        raise ValueError(f"stop_at must be a finite number or None, got {stop_at!r}")
    progress = {"env_steps": 0, "round": 0, "updates": 0, "debt": 0.0, "evals": [],
                "seconds": 0.0}
    state_path = None if checkpoint is None else Path(str(checkpoint) + ".json")
    if state_path is not None and state_path.exists() and Path(checkpoint).exists():
        progress = json.loads(state_path.read_text())
        progress["resumes"] = progress.get("resumes", 0) + 1
        model = load_world_model(checkpoint)
        if log is not None:
            log(f"[{env_id}] resumed from {checkpoint} at {progress['env_steps']} steps")
    next_eval = (progress["env_steps"] // eval_every + 1) * eval_every
    per_update = batch_size * seq_len
    # compiled once for the run; the collector's noise is reseeded every round
    collector, evaluator = ActorPolicy(model, sample=True), ActorPolicy(model, sample=False)
    start = time.time() - progress["seconds"]
    def reached() -> bool:
        return stop_at is not None and bool(progress["evals"]) \
            and progress["evals"][-1]["mean_return"] >= stop_at

    while progress["env_steps"] < env_steps and not reached():
        index = progress["round"]
        collector.rng = np.random.default_rng(seed + index)
        got = run_episodes(env_id, collector, episodes_per_round, seed=seed + 1000 * (index + 1),
                           directory=directory,
                           prefix=f"agent{index:05d}-{progress.get('resumes', 0)}",
                           max_steps=max_steps)
        new_steps = sum(r["length"] for r in got)
        progress["env_steps"] += new_steps
        progress["debt"] += new_steps * train_ratio / per_update
        updates = int(progress["debt"])
        progress["stored"] = progress.get("stored", 0) + sum(r["length"] + 1 for r in got)
        if updates and progress["stored"] >= seq_len:
            progress["debt"] -= updates
            data = make_dataset(directory, batch_size, seq_len, seed=seed + index,
                                obs_keys=model.config.obs_keys)
            fit = model.fit(data, epochs=1, steps_per_epoch=updates, verbose=0)
            progress["updates"] += updates
            progress["last_logs"] = {k: float(v[-1]) for k, v in fit.history.items()}
            broken = sorted(k for k, v in progress["last_logs"].items() if not np.isfinite(v))
            if broken:  # raised before the checkpoint could be overwritten with it
                raise FloatingPointError(
                    f"[{env_id}] round {index}: the update produced non-finite {broken}"
                    + (f"; {checkpoint} keeps the last finite model (run again to resume "
                       "from it)" if checkpoint is not None else ""))
        progress["round"] = index + 1
        done = progress["env_steps"] >= env_steps
        evaluate = progress["env_steps"] >= next_eval or done
        if evaluate:
            next_eval = (progress["env_steps"] // eval_every + 1) * eval_every
            evaluation = run_episodes(env_id, evaluator, eval_episodes, seed=eval_seed(seed),
                                      max_steps=max_steps)
            returns = [r["return"] for r in evaluation]
            entry = {"env_steps": progress["env_steps"], "updates": progress["updates"],
                     "mean_return": float(np.mean(returns)),
                     "std_return": float(np.std(returns)),
                     "returns": [float(r) for r in returns],
                     "seconds": round(time.time() - start, 1)}
            progress["evals"].append(entry)
            if log is not None:
                log(f"[{env_id}] {entry['env_steps']} steps, {entry['updates']} updates, "
                    f"{entry['seconds']}s: eval return {entry['mean_return']:.1f} "
                    f"+- {entry['std_return']:.1f}")
        progress["seconds"] = time.time() - start
        if checkpoint is not None and (evaluate or index % checkpoint_rounds == 0):
            save_world_model(model, checkpoint)
            write_atomic(state_path, json.dumps(progress).encode())
    return progress["evals"]
