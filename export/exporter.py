"""From a trained ``.keras`` world model to a served tree::

    OUT/saved_model/NAME/VERSION/   SavedModel (tensorflow_model_server's layout)
    OUT/onnx/<signature>.onnx       one ONNX file per signature but initial_state
    OUT/litert/<signature>.tflite   with ``litert``: the step signatures for LiteRT
    OUT/onnx_int8/<signature>.onnx  with ``int8``: the ONNX files with 8-bit weights
    OUT/litert_int8/<sig>.tflite    with ``int8`` and ``litert``: LiteRT's, the same way
    OUT/manifest.json               config, signatures, versions, file hashes
    OUT/parity.json                 the parity report (see rssm_tf_export.parity)

The version directory is written under a hidden temporary name and renamed when
complete, so a server polling ``OUT/saved_model/NAME`` never sees half a version; an
existing version is never overwritten. ONNX files, the manifest and the report are
each written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import tensorflow as tf
from rssm_tf_export.int8 import quantize_onnx, quantized_products
from rssm_tf_export.module import ACTOR_SIGNATURES, SIGNATURES, InferenceModule
from rssm_tf_export.parity import format_table, openvino_available, parity_report
from rssm_tf_export.tf2onnx_batch import MARK
from rssm_tf_serving.backends import expected_load_notes_dropped, load_saved_model

from rssm_tf.atomic import atomic_path, write_atomic
from rssm_tf.saving import load_world_model
from rssm_tf.world_model import WorldModel

OPSET = 17
# manifest.json's layout; rssm_tf_serving.client refuses a newer one by name.
MANIFEST_FORMAT = 1
ONNX_SIGNATURES = tuple(s for s in SIGNATURES if s != "initial_state")
# LiteRT: the reproducible step signatures and the heads. The sampled twins need a
# random op and imagine a scan over a dynamic batch, which LiteRT's converter cannot
# lower to builtin ops; the LiteRT backend composes them from these files.
LITERT_SIGNATURES = ("obs_step_noise", "obs_step_mode", "imagine_step_noise",
                     "imagine_step_mode", "predict")
#: a Dreamer's, beside those: the reproducible acting steps
LITERT_ACTOR_SIGNATURES = ("act_noise", "act_mode")


def export_signatures(module: InferenceModule) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ONNX, LiteRT) signatures of ``module``'s model: :data:`ONNX_SIGNATURES` and
    :data:`LITERT_SIGNATURES`, with the actor's for a Dreamer."""
    if module.actor is None:
        return ONNX_SIGNATURES, LITERT_SIGNATURES
    return ONNX_SIGNATURES + ACTOR_SIGNATURES, LITERT_SIGNATURES + LITERT_ACTOR_SIGNATURES


def actor_manifest(model: WorldModel) -> dict[str, Any] | None:
    """What a client needs to act with a Dreamer's export: the action kind, the
    noise ``act_noise`` takes and the continuous bounds (None for a world model)."""
    if getattr(model, "actor", None) is None:
        return None
    discrete = model.behavior.discrete
    return {"discrete": discrete, "noise": "uniform" if discrete else "normal",
            "action_low": model.action_low, "action_high": model.action_high}


class ExportError(RuntimeError):
    """The export could not be completed; the message says which step and why."""


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ExportError(f"--out {out}: the output directory is not writable "
                          f"({error.strerror or error})") from None


def next_version(model_dir: Path) -> int:
    """1 + the largest numeric version under ``model_dir`` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_version(module: InferenceModule, model_dir: Path, version: int) -> Path:
    """Writes the SavedModel to ``model_dir/.tmp-VERSION-*`` and renames it."""
    target = model_dir / str(version)
    if target.exists():
        raise ExportError(f"version {version} already exists at {target}; versions are "
                          "never overwritten (omit --version for the next number)")
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        # An exported model serves: its custom gradients (the image norms' backward is
        # XLA-compiled, which TF Serving does not run by default) are left out.
        tf.saved_model.save(module, str(tmp), signatures=module.signatures(),
                            options=tf.saved_model.SaveOptions(
                                experimental_custom_gradients=False))
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def convert_onnx(saved_model: Path, onnx_dir: Path, signatures: tuple[str, ...] = ONNX_SIGNATURES,
                 workers: int = 2) -> list[Path]:
    """Converts each signature as ``python -m tf2onnx.convert --saved-model ...
    --signature_def NAME`` does, into a temporary file renamed to ``onnx_dir/NAME.onnx``
    once every signature has converted. ``workers`` processes share the signatures
    (:mod:`rssm_tf_export.tf2onnx_batch`: TensorFlow is imported once per process, not
    once per signature)."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    groups = [signatures[i::workers] for i in range(workers) if signatures[i::workers]]

    def run(group: tuple[str, ...], temps: list[Path]) -> None:
        command = [sys.executable, "-m", "rssm_tf_export.tf2onnx_batch", str(saved_model),
                   str(OPSET)] + [f"{name}={tmp}" for name, tmp in zip(group, temps)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=600 * len(group))
        if proc.returncode != 0:
            started = [line[len(MARK):] for line in proc.stderr.splitlines()
                       if line.startswith(MARK)]
            name = started[-1] if started else group[0]
            raise ExportError(f"tf2onnx failed on signature {name}:\n{proc.stderr[-3000:]}")

    targets = [onnx_dir / f"{name}.onnx" for name in signatures]
    with ExitStack() as stack:  # every temporary file is renamed, or none
        temps = dict(zip(signatures, (stack.enter_context(atomic_path(t, suffix=".onnx"))
                                      for t in targets)))
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            for done in [pool.submit(run, g, [temps[n] for n in g]) for g in groups]:
                done.result()
    return targets


