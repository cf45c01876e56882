"""The agent's results beside the CEM planner's and sheeprl's, from finished runs.

    python examples/agent.py --env CartPole-v1 --steps 30000 --out out/agent
    python examples/agent.py --env Pendulum-v1 --steps 30000 --train-ratio 256 --imag-last 16 \\
        --out out/agent
    # sheeprl in its own venv (it pins gymnasium 0.29): pip install sheeprl==0.5.7 torch==2.13.0
    sheeprl exp=dreamer_v3 algo=dreamer_v3_XS env=gym env.id=CartPole-v1 env.num_envs=1 \\
        env.capture_video=False 'algo.cnn_keys.encoder=[]' 'algo.cnn_keys.decoder=[]' \\
        'algo.mlp_keys.encoder=[vector]' 'algo.mlp_keys.decoder=[vector]' \\
        algo.total_steps=3776 algo.replay_ratio=0.125 algo.learning_starts=1024 \\
        algo.world_model.stochastic_size=16 algo.world_model.discrete_size=16 \\
        fabric.accelerator=cpu buffer.checkpoint=False algo.run_test=True seed=0 \\
        num_threads=1 > sheeprl.log
    python benchmarks/agent_report.py --runs out/agent/CartPole-v1 out/agent/Pendulum-v1 \\
        --sheeprl CartPole-v1=sheeprl.log \\
        --main-example benchmarks/results/end_to_end_full.json

For each ``examples/agent.py`` run (its ``agent.json``): the evaluations (mean return of
the actor's mode over 10 episodes, environment steps, wall time), the exported actor's
return on ONNX Runtime on the same seeds, and, re-run here from the run's checkpoint, the
actor's return on the 10 evaluation seeds of ``examples/plan.py`` (so it stands beside
the planner's returns on those seeds, given with ``--planner ENV=MEAN,STD,STEPS``). For
a sheeprl DreamerV3 log: its training episodes' returns near the same environment-step
budget and its own test episode, with its wall time when given (``--sheeprl-seconds
ENV=S``: the log has no clock). ``--main-example``:
the main example's agent (``benchmarks/end_to_end.py --full``'s results) as a row; its
environment steps are then the budget sheeprl's row is read at. Writes
``benchmarks/results/agent.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))
import quiet_tf  # noqa: E402,F401  (before TensorFlow is imported)
from results import markdown_table, write_results  # noqa: E402

#: examples/plan.py's evaluation: 10 episodes from this seed on
PLAN_SEED, PLAN_EPISODES = 10_000, 10


def planner_seed_returns(run: Path, env_id: str) -> list[float]:
    """The run's checkpointed actor (its mode) on ``examples/plan.py``'s seeds."""
    from rssm_tf.agent import run_episodes
    from rssm_tf.dreamer import ActorPolicy
    from rssm_tf.saving import load_world_model

    model = load_world_model(run / "agent.keras", compile=False)
    results = run_episodes(env_id, ActorPolicy(model, sample=False), PLAN_EPISODES,
                           seed=PLAN_SEED)
    return [float(r["return"]) for r in results]


def sheeprl_summary(log: Path, budget: int) -> dict:
    """Training-episode returns of a sheeprl run up to ``budget`` steps (the last 10),
    and its test episode's return."""
    text = log.read_text()
    episodes = [(int(s), float(r)) for s, r in
                re.findall(r"policy_step=(\d+), reward_env_0=(-?[\d.]+)", text)]
    within = [r for s, r in episodes if s <= budget][-10:]
    test = re.findall(r"Test - Reward:\s*(-?[\d.]+)", text)
    return {"episodes": len(episodes), "last_step": episodes[-1][0] if episodes else 0,
            "last10_mean_return": float(np.mean(within)) if within else None,
            "last10_std_return": float(np.std(within)) if within else None,
            "test_return": float(test[-1]) if test else None}


def by_env(items: list[str]) -> dict[str, str]:
    """``["ENV=VALUE", ...]`` as ``{ENV: VALUE}``."""
    return dict(item.split("=", 1) for item in items)


