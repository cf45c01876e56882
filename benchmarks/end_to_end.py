"""The main example's wall time and check margins, recorded as a benchmark result.

Runs ``examples/end_to_end.py`` (the README's first command without the install) in a
fresh output directory, in a child process, and records its wall time, each run's
updates and fit time, and the horizon-15 open-loop error over the mean predictor's per
observation key (the example's check: at most 0.7), and the agent run's environment
steps, updates, time and returns (Keras and the exported actor on ONNX Runtime).

    python benchmarks/end_to_end.py [--full] [--out DIR]

Writes ``benchmarks/results/end_to_end.json`` and ``.md`` (``end_to_end_full`` with
``--full``; see ``results.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import markdown_table, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the example's --full plans")
    parser.add_argument("--out", default=None, help="output directory (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "e2e"
        command = [sys.executable, str(HERE.parent / "examples" / "end_to_end.py"),
                   "--out", str(out)] + (["--full"] if args.full else [])
        t0 = time.perf_counter()
        proc = subprocess.run(command, text=True)
        seconds = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
    rows, agents = [], []
    for run, r in summary["runs"].items():
        if "mean_return" in r:  # the agent run
            agents.append([run, r["env_steps"], r["updates"], r["train_seconds"],
                           f"{r['mean_return']:.1f} +- {r['std_return']:.1f}",
                           round(r["onnx_mean_return"], 1) if "onnx_mean_return" in r
                           else "-"])
            continue
        for key, ratio in r["ratio_h15"].items():
            rows.append([run, key, r["updates"], r["fit_seconds"], round(ratio, 3)])
    table = markdown_table(["run", "key", "updates", "fit s", "h15 error / mean predictor's"],
                           rows)
    if agents:
        table += "\n\n" + markdown_table(
            ["agent run", "env steps", "updates", "train s",
             "last evaluation (10 episodes)", "exported actor, ONNX Runtime"], agents)
    worst = max(abs(v) for v in summary.get("parity_max_abs_diff", {0: 0.0}).values())
    notes = (f"Whole script {seconds:.0f} s (exit code {proc.returncode}, checks "
             f"{'passed' if summary['passed'] else 'FAILED'}; the margin is "
             f"{summary['margin']}" + (f", the agent's return at least {summary['agent_check']}"
                                        if agents else "")
             + f"); export parity's largest difference {worst:.2g}.")
    report = {"command": "python benchmarks/end_to_end.py" + (" --full" if args.full else ""),
              "seconds": round(seconds, 1), "returncode": proc.returncode, **summary}
    name = "end_to_end_full" if args.full else "end_to_end"
    title = "Main example" + (", --full plans" if args.full else ", quick plans (the default)")
    write_results(name, title, report, table, notes)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
