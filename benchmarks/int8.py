"""The accuracy cost of the 8-bit-weight files (``export --litert --int8``: ONNX and
LiteRT): open-loop prediction on held-out episodes, float32 files against int8 ones,
and the step's latency at batch 1.

A trained world model and its held-out episodes come from a run of the main example
(``OUT/<run>/model.keras`` and ``OUT/<run>/data/test``). The model is exported with
``--litert --int8`` (no parity report: the float files' parity is the exporter's own
test); then, on every non-overlapping window of ``context + horizon`` steps, each set
of files observes ``context`` steps (``obs_step_mode``, from the zero state and
action), imagines ``horizon`` steps with the recorded actions (``imagine_mode``; on
LiteRT composed step by step by its backend) and decodes them (``decode``; LiteRT has
no decoder file, so its imagined states are decoded by the float32 ONNX file), as
``WorldModel.open_loop`` does in Keras. Reported per observation key and for the
reward: the mean squared error against the episodes at each horizon step for Keras
and each set of files, beside the mean predictor's, and how often each int8 set's
imagined ``z`` equals its float32 set's.

    python benchmarks/int8.py --run out/Pendulum-v1 [--export DIR]
                              [--context 5] [--horizon 15] [--iters 1000]

Writes ``benchmarks/results/int8.json`` and ``.md`` (see ``results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, write_results  # noqa: E402,I001

import numpy as np  # noqa: E402


def held_out_windows(directory: Path, keys: tuple[str, ...], span: int) -> dict[str, np.ndarray]:
    """Every non-overlapping ``span``-step window of the episodes in ``directory``,
    stacked: ``{key: [N, span, ...]}``."""
    from rssm_tf.episodes import load_episode

    episodes = [load_episode(p) for p in sorted(directory.glob("*.npz"))]
    windows = [{k: ep[k][s:s + span] for k in keys} for ep in episodes
               for s in range(0, len(ep["action"]) - span + 1, span)]
    if not windows:
        raise SystemExit(f"{directory}: no episode has context + horizon = {span} steps")
    return {k: np.stack([w[k] for w in windows]) for k in keys}


def exported_open_loop(backend: Any, decoder: Any, manifest: dict,
                       data: dict[str, np.ndarray], context: int, horizon: int
                       ) -> dict[str, np.ndarray]:
    """``WorldModel.open_loop`` from the exported files of ``backend`` (``decoder``
    runs ``decode``): per observation key the decoded imagination [N, horizon, ...],
    ``reward`` [N, horizon] and ``z`` (the imagined latents)."""
    signatures = manifest["signatures"]
    n = len(data["action"])
    h = np.zeros([n] + signatures["obs_step_mode"]["inputs"]["h"]["shape"][1:], np.float32)
    z = np.zeros([n] + signatures["obs_step_mode"]["inputs"]["z"]["shape"][1:], np.float32)
    obs_keys = list(manifest["obs_space"])
    for t in range(context):  # the window's first step: zero state, zero action
        action = data["action"][:, t].astype(np.float32) * (t > 0)
        inputs = {"h": h, "z": z, "action": action}
        inputs.update({k: data[k][:, t].astype(manifest["obs_space"][k]["dtype"])
                       for k in obs_keys})
        out = backend.call("obs_step_mode", inputs)
        h, z = out["h_next"], out["z_next"]
    actions = data["action"][:, context:context + horizon].astype(np.float32)
    dream = backend.call("imagine_mode", {"h": h, "z": z, "actions": actions})
    hs, zs = dream["h_seq"], dream["z_seq"]
    decoded = decoder.call("decode", {"h": hs.reshape(n * horizon, -1),
                                      "z": zs.reshape(n * horizon, -1)})
    result = {k: v.reshape((n, horizon) + v.shape[1:]) for k, v in decoded.items()}
    return {**result, "reward": dream["reward"], "z": zs}


def step_latency(backend: Any, manifest: dict, iters: int) -> float:
    """p50 ms of ``obs_step_mode`` at batch 1."""
    rng = np.random.default_rng(0)
    inputs = {}
    for name, spec in manifest["signatures"]["obs_step_mode"]["inputs"].items():
        inputs[name] = (0.5 * rng.standard_normal([1] + spec["shape"][1:])).astype(spec["dtype"])
    for _ in range(max(10, iters // 20)):
        backend.call("obs_step_mode", inputs)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        backend.call("obs_step_mode", inputs)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True,
                        help="a main-example run: RUN/model.keras and RUN/data/test")
    parser.add_argument("--export", default=None,
                        help="an export of RUN/model.keras made with --litert --int8, or "
                             "where to "
                             "make it (default: a temporary directory)")
    parser.add_argument("--context", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--iters", type=int, default=1000, help="latency calls per round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for name in ("context", "horizon", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    run = Path(args.run)
    if not (run / "model.keras").is_file() or not (run / "data" / "test").is_dir():
        parser.error(f"--run {run}: expected {run}/model.keras and {run}/data/test/")

    from rssm_tf_export.exporter import export_model
    from rssm_tf_serving.backends import LiteRtBackend, OnnxBackend

    from rssm_tf.saving import load_world_model

    tmp = tempfile.TemporaryDirectory()
    export = Path(args.export) if args.export else Path(tmp.name) / "export"
    if not (export / "manifest.json").is_file():
        export_model(run / "model.keras", export, parity=False, litert=True, int8=True)
    manifest = json.loads((export / "manifest.json").read_text())
    if not (manifest.get("onnx_int8") and manifest.get("litert_int8")):
        parser.error(f"--export {export}: made without --litert --int8")

    model = load_world_model(run / "model.keras", compile=False)
    space = model.config.space
    keys = model.config.obs_keys
    data = held_out_windows(run / "data" / "test", model.batch_keys,
                            args.context + args.horizon)
    c, horizon = args.context, args.horizon
    first = np.zeros(data["action"].shape[:2], np.float32)
    first[:, 0] = 1.0
    keras_pred = model.open_loop({k: data[k] for k in keys}, data["action"], first, c, horizon)
    predictions = {"keras": {k: keras_pred[k].numpy() for k in keys + ("reward",)}}
    backends = {"onnx": OnnxBackend(export / "onnx"),
                "onnx_int8": OnnxBackend(export / "onnx_int8"),
                "litert": LiteRtBackend(export / "litert"),
                "litert_int8": LiteRtBackend(export / "litert_int8")}
    for name, backend in backends.items():
        decoder = backend if name.startswith("onnx") else backends["onnx"]
        predictions[name] = exported_open_loop(backend, decoder, manifest, data, c, horizon)

    def unit(key: str, raw: np.ndarray) -> np.ndarray:  # as evaluate_open_loop measures
        return space[key].to_unit(raw) if key in space else raw.astype(np.float64)

    truth = {k: unit(k, data[k][:, c:]) for k in keys + ("reward",)}
    steps = {k: unit(k, np.concatenate(list(data[k]))) for k in keys + ("reward",)}
    report: dict[str, Any] = {"run": str(run), "windows": len(data["action"]),
                              "context": c, "horizon": horizon,
                              "onnx_quantized_products":
                                  manifest["onnx_int8"]["quantized_products"],
                              "mse": {}, "command": "python benchmarks/int8.py "
                              + " ".join(sys.argv[1:])}
    rows = []
    for key in keys + ("reward",):
        axes = tuple(range(2, truth[key].ndim))
        mean = ((steps[key].mean(0) - truth[key]) ** 2).mean(axes).mean(0)
        per = {"mean_predictor": mean.tolist()}
        for name, pred in predictions.items():
            per[name] = ((pred[key] - truth[key]) ** 2).mean(axes).mean(0).tolist()
        report["mse"][key] = per
        for step in sorted({0, horizon // 3 - 1, 2 * horizon // 3 - 1, horizon - 1}):
            rows.append([key, step + 1] + [round(per[n][step], 5) for n in (
                "keras", "onnx", "onnx_int8", "litert", "litert_int8", "mean_predictor")])
    float_vs_keras = {name: max(float(np.abs(predictions[name][k] - predictions["keras"][k])
                                      .max()) for k in keys + ("reward",))
                      for name in ("onnx", "litert")}
    same_z = {name: float(np.mean(np.all(predictions[name]["z"]
                                         == predictions[f"{name}_int8"]["z"], axis=-1)))
              for name in ("onnx", "litert")}
    report["float32_files_vs_keras_max_abs"] = float_vs_keras
    report["imagined_z_equal_fraction"] = same_z

    rounds = []
    for _ in range(3):  # alternating, so both see the same machine
        rounds.append({name: step_latency(b, manifest, args.iters)
                       for name, b in backends.items()})
    report["obs_step_b1_p50_ms"] = rounds
    speed = {name: float(np.median([r[name] / r[f"{name}_int8"] for r in rounds]))
             for name in ("onnx", "litert")}
    report["obs_step_b1_speedup"] = speed
    notes = (f"{report['windows']} held-out windows of {run} (context {c}, horizon "
             f"{horizon}); errors are mean squared over the windows at that horizon step "
             f"(vectors raw, pixels in [0, 1]); LiteRT's imagined states decoded by the "
             f"float32 ONNX file. The float32 files against Keras: largest difference "
             f"{float_vs_keras['onnx']:.2g} (ONNX), {float_vs_keras['litert']:.2g} (LiteRT). "
             f"Imagined z equal between the int8 and float32 files: "
             f"{100 * same_z['onnx']:.1f}% (ONNX), {100 * same_z['litert']:.1f}% (LiteRT) "
             f"of (window, step). obs_step_mode at batch 1, p50 ms (3 alternating rounds): "
             + "; ".join(f"{name} " + ", ".join(f"{r[name]:.3f}" for r in rounds)
                         for name in backends)
             + f": int8 {speed['onnx']:.2f}x (ONNX Runtime), {speed['litert']:.2f}x "
               f"(LiteRT).")
    print(notes)
    table = markdown_table(["key", "horizon step", "Keras", "ONNX float32", "ONNX int8",
                            "LiteRT float32", "LiteRT int8", "mean predictor"], rows)
    print(table)
    write_results("int8", "8-bit-weight files: open-loop error on held-out episodes",
                  report, table, notes, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