def sheeprl_row(env_id: str, log: Path, rows: list, evals: list[dict],
                budget_run: dict | None, seconds: float | None) -> dict:
    """sheeprl's returns at the budget (the main example's agent's steps, else the
    run's best evaluation), as a row beside ours at the same steps."""
    if budget_run is not None:
        ours = {"env_steps": budget_run["env_steps"], "mean_return": budget_run["mean_return"]}
    else:
        ours = max(evals, key=lambda e: e["mean_return"])
    peer = sheeprl_summary(log, ours["env_steps"])
    steps = min(peer["last_step"], ours["env_steps"])
    if budget_run is None:
        ours = min((e for e in evals if e["env_steps"] >= steps),
                   key=lambda e: e["env_steps"], default=ours)
    peer.update(rssm_tf_at_budget=ours, seconds=seconds)
    returns = (f"{peer['last10_mean_return']:.1f} +- {peer['last10_std_return']:.1f}"
               if peer["last10_mean_return"] is not None else "-")
    rows.append([env_id, "sheeprl DreamerV3 (XS, last 10 training episodes)", steps,
                 seconds or "", returns, "",
                 "test episode: " + (f"{peer['test_return']:.1f}" if peer["test_return"]
                                     is not None else "not reached") + "; rssm_tf at "
                 f"{ours['env_steps']} steps: {ours['mean_return']:.1f}"])
    return peer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="examples/agent.py run dirs")
    parser.add_argument("--sheeprl", nargs="*", default=[], help="ENV=path/to/sheeprl.log")
    parser.add_argument("--planner", nargs="*", default=[],
                        help="ENV=MEAN,STD,ENV_STEPS of examples/plan.py's Keras planner")
    parser.add_argument("--sheeprl-seconds", nargs="*", default=[],
                        help="ENV=SECONDS: the sheeprl run's wall time")
    parser.add_argument("--main-example", default=None,
                        help="benchmarks/results/end_to_end_full.json (its agent run)")
    parser.add_argument("--note", default="", help="a sentence on how the runs were made")
    args = parser.parse_args()
    sheeprl = by_env(args.sheeprl)
    sheeprl_seconds = {k: float(v) for k, v in by_env(args.sheeprl_seconds).items()}
    planner = {k: [float(x) for x in v.split(",")] for k, v in by_env(args.planner).items()}
    budgets: dict[str, dict] = {}  # env -> the main example's agent at its stop
    evals_of: dict[str, list[dict]] = {}  # env -> our run's evaluations
    report, rows = {"runs": {}}, []
    if args.main_example:
        main_run = json.loads(Path(args.main_example).read_text())["runs"]["CartPole-agent"]
        budgets["CartPole-v1"] = main_run
        report["main_example"] = main_run
        rows.append(["CartPole-v1", "rssm_tf Dreamer, the main example's agent (--full)",
                     main_run["env_steps"], main_run["train_seconds"],
                     f"{main_run['mean_return']:.1f} +- {main_run['std_return']:.1f}", "",
                     f"exported actor on ONNX Runtime: {main_run['onnx_mean_return']:.1f}"])
    for run in map(Path, args.runs):
        if (run / "agent.json").is_file():  # the run finished
            summary = json.loads((run / "agent.json").read_text())
        else:  # stopped before its budget: the checkpoint's record of the evaluations
            state = json.loads((run / "agent.keras.json").read_text())
            summary = {"env": run.name, "evaluations": state["evals"], "stopped_early": True,
                       "env_steps": state["env_steps"], "seconds": state["seconds"]}
        env_id = summary["env"]
        evals = summary["evaluations"]
        best = max(evals, key=lambda e: e["mean_return"])
        plan_seeds = planner_seed_returns(run, env_id)
        entry = {"agent": summary, "solved_at": best,
                 "planner_seeds": {"seed": PLAN_SEED, "returns": plan_seeds,
                                   "mean_return": float(np.mean(plan_seeds)),
                                   "std_return": float(np.std(plan_seeds))}}
        exported = summary.get("exported", {})
        rows.append([env_id, "rssm_tf Dreamer (Keras)", best["env_steps"], best["seconds"],
                     f"{best['mean_return']:.1f} +- {best['std_return']:.1f}",
                     f"{np.mean(plan_seeds):.1f} +- {np.std(plan_seeds):.1f}",
                     "best evaluation; the final checkpoint on plan.py's seeds"])
        if exported:
            rows.append([env_id, "the final actor exported, ONNX Runtime",
                         evals[-1]["env_steps"], "",
                         f"{exported['mean_return']:.1f} +- {exported['std_return']:.1f}", "",
                         f"Keras on the same seeds: {exported['keras_mean_return']:.1f}"])
        if env_id in planner:
            mean, std, steps = planner[env_id]
            entry["planner"] = {"mean_return": mean, "std_return": std, "env_steps": steps}
            rows.append([env_id, "CEM planner (examples/plan.py, Keras)", int(steps), "", "",
                         f"{mean:.1f} +- {std:.1f}", "from --planner (an earlier plan.py run)"])
        evals_of[env_id] = evals
        report["runs"][env_id] = entry
    for env_id, log in sheeprl.items():
        if env_id not in evals_of and env_id not in budgets:
            parser.error(f"--sheeprl {env_id}: no run of ours on {env_id} to read its budget "
                         "from (--runs, or --main-example for CartPole-v1)")
        report["runs"].setdefault(env_id, {})["sheeprl"] = sheeprl_row(
            env_id, Path(log), rows, evals_of.get(env_id, []), budgets.get(env_id),
            sheeprl_seconds.get(env_id))
    rows.sort(key=lambda row: row[0])  # stable: each environment's rows together, in order
    report["command"] = "python benchmarks/agent_report.py " + " ".join(sys.argv[1:])
    table = markdown_table(["environment", "agent", "env steps", "wall s",
                            "return (evaluation seeds)", "return (plan.py's seeds)", "note"],
                           rows)
    write_results("agent", "The agent: returns and the budget to reach them", report, table,
                  "Returns: mean +- std over 10 episodes of the policy's mode (sheeprl: its "
                  "training episodes, and its own single test episode). Wall time: the run's "
                  "own clock on this machine, including evaluations. " + args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
