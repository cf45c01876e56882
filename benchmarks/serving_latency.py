"""Serving latency per backend: p50/p99 of ``observe`` at batch 1 and 64, of
``imagine`` over 15 steps, and of one planning step (the exported CEM planner: 500
candidates, horizon 12, 4 iterations, top 50, continuous actions; and the Keras
``Planner`` under XLA on the same configuration), through ``WorldModelClient``.

Backends: ONNX Runtime, OpenVINO (CPU plugin, the same ONNX files), LiteRT, the
SavedModel in-process, the 8-bit-weight ONNX and LiteRT files (``onnx_int8``,
``litert_int8``, when the export has them), and TF Serving's REST and gRPC protocols
against the stand-in server (``serving/standin.py``; point ``--rest-url`` /
``--grpc-target`` at a real ``tensorflow_model_server`` to measure that instead).

    python benchmarks/serving_latency.py [--export DIR] [--iters 200] [--json PATH]
    python benchmarks/serving_latency.py --plan-only --export out/plan/Pendulum-v1/export
    python benchmarks/serving_latency.py --imagine-only [--export DIR]

``--imagine-only``: ``imagine`` of 1024 starts x 15 steps (the ``imagine_noise``
signature: states, reward and continue) on ONNX Runtime, OpenVINO, the SavedModel
in-process and the Keras model under XLA, one call each time.

Without ``--export`` it exports a fresh seed-configuration model (obs 64, action 11,
with ``--litert --int8``) to a temporary directory first. All numbers are from one
run on one machine, written to ``benchmarks/results/serving_latency.json`` and ``.md``
(``_imagine`` / ``_plan`` for the two single measurements; see ``results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from results import markdown_table, write_results  # noqa: E402


def export_seed_model(out: Path) -> Path:
    from rssm_tf_export.exporter import export_model

    from rssm_tf import RssmConfig
    from rssm_tf.saving import save_world_model
    from rssm_tf.world_model import WorldModel

    model = WorldModel(RssmConfig(obs_dim=64, action_dim=11))
    model.compile()
    path = save_world_model(model, out / "seed.keras")
    export_model(path, out / "export", name="rssm", parity=False, verbose=True, litert=True,
                 int8=True)
    return out / "export"


def percentiles(fn, iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times))}


def measure(client, iters: int, warmup: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    result = {}
    for batch in (1, 64):
        action = rng.uniform(-1, 1, (batch, client.action_dim)).astype(np.float32)
        obs = client.random_observation(rng, batch)
        noise = rng.uniform(0.01, 0.99, (batch, client.groups, client.classes)).astype(np.float32)
        client.reset(batch)
        state = client.state

        def observe(state=state, action=action, obs=obs, noise=noise):
            client.state = state
            client.observe(action, obs, noise=noise)

        result[f"observe_b{batch}"] = percentiles(observe, iters, warmup)
    client.reset(1)
    actions = rng.uniform(-1, 1, (1, 15, client.action_dim)).astype(np.float32)
    result["imagine15_b1"] = percentiles(lambda: client.imagine(actions, sample="mode"),
                                         max(10, iters // 4), max(2, warmup // 4))
    return result


PLAN = dict(iterations=4, candidates=500, horizon=12, top_k=50)


def measure_plan(client, iters: int, warmup: int) -> dict[str, float]:
    noise = np.random.default_rng(0).standard_normal(
        (PLAN["iterations"], 1, PLAN["candidates"], PLAN["horizon"], client.action_dim)
    ).astype(np.float32)
    client.reset(1)
    return percentiles(lambda: client.plan("continuous", noise, PLAN["top_k"], 0.99, -1.0, 1.0),
                       iters, warmup)


IMAGINE = dict(starts=1024, horizon=15)


def imagine_inputs(action_dim: int, groups: int, classes: int) -> tuple:
    rng = np.random.default_rng(0)
    b, t = IMAGINE["starts"], IMAGINE["horizon"]
    return (rng.uniform(-1, 1, (b, t, action_dim)).astype(np.float32),
            rng.uniform(0.01, 0.99, (b, t, groups, classes)).astype(np.float32))


def measure_imagine(client, iters: int, warmup: int) -> dict[str, float]:
    """One ``imagine_noise`` call of 1024 starts x 15 steps through the client."""
    actions, noise = imagine_inputs(client.action_dim, client.groups, client.classes)
    client.reset(IMAGINE["starts"])
    return percentiles(lambda: client.imagine(actions, noise=noise), iters, warmup)


def measure_keras_imagine(config: dict, iters: int, warmup: int) -> dict[str, float]:
    """What the ``imagine_noise`` signature computes (states, then both heads), as one
    XLA-compiled function of a Keras model of the export's sizes."""
    import tensorflow as tf

    from rssm_tf import RssmConfig, WorldModel

    rssm = WorldModel(RssmConfig.from_dict(config)).rssm
    c = rssm.config
    actions, noise = imagine_inputs(c.action_dim, c.n_categories, c.n_classes)
    start = rssm.initial_state(IMAGINE["starts"])

    @tf.function(jit_compile=True)
    def imagine(actions, noise):
        states, _ = rssm.imagine(start, actions, noise=noise)
        return states, rssm.predict(states.h, states.z)

    return percentiles(lambda: tf.nest.map_structure(lambda x: x.numpy(),
                                                     imagine(actions, noise)), iters, warmup)


