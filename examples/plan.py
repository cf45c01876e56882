"""Control with the world model: CEM planning over imagination, in Keras and on ONNX Runtime.

For CartPole-v1 and Pendulum-v1 (state vectors):

1. collect random-policy episodes and fit a ``WorldModel`` on them;
2. a few PlaNet-style rounds: collect episodes with the planner (plus exploration
   noise), refit on all data so far (``rssm_tf.agent.train_with_planner``);
3. evaluate 10 episodes with the planner on the Keras model (``rssm_tf.planning.Planner``);
4. export the model (SavedModel + ONNX, with the ``plan_*`` signatures) and evaluate the
   same 10 seeds with ``rssm_tf_serving.planner.ClientPlanner`` on ONNX Runtime;
5. a random policy on the same seeds.

Writes ``OUT/plan/results.json`` (one entry per environment and backend: mean and
spread of the returns next to the random policy's) and ``OUT/plan/returns.png``
(return per round, and the evaluations). Needs the ``examples`` and ``export`` extras.

    python examples/plan.py [--out out] [--envs CartPole-v1 Pendulum-v1] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# first: loads TensorFlow without its GPU probing lines
import quiet_tf  # noqa: F401

# isort: split
import keras
import numpy as np

from rssm_tf.agent import run_episodes, train_with_planner
from rssm_tf.atomic import write_atomic
from rssm_tf.collect import collect
from rssm_tf.data import EpisodeStore, config_for_episode, make_dataset
from rssm_tf.planning import Planner, PlannerConfig
from rssm_tf.saving import save_world_model
from rssm_tf.world_model import WorldModel

# Per environment: random episodes, model sizes, first fit, rounds (episodes, updates,
# exploration), and the planner. CartPole's two actions need few candidates; Pendulum's
# swing-up needs a longer horizon and a continuous search.
RUNS = {
    "CartPole-v1": dict(
        random=100, updates=600, rounds=2, round_episodes=5, round_updates=300, explore=0.3,
        sizes=dict(deterministic_size=128, n_categories=16, n_classes=16, hidden_size=128,
                   n_blocks=4, encoder_layers=2, decoder_layers=2),
        planner=dict(kind="discrete", horizon=12, candidates=64, top_k=8, iterations=2)),
    "Pendulum-v1": dict(
        random=10, updates=600, rounds=3, round_episodes=5, round_updates=300, explore=0.3,
        sizes=dict(deterministic_size=128, n_categories=16, n_classes=16, hidden_size=128,
                   n_blocks=4, encoder_layers=2, decoder_layers=2),
        planner=dict(kind="continuous", low=-2.0, high=2.0, horizon=15, candidates=200,
                     top_k=20, iterations=3)),
}
EVAL_EPISODES, EVAL_SEED = 10, 10_000


class RandomPolicy:
    """The planner protocol with uniformly random actions (the baseline)."""

    def __init__(self, action_dim: int, planner: dict, obs_keys: tuple, seed: int) -> None:
        self.action_dim, self.obs_keys = action_dim, obs_keys
        self.discrete = planner["kind"] == "discrete"
        self.low, self.high = planner.get("low", -1.0), planner.get("high", 1.0)
        self.rng = np.random.default_rng(seed)

    def reset(self, batch_size: int) -> None:
        self.batch = batch_size

    def observe(self, action: np.ndarray, obs: dict) -> None:
        pass

    def plan(self) -> np.ndarray:
        if self.discrete:
            pick = self.rng.integers(self.action_dim, size=self.batch)
            return np.eye(self.action_dim, dtype=np.float32)[pick]
        return self.rng.uniform(self.low, self.high, (self.batch, self.action_dim))


def summary(returns: list[float]) -> dict:
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "returns": [round(float(r), 2) for r in returns]}


def evaluate(env_id: str, planner) -> tuple[list[float], float]:
    t0 = time.time()
    got = run_episodes(env_id, planner, EVAL_EPISODES, seed=EVAL_SEED)
    return [r["return"] for r in got], time.time() - t0


def run(env_id: str, out: Path, seed: int) -> dict:
    from rssm_tf_export.exporter import export_model
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.planner import ClientPlanner

    plan = RUNS[env_id]
    root = out / env_id
    data = root / "data"
    t0 = time.time()
    if not len(EpisodeStore(data)):
        collect(env_id, plan["random"], data, seed=seed)
    episodes = EpisodeStore(data).load()
    keras.utils.set_random_seed(seed)
    model = WorldModel(config_for_episode(episodes[0], **plan["sizes"]), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(6e-4, epsilon=1e-8, global_clipnorm=1000.0))
    model.fit(make_dataset(data, 16, 32, seed=seed), epochs=1,
              steps_per_epoch=plan["updates"], verbose=0)
    print(f"[{env_id}] {len(episodes)} random episodes, fit {plan['updates']} updates "
          f"in {time.time() - t0:.0f}s")
    config = PlannerConfig(**plan["planner"], seed=seed)
    planner = Planner(model, config)
    rounds = train_with_planner(model, planner, env_id, data, rounds=plan["rounds"],
                                episodes=plan["round_episodes"], updates=plan["round_updates"],
                                explore=plan["explore"], seed=seed)

    keras_returns, keras_seconds = evaluate(env_id, planner)
    print(f"[{env_id}] Keras planner: {np.mean(keras_returns):.1f} +- "
          f"{np.std(keras_returns):.1f} ({keras_seconds:.0f}s)")
    model_path = save_world_model(model, root / "model.keras")
    export_dir = root / "export"
    export_model(model_path, export_dir, name=env_id.split("-")[0].lower(), parity=False,
                 verbose=False)
    client = WorldModelClient.from_export(export_dir, "onnx")
    onnx_returns, onnx_seconds = evaluate(env_id, ClientPlanner(client, **plan["planner"],
                                                                seed=seed))
    print(f"[{env_id}] ONNX Runtime planner: {np.mean(onnx_returns):.1f} +- "
          f"{np.std(onnx_returns):.1f} ({onnx_seconds:.0f}s)")
    random_returns, _ = evaluate(env_id, RandomPolicy(model.config.action_dim, plan["planner"],
                                                      model.config.obs_keys, seed))
    random_part = {"random_mean_return": float(np.mean(random_returns)),
                   "random_std_return": float(np.std(random_returns))}
    print(f"[{env_id}] random policy: {np.mean(random_returns):.1f} +- "
          f"{np.std(random_returns):.1f}")
    return {"keras": {**summary(keras_returns), **random_part,
                      "seconds": round(keras_seconds, 1)},
            "onnx": {**summary(onnx_returns), **random_part, "seconds": round(onnx_seconds, 1)},
            "rounds": rounds, "planner": plan["planner"],
            "random_returns": [round(float(r), 2) for r in random_returns]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, (env_id, r) in zip(axes[0], results.items()):
        rounds = r["rounds"]
        x = [e["round"] + 1 for e in rounds]
        ax.errorbar(x, [e["mean_return"] for e in rounds], [e["std_return"] for e in rounds],
                    marker="o", label="collect (with exploration)")
        last = len(rounds) + 1
        for offset, backend in ((0.0, "keras"), (0.15, "onnx")):
            ax.errorbar([last + offset], [r[backend]["mean_return"]],
                        [r[backend]["std_return"]], marker="s", label=f"evaluate ({backend})")
        ax.axhline(r["keras"]["random_mean_return"], color="gray", ls="--", label="random")
        ax.set(title=env_id, xlabel="round", ylabel="return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out")
    parser.add_argument("--envs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None,
                        help="collect/refit rounds (default: per environment, see RUNS)")
    args = parser.parse_args()
    if args.rounds is not None:
        for plan in RUNS.values():
            plan["rounds"] = args.rounds
    out = Path(args.out) / "plan"
    start = time.time()
    results = {env_id: run(env_id, out, args.seed) for env_id in args.envs}
    entries = {env_id: {backend: r[backend] for backend in ("keras", "onnx")}
               for env_id, r in results.items()}
    write_atomic(out / "results.json", json.dumps(
        {**entries, "details": {env_id: {k: r[k] for k in ("rounds", "planner",
                                                           "random_returns")}
                                for env_id, r in results.items()}}, indent=2).encode())
    plot(results, out / "returns.png")
    print(f"done in {time.time() - start:.0f}s: {out / 'results.json'}, {out / 'returns.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
