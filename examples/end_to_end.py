"""End to end on real gymnasium environments: world models, an agent, the export.

For each world-model run (Pendulum-v1 from its state vector, and pixel CartPole:
CartPole-v1 from two observation keys, ``image`` RGB frames rendered offline and
``velocity`` the cart's velocity and the pole's angular velocity, the parts of the
state a single frame cannot show; ``--runs CartPole-v1`` adds CartPole's state vector):

1. collect random-policy episodes for training and held-out evaluation
   (``OUT/<run>/data/train``, ``OUT/<run>/data/test``);
2. fit a ``WorldModel`` with one ``model.fit`` (TensorBoard logs in ``OUT/<run>/logs``,
   an imagination picture per epoch, for pixels also the real and imagined frames side
   by side, ``imagination_frames_epoch<N>.png``; an atomic checkpoint
   ``OUT/<run>/model.keras``);
3. evaluate open-loop prediction on the held-out episodes against a mean predictor
   (per dimension, or the per-pixel mean frame) (``OUT/<run>/open_loop.json``).

The agent run, ``CartPole-agent``: a DreamerV3 agent (world model, actor and critic
trained in imagination, :class:`rssm_tf.Dreamer`) collects CartPole-v1 with its actor
and trains at a train ratio, evaluating the actor's mode on 10 episodes every
``eval_every`` environment steps (``OUT/CartPole-agent/agent.json``; the checkpoint
``OUT/CartPole-agent/model.keras``, resumed when run again).

Then:

4. export the models: ``OUT/export/saved_model/<name>/<version>/``; for the last run
   (the agent) also ``OUT/export/onnx/``, ``OUT/export/litert/`` and the parity
   report (Keras eager against tf.function, XLA, the SavedModel loaded by
   ``tf.saved_model.load`` and by TF Serving's session loader, ONNX Runtime, LiteRT,
   and OpenVINO where installed); the exported actor then plays the evaluation
   episodes again with ONNX Runtime, without the Keras model.

It verifies at the end: the open-loop error of every observation key at horizon 15
must be at most ``MARGIN`` (0.7) times the mean predictor's; the agent's last
evaluation must reach ``AGENT_CHECK`` (a mean return of 100, 4.5 times a random
policy's 22), on Keras and on ONNX Runtime; and the export parity must hold; otherwise
it exits 1. The default plans aim at ten minutes on two cores (their last time is in
``benchmarks/results/end_to_end.md``); ``--full`` runs more data and updates
(``benchmarks/results/end_to_end_full.md``).

    python examples/end_to_end.py [--out out] [--full] [--runs Pendulum-v1 ...]
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
from agent import SMALL_SIZES, exported_actor_returns
from agent import build as build_agent

from rssm_tf.agent import train_agent
from rssm_tf.atomic import write_atomic
from rssm_tf.callbacks import ImaginationCallback, NonFiniteGuard
from rssm_tf.collect import collect
from rssm_tf.data import EpisodeStore, config_for_episode, make_dataset
from rssm_tf.saving import AtomicModelCheckpoint, save_world_model
from rssm_tf.world_model import WorldModel, evaluate_open_loop

# Per run: the gymnasium id, episodes to collect (train, held out), training updates
# (one fit of ``epochs`` epochs), learning rate; pixel runs record frames of
# ``image_size`` as ``image`` and the parts of the state vector ``vector_keys`` names
# (the full vector is not stored). The quick plans (the default) aim at ten minutes
# for the whole script on two cores; ``--full`` runs the longer ones.
PLANS = {
    "CartPole-v1": dict(env="CartPole-v1", train=200, test=60, steps=1000, epochs=2, lr=6e-4),
    "Pendulum-v1": dict(env="Pendulum-v1", train=20, test=10, steps=500, epochs=2, lr=6e-4),
    # 32x48 frames of the 192x288 region around the cart and pole (rows 140-332,
    # columns 156-444 of the 400x600 render; a random policy rarely takes the cart
    # out of it), so a 1-pixel step is 6 rendered pixels and the pole's tilt shows;
    # cnn_depth 8 (DreamerV3: 32) and cnn_kernel 3 (ours 4, DreamerV3 5): the small
    # convolutions are most of this update, 3x3 kernels do 9/16 of 4x4's products and
    # predicted better here (benchmarks/results/end_to_end.md; fewer updates did not
    # keep the margin, docs/performance.md). ``velocity`` holds the cart's velocity and
    # the pole's angular velocity (state indices 1 and 3), what a single frame cannot show.
    # 160 held-out episodes: a random policy's CartPole episodes are short, and only
    # those of 20 steps or more give a window (about 96 of 160); on 40 (29 windows) one
    # model's horizon-15 ratio read 0.83 for the image, on 160 0.69.
    "CartPole-pixels": dict(env="CartPole-v1", train=150, test=160, steps=1600, epochs=2,
                            lr=1e-3, image_size=(32, 48), image_crop=(140, 332, 156, 444),
                            vector_keys={"velocity": [1, 3]},
                            sizes=dict(cnn_depth=8, cnn_kernel=3)),
}
# The agent (world model + actor + critic, D = H = 128, actor and critic 3 x 128):
# train ratio 128 (replayed steps per environment step; DreamerV3's default for
# proprioceptive tasks is 512), imagination from the last 16 steps of each 64-step
# window (256 starts instead of 1024, DreamerV3's ``imag_last``), and actor and critic
# learning rates 1e-4 (DreamerV3: 3e-5; at 3e-5 the actor of this short run was still
# at a random policy's return after 250 updates). It stops at the first evaluation
# reaching ``stop_at``, else after ``steps`` environment steps. Measured with seeds 0,
# 1, 2 at about 2500-2700 steps: mean returns 289, 238 and 129.
AGENT_PLANS = {
    "CartPole-agent": dict(env="CartPole-v1", steps=2500, train_ratio=128, imag_last=16,
                           units=128, lr=3e-4, actor_lr=1e-4, critic_lr=1e-4,
                           eval_every=500, stop_at=300.0),
}
FULL_AGENT_PLANS = {
    # CartPole's solved return, 475, took 8934 environment steps and 1280 s with the
    # larger model of examples/agent.py (benchmarks/results/agent.md)
    "CartPole-agent": dict(AGENT_PLANS["CartPole-agent"], steps=12000, stop_at=475.0),
}
#: the agent run's check: the mean return of its last evaluation (10 episodes of the
#: actor's mode) on Keras and on ONNX Runtime; a random policy's is about 22
AGENT_CHECK = 100.0
FULL_PLANS = {
    "CartPole-v1": dict(PLANS["CartPole-v1"], train=400, test=60, steps=1500, epochs=3),
    "Pendulum-v1": dict(PLANS["Pendulum-v1"], train=40, test=10, steps=1000, epochs=3),
    # the same frames: at 64x96 (lr 3e-4, 1800 updates) the 15-step imagination did
    # worse than the mean frame (1.07x its error)
    "CartPole-pixels": dict(PLANS["CartPole-pixels"], train=300, test=160, steps=2400,
                            epochs=3),
}
#: the runs of a plain ``python examples/end_to_end.py``
DEFAULT_RUNS = ["Pendulum-v1", "CartPole-pixels", "CartPole-agent"]
# The check every world-model run must pass: open-loop error at horizon 15 at most this fraction of
# the mean predictor's, for every observation key.
MARGIN = 0.7


def run_env(run: str, out: Path, seed: int, scale: float, plans: dict) -> dict:
    plan = plans.get(run, dict(env=run, train=50, test=10, steps=600, epochs=2, lr=6e-4))
    env_id, size = plan["env"], plan.get("image_size")
    root = out / run
    train_dir, test_dir = root / "data" / "train", root / "data" / "test"
    t0 = time.time()
    naming = dict(image_size=size, vector_keys=plan.get("vector_keys"),
                  image_crop=plan.get("image_crop"))
    if not len(EpisodeStore(train_dir)):
        collect(env_id, plan["train"], train_dir, seed=seed, **naming)
    if not len(EpisodeStore(test_dir)):
        collect(env_id, plan["test"], test_dir, seed=seed + 100_000, **naming)
    train, test = EpisodeStore(train_dir).load(), EpisodeStore(test_dir).load()
    print(f"[{run}] {len(train)} training episodes "
          f"({sum(len(e['action']) for e in train)} steps), {len(test)} held out; "
          f"collected in {time.time() - t0:.1f}s")

    keras.utils.set_random_seed(seed)
    config = config_for_episode(train[0], **SMALL_SIZES, **plan.get("sizes", {}))
    print(f"[{run}] observation space {config.obs_shapes}")
    model = WorldModel(config, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(plan["lr"], epsilon=1e-8,
                                                  global_clipnorm=1000.0))
    steps = max(plan["epochs"], int(plan["steps"] * scale))
    keys = config.obs_keys
    dataset = make_dataset(train, batch_size=16, seq_len=32, seed=seed, obs_keys=keys)
    validation = make_dataset(test, batch_size=16, seq_len=32, seed=seed, repeat=False,
                              obs_keys=keys)
    callbacks = [NonFiniteGuard(), AtomicModelCheckpoint(root / "model.keras"),
                 ImaginationCallback(test, root, context=5, horizon=15,
                                     log_dir=str(root / "logs")),
                 keras.callbacks.TensorBoard(str(root / "logs"))]
    t0 = time.time()
    model.fit(dataset, epochs=plan["epochs"], steps_per_epoch=steps // plan["epochs"],
              validation_data=validation, callbacks=callbacks, verbose=2)
    fit_seconds = time.time() - t0
    save_world_model(model, root / "model.keras")

    result = evaluate_open_loop(model, test, context=5, horizon=15)
    result.update(env=env_id, keys=list(keys), fit_seconds=round(fit_seconds, 1),
                  updates=steps, xla=model.xla)
    for h in (1, 15):
        errors = ", ".join(f"{k} MSE {result[k + '_mse'][h - 1]:.5f} (mean predictor "
                           f"{result['mean_' + k + '_mse'][h - 1]:.5f})"
                           for k in (*keys, "reward"))
        print(f"[{run}] open-loop horizon {h:>2}: {errors}; {result['windows']} windows")
    result["ratio_h15"] = {k: result[k + "_mse"][14] / result["mean_" + k + "_mse"][14]
                           for k in keys}
    print(f"[{run}] horizon 15 error / mean predictor's: " + ", ".join(
        f"{k} {r:.2f}" for k, r in result["ratio_h15"].items()) + f" (must be <= {MARGIN})")
    write_atomic(root / "open_loop.json", json.dumps(result, indent=2).encode())
    pictures = sorted(p.name for p in root.glob(f"imagination*_epoch{plan['epochs']}.png"))
    print(f"[{run}] imagination pictures in {root}: {', '.join(pictures)}")
    return result


def run_agent(run: str, out: Path, seed: int, scale: float, plan: dict) -> dict:
    """Trains the agent of ``plan`` (:data:`AGENT_PLANS`) into ``out/run/model.keras``
    and returns its evaluations, steps and time."""
    env_id, root = plan["env"], out / run
    root.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = build_agent(env_id, seed, plan["units"], plan["lr"], plan["imag_last"],
                        plan["actor_lr"], plan["critic_lr"], sizes=SMALL_SIZES)
    print(f"[{run}] a Dreamer on {env_id}: train ratio {plan['train_ratio']}, imagination "
          f"from the last {plan['imag_last']} steps of each window, up to "
          f"{int(plan['steps'] * scale)} environment steps or a return of {plan['stop_at']}")
    t0 = time.time()
    evals = train_agent(model, env_id, root / "episodes", max(1, int(plan["steps"] * scale)),
                        train_ratio=plan["train_ratio"], batch_size=16, seq_len=64,
                        eval_every=plan["eval_every"], checkpoint=root / "model.keras",
                        seed=seed, stop_at=plan["stop_at"],
                        log=lambda line: print(line.replace(f"[{env_id}]", f"[{run}]")))
    last = evals[-1]
    result = {"env": env_id, "evaluations": evals, "env_steps": last["env_steps"],
              "updates": last["updates"], "mean_return": last["mean_return"],
              "std_return": last["std_return"], "train_seconds": round(time.time() - t0, 1),
              "check": AGENT_CHECK}
    write_atomic(root / "agent.json", json.dumps(result, indent=2).encode())
    print(f"[{run}] last evaluation: {last['mean_return']:.1f} +- {last['std_return']:.1f} "
          f"after {last['env_steps']} environment steps (must be >= {AGENT_CHECK})")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="output directory (out)")
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                        help=f"runs (default {DEFAULT_RUNS}): {list(PLANS)}, "
                        f"{list(AGENT_PLANS)} or other gymnasium ids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the training updates (e.g. 0.1 for a smoke run)")
    parser.add_argument("--full", action="store_true",
                        help="the longer plans (more data and updates)")
    parser.add_argument("--no-export", action="store_true", help="skip the export step")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.time()
    plans = FULL_PLANS if args.full else PLANS
    agent_plans = FULL_AGENT_PLANS if args.full else AGENT_PLANS
    results, agents = {}, {}
    for run in args.runs:
        if run in agent_plans:
            agents[run] = run_agent(run, out, args.seed, args.scale, agent_plans[run])
        else:
            results[run] = run_env(run, out, args.seed, args.scale, plans)
    ok = all(ratio <= MARGIN for r in results.values() for ratio in r["ratio_h15"].values())
    ok = ok and all(a["mean_return"] >= AGENT_CHECK for a in agents.values())

    if not args.no_export:
        from rssm_tf_export.exporter import export_model

        for i, run in enumerate(args.runs):
            name = run.replace("-v1", "").replace("-", "_").lower()
            last = i == len(args.runs) - 1
            manifest = export_model(out / run / "model.keras", out / "export", name=name,
                                    onnx=last, parity=last, litert=last)
            if last:
                ok = ok and manifest["parity"]["passed"]
        print(f"exported to {out / 'export'}: saved_model/<name>/<version>/, onnx/, "
              "litert/, manifest.json, parity.json")
        if args.runs[-1] in agents:  # the actor deployed: ONNX Runtime alone
            agent = agents[args.runs[-1]]
            returns = exported_actor_returns(out / "export", agent["env"], args.seed,
                                             len(agent["evaluations"][-1]["returns"]))
            agent["onnx_mean_return"] = float(sum(returns) / len(returns))
            print(f"[{args.runs[-1]}] the exported actor on ONNX Runtime: "
                  f"{agent['onnx_mean_return']:.1f} on the evaluation seeds (Keras "
                  f"{agent['mean_return']:.1f}; must be >= {AGENT_CHECK})")
            ok = ok and agent["onnx_mean_return"] >= AGENT_CHECK

    runs = {run: {f"{k}_h{h}": r[k][h - 1] for key in r["keys"]
                  for k in (f"{key}_mse", f"mean_{key}_mse") for h in (1, 15)}
            | {"ratio_h15": r["ratio_h15"], "updates": r["updates"],
               "fit_seconds": r["fit_seconds"]}
            for run, r in results.items()}
    runs.update({run: {k: a[k] for k in ("env_steps", "updates", "mean_return", "std_return",
                                          "train_seconds", "onnx_mean_return") if k in a}
                 for run, a in agents.items()})
    seconds = round(time.time() - start)
    summary = {"plans": "full" if args.full else "quick", "seconds": seconds,
               "margin": MARGIN, "agent_check": AGENT_CHECK, "passed": bool(ok),
               "runs": runs}
    if not args.no_export:
        summary["parity_max_abs_diff"] = manifest["parity"]["max_abs_diff"]
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    print(f"done in {seconds}s: " + ("all checks passed" if ok else "CHECK FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
