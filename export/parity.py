"""The parity report: the same cases through every way the model can run.

Backends: ``eager`` (the Keras model's own code, op by op; the reference),
``function`` (``tf.function``), ``xla`` (``jit_compile=True``), ``savedmodel`` (the
exported SavedModel reloaded by ``tf.saved_model.load`` in a fresh process that does
not import ``rssm_tf``), ``savedmodel_session`` (the same, loaded as TF Serving loads
it: a TF1 session restoring the variables, tensors by SignatureDef names), ``onnx``
(ONNX Runtime on the exported files), ``openvino`` (OpenVINO's CPU plugin on the same
files, when ``openvino`` is installed) and ``litert`` (the LiteRT interpreter). For each
backend and case it records the largest absolute difference of every continuous output
from the reference and whether every ``z`` is identical; the report passes when all
``z`` match and every difference is within the tolerance: ``|diff| <= 1e-5 * max(1, |reference|)``.

Rollouts run twice. Free-running (``rollout_*``), each backend feeds its own outputs
back as a deployed client does: ``z`` must stay identical, but the continuous outputs
carry each step's rounding into the next, and through an actor's continuous
``action_next`` fed back as the next action this compounds (tf.function against eager,
the same kernels, reached 9.5e-6 after 8 steps of a trained Pendulum agent), so they are
held to ``CHAIN_TOLERANCE`` 1e-4. Per step (``rollout_*_per_step``), every step starts
from the reference's own carry, and is held to 1e-5 like every single call.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from rssm_tf_export.module import InferenceModule
from rssm_tf_export.runner import (
    PER_STEP,
    Call,
    litert_cases,
    load_arrays,
    make_cases,
    per_step_cases,
    run_all,
    save_cases,
)
from rssm_tf_serving.backends import LiteRtBackend, OnnxBackend, OpenVinoBackend

TOLERANCE = 1e-5
CHAIN_TOLERANCE = 1e-4
Z_KEYS = ("z_next", "z_seq")


def _tf_call(module: InferenceModule, mode: str) -> Call:
    cache: dict[str, Any] = {}

    def call(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in cache:
            fn, _ = module.function(name)
            cache[name] = fn if mode == "eager" else tf.function(
                fn, jit_compile=(mode == "xla"), autograph=False)
        out = cache[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    return call


def onnx_call(onnx_dir: str | os.PathLike) -> Call:
    """Runs signature ``name`` from ``onnx_dir/name.onnx`` with ONNX Runtime."""
    return OnnxBackend(onnx_dir).call


def openvino_available() -> bool:
    """Whether OpenVINO's runtime can be imported here (the ``openvino`` extra)."""
    return importlib.util.find_spec("openvino") is not None


def litert_call(litert_dir: str | os.PathLike) -> Call:
    """Runs signature ``name`` with the LiteRT interpreter (see ``LiteRtBackend``)."""
    return LiteRtBackend(litert_dir).call


def savedmodel_in_fresh_process(saved_model_dir: str | os.PathLike,
                                cases: dict[str, dict], loader: str = "session"
                                ) -> tuple[dict, dict]:
    """Runs ``cases`` through ``python -m rssm_tf_export.savedmodel_check --loader LOADER``
    (``session``: TF Serving's way; ``tf2``: ``tf.saved_model.load``); returns the
    outputs and the process facts (signatures seen, whether rssm_tf was imported)."""
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = Path(tmp) / "cases.npz", Path(tmp) / "out.npz"
        save_cases(cases_path, cases)
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}"
               f"{os.environ.get('PYTHONPATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([sys.executable, "-m", "rssm_tf_export.savedmodel_check",
                               "--loader", loader, str(saved_model_dir), str(cases_path),
                               str(out_path)],
                              capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"the SavedModel at {saved_model_dir} failed to run in a "
                               f"fresh process ({loader} loader):\n{proc.stderr[-4000:]}")
        outputs = load_arrays(out_path)
    facts = outputs.pop("__process__")
    return outputs, {"imported_rssm_tf": bool(facts["imported_rssm_tf"]),
                     "signatures": [str(s) for s in facts["signatures"]]}


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict[str, Any]:
    """Per case: max abs difference of each continuous output, the max difference
    scaled by ``max(1, |reference|)``, and z identity.

    The pass criterion is ``|diff| <= TOLERANCE * max(1, |reference|)``: absolute 1e-5
    for values up to 1, relative beyond (a decoded reward of -10 carries float32
    rounding of ~1e-6 times its size, and symexp multiplies that by |reward| + 1);
    free-running rollouts (``rollout_*`` without ``_per_step``) are held to
    ``CHAIN_TOLERANCE`` instead and summarised apart as ``chain_drift``.
    """
    cases = {}
    for case, ref in reference.items():
        diffs, scaled, z_equal = {}, {}, True
        for key, value in ref.items():
            got = other[case][key]
            if key in Z_KEYS:
                z_equal = z_equal and bool(np.array_equal(value, got))
            elif value.size:
                error = np.abs(value - got)
                diffs[key] = float(error.max())
                scaled[key] = float((error / np.maximum(1.0, np.abs(value))).max())
        cases[case] = {"max_abs_diff": diffs, "max_scaled_diff": scaled,
                       "z_identical": z_equal}

    def worst(part: str, chains: bool) -> float:
        return max((d for name, c in cases.items() if _is_chain(name) == chains
                    for d in c[part].values()), default=0.0)

    z_all = all(c["z_identical"] for c in cases.values())
    result = {"cases": cases, "max_abs_diff": worst("max_abs_diff", False),
              "max_scaled_diff": worst("max_scaled_diff", False),
              "chain_drift": worst("max_scaled_diff", True), "z_identical": z_all}
    result["passed"] = (z_all and result["max_scaled_diff"] <= TOLERANCE
                        and result["chain_drift"] <= CHAIN_TOLERANCE)
    return result


