"""The agent's update against the world model's alone, on the same batch and sizes.

``Dreamer``'s compiled update is the world-model update plus imagination (``horizon``
steps from all B x T posterior states) and the actor's and critic's steps. This times
``fit`` per update for a ``WorldModel`` and a ``Dreamer`` of the same ``RssmConfig``
(alternating rounds, after warm-up), the first call of each (tracing and XLA), and the
imagination rollout alone (``rssm_tf.behavior.imagine`` under XLA) as the profile line.

    python benchmarks/behavior_update.py [--batch 16] [--seq 64] [--size 256]
        [--units 256] [--rounds 3] [--steps 10]

Writes ``benchmarks/results/behavior_update.json`` and ``.md`` (see ``results.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from rssm_tf import BehaviorConfig, Dreamer, RssmConfig, WorldModel
from rssm_tf.behavior import imagine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="D and H")
    parser.add_argument("--units", type=int, default=256, help="actor/critic width")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    b, t = args.batch, args.seq
    config = RssmConfig(obs_dim=4, action_dim=2, deterministic_size=args.size,
                        hidden_size=args.size, n_categories=16, n_classes=16, n_blocks=4)
    behavior = BehaviorConfig(units=args.units)
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(b, t, 4)).astype("f"),
             "action": np.eye(2, dtype="f")[rng.integers(0, 2, (b, t))],
             "reward": rng.normal(size=(b, t)).astype("f"),
             "is_first": np.zeros((b, t), "f"), "is_terminal": np.zeros((b, t), "f")}
    data = tf.data.Dataset.from_tensors(batch).repeat()
    models = {"world model": WorldModel(config), "dreamer": Dreamer(config, behavior)}
    first = {}
    for name, model in models.items():
        model.compile()
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=1, verbose=0)
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=args.steps, verbose=0)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    dreamer = models["dreamer"]
    n, h = b * t, behavior.horizon
    starts = (tf.zeros([n, args.size]), tf.zeros([n, config.stoch_size]))
    a_noise = tf.random.uniform([h, n, 2], 0.01, 0.99, seed=0)
    z_noise = tf.random.uniform([h, n, 16, 16], 0.01, 0.99, seed=1)
    rollout = tf.function(lambda hh, zz: imagine(dreamer.rssm, dreamer.actor, hh, zz,
                                                 a_noise, z_noise).h, jit_compile=True)
    rollout(*starts)
    rollouts = []
    for _ in range(args.rounds * 3):
        start = time.perf_counter()
        rollout(*starts).numpy()
        rollouts.append((time.perf_counter() - start) * 1000)
    best = {name: min(v) for name, v in times.items()}
    report = {"command": "python benchmarks/behavior_update.py " + " ".join(sys.argv[1:]),
              "batch": b, "seq": t, "size": args.size, "units": args.units,
              "horizon": h, "ms_per_update": times, "first_call_seconds": first,
              "imagine_ms": rollouts,
              "dreamer_over_world_model": round(best["dreamer"] / best["world model"], 2)}
    rows = [[name, f"{best[name]:.0f}", f"{first[name]:.1f}"] for name in models]
    rows.append([f"imagination alone ({n} starts x {h})", f"{min(rollouts):.0f}", ""])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import markdown_table, write_results

    write_results("behavior_update", f"Agent update vs world model, B{b} x T{t}, "
                  f"D=H={args.size}, actor/critic {args.units}", report,
                  markdown_table(["update", "ms (best round)", "first call s"], rows),
                  f"Dreamer / world model: {report['dreamer_over_world_model']}x.")


if __name__ == "__main__":
    main()
