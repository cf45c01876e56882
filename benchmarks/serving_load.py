"""Load on a TF Serving endpoint: many concurrent episodes of ``observe`` calls.

    python benchmarks/serving_load.py                    # 32 clients x 1000 steps
    python benchmarks/serving_load.py --clients 8 --steps 200 --export out/export

Starts the stand-in server (``python -m rssm_tf_serving.standin``) in its own process on
loopback, once without batching and once with ``serving/batching.config``, and runs
``--clients`` threads, each a ``WorldModelClient`` with its own episode (reset, then
``--steps`` ``observe`` calls at batch 1), over gRPC and over REST. Reports per call p50
and p99, throughput, and the errors (the run fails unless there are none). Each run is
bounded by ``--timeout`` seconds; clients still running then count as errors. The
clients are threads of one Python process, so on a small machine the client side
shares the cores with the server: the numbers are the whole loop's, not the server's.
Point ``--rest-url``/``--grpc-target`` at a real ``tensorflow_model_server`` serving the
export to measure it instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from results import markdown_table, write_results  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, name: str, batching: Path | None) -> tuple[subprocess.Popen, int,
                                                                         int]:
    rest, grpc = free_port(), free_port()
    command = [sys.executable, "-m", "rssm_tf_serving.standin", "--model-base-path", str(base),
               "--model-name", name, "--rest-port", str(rest), "--port", str(grpc)]
    if batching:
        command += ["--batching-config", str(batching)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise RuntimeError(f"the stand-in did not start: {line!r}")
    return proc, rest, grpc


def run_load(export_dir: Path, backend: str, options: dict, clients: int, steps: int,
             timeout: float) -> dict:
    """``clients`` threads x ``steps`` observe calls; per-call times and errors."""
    from rssm_tf_serving.client import WorldModelClient

    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def episode(i: int) -> None:
        try:
            client = WorldModelClient.from_export(export_dir, backend, **options)
            rng = np.random.default_rng(i)
            obs = client.random_observation(rng, steps, 1)
            actions = rng.uniform(-1, 1, (steps, 1, client.action_dim)).astype(np.float32)
            client.reset(1)  # one unmeasured call: the connection and the server's first run
            client.observe(actions[0], {k: v[0] for k, v in obs.items()}, sample="mode")
            client.reset(1)
        except Exception as error:  # counted, reported
            errors.append(f"client {i} setup: {error}")
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        for t in range(steps):
            start = time.perf_counter()
            try:
                client.observe(actions[t], {k: v[t] for k, v in obs.items()}, sample="mode")
            except Exception as error:
                errors.append(f"client {i} step {t}: {error}")
                return
            times[i].append((time.perf_counter() - start) * 1000.0)

    threads = [threading.Thread(target=episode, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, timeout - (time.perf_counter() - start)))
    wall = time.perf_counter() - start
    unfinished = sum(thread.is_alive() for thread in threads)
    if unfinished:
        errors.append(f"{unfinished} client(s) still running after {timeout:.0f} s")
    flat = np.concatenate([np.asarray(t) for t in times if t]) if any(times) else np.zeros(1)
    return {"calls": int(sum(len(t) for t in times)), "errors": len(errors),
            "first_errors": errors[:3], "wall_s": round(wall, 2),
            "calls_per_s": round(sum(len(t) for t in times) / wall, 1),
            "p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="an export directory (default: export a seed model)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000, help="observe calls per client")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--rest-url", help="a running TF Serving's REST URL")
    parser.add_argument("--grpc-target", help="a running TF Serving's gRPC host:port")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    command = "python benchmarks/serving_load.py " + " ".join(sys.argv[1:])
    tmp = tempfile.TemporaryDirectory()
    if args.export:
        export_dir = Path(args.export)
    else:
        from serving_latency import export_seed_model

        export_dir = export_seed_model(Path(tmp.name))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    base = export_dir / "saved_model" / manifest["name"]
    setups = [("given server", None)] if args.rest_url or args.grpc_target else [
        ("stand-in, no batching", None),
        ("stand-in, batching.config", ROOT / "serving" / "batching.config")]
    results = []
    for label, batching in setups:
        server = None
        if args.rest_url or args.grpc_target:
            rest_url, grpc_target = args.rest_url, args.grpc_target
        else:
            server, rest, grpc = start_server(base, manifest["name"], batching)
            rest_url, grpc_target = f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc}"
        try:
            for backend, options in (("grpc", {"target": grpc_target}),
                                     ("rest", {"url": rest_url})):
                if not next(iter(options.values())):
                    continue
                result = run_load(export_dir, backend, options, args.clients, args.steps,
                                  args.timeout)
                result.update(server=label, protocol=backend)
                results.append(result)
                print(f"{label:<26} {backend:<5} {result['calls']} calls in "
                      f"{result['wall_s']} s: {result['calls_per_s']} calls/s, p50 "
                      f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                      f"{result['errors']} errors {result['first_errors']}")
        finally:
            if server is not None:
                server.kill()
                server.wait()
    report = {"config": manifest["config"], "clients": args.clients, "steps": args.steps,
              "results": results, "command": command,
              "zero_errors": all(r["errors"] == 0 for r in results)}
    table = markdown_table(
        ["server", "protocol", "calls", "errors", "calls/s", "p50 ms", "p99 ms"],
        [[r["server"], r["protocol"], r["calls"], r["errors"], r["calls_per_s"],
          round(r["p50_ms"], 2), round(r["p99_ms"], 2)] for r in results])
    write_results("serving_load", f"Serving load: {args.clients} clients x {args.steps} "
                  "observe steps (batch 1), loopback", report, table,
                  "Client threads and the server share the machine's cores.",
                  json_path=args.json)
    return 0 if report["zero_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