def convert_litert(saved_model: Path, litert_dir: Path,
                   signatures: tuple[str, ...] = LITERT_SIGNATURES,
                   int8_dir: Path | None = None) -> list[Path]:
    """Converts each signature with ``tf.lite.TFLiteConverter.from_saved_model`` (builtin
    ops only, float32) into ``litert_dir/NAME.tflite`` (atomically). With ``int8_dir``
    the same converter converts it again with its dynamic-range quantization
    (``tf.lite.Optimize.DEFAULT``: the weights of the products stored as int8, per output
    channel, the activations quantized at run time; the rest stays float32) into
    ``int8_dir/NAME.tflite``: the same bytes as a fresh converter's, without loading the
    SavedModel twice. The converter restores the variables the way TF Serving does, so
    an export whose weights are not tracked would give a weightless model here."""
    written = []
    for name in signatures:
        try:
            with expected_load_notes_dropped():  # the converter loads the SavedModel
                converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                                     signature_keys=[name])
                files = [(litert_dir, converter.convert())]
                if int8_dir is not None:
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    files.append((int8_dir, converter.convert()))
        except Exception as error:  # the converter raises ConverterError and others
            raise ExportError(f"LiteRT conversion failed on signature {name}: "
                              f"{str(error)[-3000:]}") from None
        for directory, data in files:
            written.append(write_atomic(directory / f"{name}.tflite", data))
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_signatures(saved_model: Path) -> dict[str, Any]:
    """Input and output names, shapes and dtypes of each signature, as loaded."""
    loaded = load_saved_model(saved_model)
    out = {}
    for name, fn in sorted(loaded.signatures.items()):
        inputs = fn.structured_input_signature[1]
        out[name] = {
            "inputs": {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name}
                       for k, v in sorted(inputs.items())},
            "outputs": {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name}
                        for k, v in sorted(fn.structured_outputs.items())},
        }
    return out


def float32_copy(model: WorldModel) -> WorldModel:
    """``model`` itself when it computes in float32, else a float32 twin with the same
    weights. The serving contract is float32 (docs/design.md section 6), a mixed-precision
    model's variables are float32 already, and tf2onnx cannot convert bfloat16
    arithmetic; so a model trained under ``mixed_bfloat16``/``mixed_float16`` is served
    at full precision (``manifest.json`` records the training policy)."""
    if model.dtype_policy.name == "float32":
        return model
    twin = type(model).from_config({**model.get_config(), "dtype": "float32"})
    twin.set_weights(model.get_weights())
    return twin