def measure_keras_plan(config: dict, iters: int, warmup: int) -> dict[str, float]:
    """The Keras ``Planner`` (one XLA call per plan) on a model of the export's sizes."""
    from rssm_tf import RssmConfig, WorldModel
    from rssm_tf.planning import Planner

    planner = Planner(WorldModel(RssmConfig.from_dict(config)), **PLAN)
    planner.reset(1)
    return percentiles(planner.plan, iters, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default=None, help="an export directory")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rest-url", default=None, help="a real TF Serving REST URL")
    parser.add_argument("--grpc-target", default=None, help="a real TF Serving gRPC target")
    parser.add_argument("--json", default=None,
                        help="JSON path (default benchmarks/results/serving_latency*.json)")
    parser.add_argument("--imagine-only", action="store_true",
                        help="only imagine 1024 x 15 (ONNX Runtime, OpenVINO, "
                        "SavedModel, Keras XLA)")
    parser.add_argument("--plan-only", action="store_true",
                        help="only the planning step (ONNX Runtime, OpenVINO, "
                        "SavedModel, Keras XLA)")
    args = parser.parse_args()
    command = "python benchmarks/serving_latency.py " + " ".join(sys.argv[1:])

    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.standin import StandInServer

    tmp = tempfile.TemporaryDirectory()
    export_dir = Path(args.export) if args.export else export_seed_model(Path(tmp.name))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    plan_iters, plan_warmup = max(10, args.iters // 10), max(2, args.warmup // 10)
    if args.imagine_only or args.plan_only:
        if args.imagine_only:
            label, settings = "imagine 1024 x 15", {"imagine": IMAGINE}
            measure_one, measure_keras = measure_imagine, measure_keras_imagine
            iters, warmup = max(5, args.iters // 20), max(2, args.warmup // 10)
        else:
            label, settings = "plan N500 H12 I4", {"plan": PLAN}
            measure_one, measure_keras = measure_plan, measure_keras_plan
            iters, warmup = plan_iters, plan_warmup
        results = {name: measure_one(WorldModelClient.from_export(export_dir, name),
                                     iters, warmup)
                   for name in ("onnx", "openvino", "savedmodel")}
        results["keras_xla"] = measure_keras(manifest["config"], iters, warmup)
        for name, r in results.items():
            print(f"{label} {name:<11} p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
        report = {"config": manifest["config"], **settings, "results": results,
                  "command": command}
        table = markdown_table(["backend", "p50 ms", "p99 ms"],
                               [[name, round(r["p50_ms"], 1), round(r["p99_ms"], 1)]
                                for name, r in results.items()])
        which = "imagine" if args.imagine_only else "plan"
        write_results(f"serving_latency_{which}", f"Latency: {label}, batch 1", report,
                      table, json_path=args.json)
        return 0
    server = None
    if not (args.rest_url and args.grpc_target):
        server = StandInServer(export_dir / "saved_model" / manifest["name"],
                               name=manifest["name"]).start()
    rest_url = args.rest_url or server.rest_url
    grpc_target = args.grpc_target or server.grpc_target
    clients = {"onnx": WorldModelClient.from_export(export_dir, "onnx"),
               **{name: WorldModelClient.from_export(export_dir, name)
                  for name in ("onnx_int8", "litert_int8") if manifest.get(name)},
               "openvino": WorldModelClient.from_export(export_dir, "openvino"),
               "litert": WorldModelClient.from_export(export_dir, "litert"),
               "savedmodel": WorldModelClient.from_export(export_dir, "savedmodel"),
               "rest": WorldModelClient.from_export(export_dir, "rest", url=rest_url),
               "grpc": WorldModelClient.from_export(export_dir, "grpc", target=grpc_target)}
    results = {name: measure(client, args.iters, args.warmup) for name, client in clients.items()}
    for name, client in clients.items():  # LiteRT has no planner
        if not name.startswith("litert"):
            results[name]["plan_b1"] = measure_plan(client, plan_iters, plan_warmup)
    results["keras_xla"] = {"plan_b1": measure_keras_plan(manifest["config"], plan_iters,
                                                          plan_warmup)}
    if server is not None:
        server.stop()

    ratio = results["savedmodel"]["observe_b1"]["p50_ms"] / results["onnx"]["observe_b1"]["p50_ms"]
    report = {"config": manifest["config"], "iters": args.iters,
              "servers": "stand-in" if server else "given", "results": results,
              "onnx_vs_savedmodel_observe_b1_p50": ratio,
              "targets": {"onnx_observe_b1_p50_under_1ms":
                          results["onnx"]["observe_b1"]["p50_ms"] < 1.0,
                          "onnx_3x_faster_than_savedmodel": ratio >= 3.0}}
    print(f"{'backend':<11} {'observe b1 p50/p99':>20} {'observe b64 p50/p99':>21} "
          f"{'imagine15 p50/p99':>19}   (ms)")
    print(f"{'':>11} {'plan (N500 H12 I4) p50/p99':>28}")
    for name, r in results.items():
        cells = [f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}" if k in r else "-"
                 for k in ("observe_b1", "observe_b64", "imagine15_b1", "plan_b1")]
        print(f"{name:<11} {cells[0]:>20} {cells[1]:>21} {cells[2]:>19} {cells[3]:>20}")
    print(f"ONNX Runtime observe b1 is {ratio:.1f}x faster than the local SavedModel")
    notes = (f"ONNX Runtime's observe at batch 1 is {ratio:.1f}x faster than the "
             "SavedModel in-process.")
    for name in ("onnx", "litert"):
        if f"{name}_int8" in results:
            fast = {k: results[name][k]["p50_ms"] / results[f"{name}_int8"][k]["p50_ms"]
                    for k in ("observe_b1", "observe_b64", "imagine15_b1")}
            report[f"{name}_over_{name}_int8_p50"] = fast
            notes += (f" {name}_int8 against {name} (p50): observe b1 "
                      f"{fast['observe_b1']:.2f}x, b64 {fast['observe_b64']:.2f}x, imagine 15 "
                      f"{fast['imagine15_b1']:.2f}x faster.")
    if "onnx_int8" in results or "litert_int8" in results:
        notes += " The 8-bit-weight files' accuracy cost: benchmarks/int8.py."
    print(notes)
    report["command"] = command
    table = markdown_table(
        ["backend", "observe b1 p50 / p99 ms", "observe b64", "imagine 15", "plan N500 H12 I4"],
        [[name] + [f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}" if k in r else "-"
                   for k in ("observe_b1", "observe_b64", "imagine15_b1", "plan_b1")]
         for name, r in results.items()])
    write_results("serving_latency", "Serving latency", report, table, notes,
                  json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