def _is_chain(case: str) -> bool:
    """A free-running rollout: each step fed the backend's own previous outputs."""
    return case.startswith("rollout_") and not case.endswith(PER_STEP)


def parity_report(module: InferenceModule, saved_model_dir: str | os.PathLike | None,
                  onnx_dir: str | os.PathLike | None, batch: int = 4, rollout: int = 8,
                  horizon: int = 15, seed: int = 0,
                  litert_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the cases through every available backend and compares with eager."""
    c = module.config
    dims = {k: getattr(c, k) for k in ("deterministic_size", "n_categories", "n_classes",
                                       "action_dim")}
    dims["obs_space"] = c.space.manifest()
    if module.actor is not None:
        dims["actor"] = "discrete" if module.actor.behavior.discrete else "continuous"
    cases = make_cases(dims, batch, rollout, horizon, seed)
    eager = _tf_call(module, "eager")
    # the per-step cases start every step from the reference's rollouts (a few steps)
    reference = run_all(eager, {n: c for n, c in cases.items() if "steps" in c})
    cases.update(per_step_cases(cases, reference))
    loaders = (("savedmodel", "tf2"), ("savedmodel_session", "session"))
    with ThreadPoolExecutor(max_workers=len(loaders)) as pool:
        # the fresh processes start first and run while this one computes
        fresh = {row: pool.submit(savedmodel_in_fresh_process, saved_model_dir, cases, loader)
                 for row, loader in loaders} if saved_model_dir is not None else {}
        reference.update(run_all(eager, {n: c for n, c in cases.items()
                                         if n not in reference}))
        report: dict[str, Any] = {"tolerance": TOLERANCE, "chain_tolerance": CHAIN_TOLERANCE,
                                  "reference": "eager",
                                  "batch": batch, "rollout_steps": rollout, "horizon": horizon,
                                  "cases": {name: case["signature"]
                                            for name, case in cases.items()},
                                  "backends": {}}
        for mode in ("function", "xla"):
            report["backends"][mode] = compare(reference, run_all(_tf_call(module, mode), cases))
        for row, job in fresh.items():
            outputs, facts = job.result()
            result = compare(reference, outputs)
            result.update(facts)
            result["passed"] = result["passed"] and not facts["imported_rssm_tf"]
            report["backends"][row] = result
    if onnx_dir is not None:
        report["backends"]["onnx"] = compare(reference, run_all(onnx_call(onnx_dir), cases))
        if openvino_available():
            report["backends"]["openvino"] = compare(
                reference, run_all(OpenVinoBackend(onnx_dir).call, cases))
    if litert_dir is not None:  # LiteRT has no planner (it cannot lower the loops)
        steps = litert_cases(cases)
        report["backends"]["litert"] = compare(
            {n: reference[n] for n in steps}, run_all(litert_call(litert_dir), steps))
    report["passed"] = all(b["passed"] for b in report["backends"].values())
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per backend."""
    lines = [f"parity against the Keras model (eager); |diff| <= {report['tolerance']:g} * "
             "max(1, |value|) per call and per step, "
             f"{report['chain_tolerance']:g} along free-running rollouts; "
             f"batch {report['batch']}, rollout {report['rollout_steps']} steps, "
             f"imagine {report['horizon']} steps",
             f"{'backend':<18} {'max |diff|':>11} {'scaled':>9} {'chain drift':>12} "
             f"{'z identical':>12} {'result':>7}"]
    for name, result in report["backends"].items():
        lines.append(f"{name:<18} {result['max_abs_diff']:>11.3g} "
                     f"{result['max_scaled_diff']:>9.3g} {result['chain_drift']:>12.3g} "
                     f"{str(result['z_identical']):>12} "
                     f"{'ok' if result['passed'] else 'FAIL':>7}")
    lines.append("parity: " + ("passed" if report["passed"] else "FAILED"))
    return "\n".join(lines)