def export_model(model_path: str | os.PathLike, out: str | os.PathLike, name: str = "rssm",
                 version: int | None = None, onnx: bool = True, parity: bool = True,
                 verbose: bool = True, litert: bool = False,
                 int8: bool = False) -> dict[str, Any]:
    """Exports ``model_path`` into ``out``; returns the manifest (with the parity
    result under ``parity`` when computed). ``litert`` also writes
    ``OUT/litert/<signature>.tflite`` (:data:`LITERT_SIGNATURES`), ``int8``
    ``OUT/onnx_int8/<signature>.onnx`` (:mod:`rssm_tf_export.int8`) and with ``litert``
    ``OUT/litert_int8/<signature>.tflite`` (:func:`convert_litert`): files with 8-bit
    weights that are not in the parity report, whose 1e-5 they do not meet by design.
    Raises :class:`ExportError` or ``rssm_tf.saving.ModelFileError`` with a message
    naming the problem."""
    out = Path(out)
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ExportError(f"--name must be letters, digits, '-' or '_', got {name!r}")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"--version must be a positive integer, got {version!r}")
    if int8 and not onnx:
        raise ExportError("--int8 quantizes the ONNX files: it cannot go with --no-onnx")
    model = load_world_model(model_path, compile=False)
    trained_policy = model.dtype_policy.name
    model = float32_copy(model)
    _check_writable(out)
    module = InferenceModule(model)
    onnx_signatures, litert_signatures = export_signatures(module)
    model_dir = out / "saved_model" / name
    version = version or next_version(model_dir)
    log = print if verbose else (lambda *a, **k: None)
    log(f"export: writing SavedModel version {version} to {model_dir}")
    saved = save_version(module, model_dir, version)
    files: dict[str, str] = {}

    def record(paths: list[Path]) -> None:
        files.update({str(p.relative_to(out)): _sha256(p) for p in paths})

    record([p for p in sorted(saved.rglob("*")) if p.is_file()])
    onnx_dir = out / "onnx" if onnx else None
    litert_dir = out / "litert" if litert else None
    if onnx:
        log(f"export: converting {len(onnx_signatures)} signatures to ONNX (opset {OPSET})")
    if litert:
        log(f"export: converting {len(litert_signatures)} signatures to LiteRT"
            + (" (float32 and 8-bit weights)" if int8 else ""))
    # at once: tf2onnx runs in worker processes, the LiteRT converter in this one
    litert_int8_dir = out / "litert_int8" if litert and int8 else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(convert_onnx, saved, onnx_dir, onnx_signatures)] if onnx else []
        if litert:
            jobs.append(pool.submit(convert_litert, saved, litert_dir, litert_signatures,
                                    litert_int8_dir))
        for job in jobs:
            record(job.result())
    int8_dir = out / "onnx_int8" if int8 else None
    if int8:
        log(f"export: quantizing {len(onnx_signatures)} ONNX files to 8-bit weights")
        record(quantize_onnx(onnx_dir, int8_dir, onnx_signatures))
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "name": name, "version": version, "saved_model": str(saved.relative_to(out)),
        "config": model.config.to_dict(), "twohot": model.twohot.get_config(),
        # the observation inputs of obs_step and outputs of decode, one per key
        "obs_space": model.config.space.manifest(),
        "trained_dtype_policy": trained_policy,
        "signatures": describe_signatures(saved),
        "actor": actor_manifest(model),
        "onnx": {"opset": OPSET, "files": [f"onnx/{s}.onnx" for s in onnx_signatures]}
        if onnx else None,
        "litert": {"files": [f"litert/{s}.tflite" for s in litert_signatures]}
        if litert else None,
        "onnx_int8": {"weights": "uint8", "files": [f"onnx_int8/{s}.onnx"
                                                    for s in onnx_signatures],
                      "quantized_products": {
                          s: quantized_products(int8_dir / f"{s}.onnx")
                          for s in onnx_signatures}} if int8 else None,
        "litert_int8": {"weights": "int8", "files": [f"litert_int8/{s}.tflite"
                                                     for s in litert_signatures]}
        if litert_int8_dir else None,
        "versions": {p: _version_of(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx",
                                                 "onnxruntime", "openvino", "ai-edge-litert",
                                                 "rssm-tf")},
        "files": files,
    }
    if parity:
        log("export: checking parity (eager, tf.function, XLA, SavedModel in fresh "
            "processes by tf.saved_model.load and by TF Serving's session loader"
            + (", ONNX Runtime" if onnx else "")
            + (", OpenVINO" if onnx and openvino_available() else "")
            + (", LiteRT" if litert else "") + ")")
        report = parity_report(module, saved, onnx_dir, litert_dir=litert_dir)
        write_json(out / "parity.json", report)
        log(format_table(report))
        manifest["parity"] = {"passed": report["passed"], "tolerance": report["tolerance"],
                              "max_abs_diff": {k: v["max_abs_diff"]
                                               for k, v in report["backends"].items()},
                              "max_scaled_diff": {k: v["max_scaled_diff"]
                                                  for k, v in report["backends"].items()},
                              "chain_tolerance": report["chain_tolerance"],
                              "chain_drift": {k: v["chain_drift"]
                                              for k, v in report["backends"].items()}}
    write_json(out / "manifest.json", manifest)
    log(f"export: done: {saved}" + (f", {onnx_dir}" if onnx_dir else "")
        + (f", {litert_dir}" if litert_dir else "") + (f", {int8_dir}" if int8 else "")
        + (f", {litert_int8_dir}" if litert_int8_dir else ""))
    return manifest
