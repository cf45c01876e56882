"""Train a DreamerV3 agent (world model + actor + critic) on a gymnasium environment.

    python examples/agent.py --env CartPole-v1 --steps 20000
    python examples/agent.py --env Pendulum-v1 --steps 30000 --train-ratio 256 --imag-last 16
    python examples/agent.py --env Pendulum-v1 --steps 24000 --small --units 128 \
        --train-ratio 256 --actor-lr 1e-4 --critic-lr 1e-4

Collects with the actor into ``<out>/<env>/episodes``, trains at ``--train-ratio``
replayed steps per environment step (one compiled update per batch: world model,
imagination, actor, critic), evaluates the actor's mode on 10 episodes every
``--eval-every`` steps, checkpoints ``<out>/<env>/agent.keras`` after every round and
resumes from it when run again; stops at ``--target`` (the solved return: 475 for
CartPole-v1, -200 for Pendulum-v1). Then exports the checkpoint (``<out>/<env>/export``:
SavedModel, ONNX, parity report) and evaluates the exported actor with ONNX Runtime on
the same evaluation seeds. Writes ``<out>/<env>/agent.json``: the evaluations, with
environment steps and wall time, and the Keras and ONNX Runtime returns side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet_tf  # noqa: E402,F401  (before TensorFlow is imported)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from rssm_tf import BehaviorConfig, Dreamer, RssmConfig  # noqa: E402
from rssm_tf.agent import action_bounds, train_agent  # noqa: E402
from rssm_tf.collect import make_env  # noqa: E402
from rssm_tf.episodes import observation_keys  # noqa: E402

#: the return that counts as solved (gymnasium's reward threshold, Pendulum's customary)
TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0}

#: a small world model and actor-critic for the classic-control tasks
#: ``--small``: the main example's world model (examples/end_to_end.py), compact
#: enough to train in minutes on two CPU cores
SMALL_SIZES = dict(deterministic_size=128, n_categories=16, n_classes=16, hidden_size=128,
                   n_blocks=4, encoder_layers=2, decoder_layers=2)
SIZES = dict(deterministic_size=256, n_categories=16, n_classes=16, hidden_size=256,
             n_blocks=4)


def build(env_id: str, seed: int, units: int, lr: float, imag_last: int = 0,
          actor_lr: float = 3e-5, critic_lr: float = 3e-5,
          sizes: dict | None = None) -> Dreamer:
    """A compiled ``Dreamer`` for ``env_id``'s observations and actions: the world model
    of ``sizes`` (default :data:`SIZES`), actor and critic of ``units``, Adam at ``lr``
    for the world model."""
    env, observe = make_env(env_id)
    try:
        obs = observe(env.reset(seed=seed)[0])
    finally:
        env.close()
    discrete, action_dim, low, high = action_bounds(env_id)
    space = {k: tuple(obs[k].shape) for k in observation_keys({k: v.shape for k, v in
                                                               obs.items()})}
    config = RssmConfig(obs_space=space, action_dim=action_dim, **(sizes or SIZES))
    behavior = BehaviorConfig(discrete=discrete, units=units, imag_last=imag_last,
                              actor_lr=actor_lr, critic_lr=critic_lr)
    model = Dreamer(config, behavior, action_low=low, action_high=high, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(lr, epsilon=1e-8, global_clipnorm=1000.0))
    return model


def exported_actor_returns(export_dir: Path, env_id: str, seed: int, episodes: int
                           ) -> list[float]:
    """The exported actor's mode, on ONNX Runtime alone, on ``train_agent``'s evaluation
    seeds (:func:`rssm_tf.agent.eval_seed`)."""
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.planner import ClientActor

    from rssm_tf.agent import eval_seed, run_episodes

    client = WorldModelClient.from_export(export_dir, "onnx")
    results = run_episodes(env_id, ClientActor(client, sample=False), episodes,
                           seed=eval_seed(seed))
    return [float(r["return"]) for r in results]


def evaluate_export(env_id: str, run: Path, seed: int, episodes: int) -> dict:
    """Exports ``run/agent.keras`` into a fresh version under ``run/export`` and runs the
    exported actor's mode with ONNX Runtime on ``train_agent``'s evaluation seeds."""
    from rssm_tf_export.exporter import export_model

    t0 = time.time()
    manifest = export_model(run / "agent.keras", run / "export", name="agent", verbose=False)
    exported = time.time() - t0
    returns = exported_actor_returns(run / "export", env_id, seed, episodes)
    return {"backend": "onnx", "version": manifest["version"],
            "parity_passed": manifest["parity"]["passed"], "export_seconds": round(exported, 1),
            "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "returns": returns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=20000, help="environment steps")
    parser.add_argument("--train-ratio", type=float, default=64.0)
    parser.add_argument("--episodes-per-round", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--units", type=int, default=256, help="actor/critic width")
    parser.add_argument("--lr", type=float, default=3e-4, help="world model's rate")
    parser.add_argument("--actor-lr", type=float, default=3e-5)
    parser.add_argument("--critic-lr", type=float, default=3e-5)
    parser.add_argument("--small", action="store_true",
                        help="the main example's smaller world model (D = H = 128)")
    parser.add_argument("--imag-last", type=int, default=0,
                        help="imagine from the last K steps of each sequence (0: all)")
    parser.add_argument("--target", type=float, default=None,
                        help="stop once an evaluation reaches it (default: TARGETS)")
    parser.add_argument("--no-export", action="store_true",
                        help="skip the export and the ONNX Runtime evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/agent")
    args = parser.parse_args()
    run = Path(args.out) / args.env
    run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    model = build(args.env, args.seed, args.units, args.lr, args.imag_last, args.actor_lr,
                  args.critic_lr, SMALL_SIZES if args.small else SIZES)
    target = TARGETS.get(args.env) if args.target is None else args.target
    t0 = time.time()
    evals = train_agent(model, args.env, run / "episodes", args.steps,
                        train_ratio=args.train_ratio,
                        episodes_per_round=args.episodes_per_round,
                        batch_size=args.batch_size, seq_len=args.seq_len,
                        eval_every=args.eval_every, checkpoint=run / "agent.keras",
                        seed=args.seed, stop_at=target)
    summary = {"env": args.env, "args": vars(args), "evaluations": evals,
               "seconds_this_run": round(time.time() - t0, 1),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(),
               "machine": platform.processor() or platform.machine()}
    if not args.no_export and evals:
        summary["exported"] = evaluate_export(args.env, run, args.seed, len(evals[-1]["returns"]))
        summary["exported"]["keras_mean_return"] = evals[-1]["mean_return"]
        print(f"exported actor (ONNX Runtime): {summary['exported']['mean_return']:.1f} on "
              f"the evaluation seeds; Keras {evals[-1]['mean_return']:.1f}")
    (run / "agent.json").write_text(json.dumps(summary, indent=1))
    best = max(evals, key=lambda e: e["mean_return"]) if evals else None
    if best:
        print(f"best eval: {best['mean_return']:.1f} +- {best['std_return']:.1f} at "
              f"{best['env_steps']} env steps, {best['seconds']} s")


if __name__ == "__main__":
    main()
