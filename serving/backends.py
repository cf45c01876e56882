"""The ways to run an exported world model, behind one call:
``backend.call(signature, inputs) -> outputs`` (dicts of float32 numpy arrays).

- :class:`OnnxBackend`: ONNX Runtime on ``EXPORT/onnx/<signature>.onnx``.
- :class:`OpenVinoBackend`: OpenVINO's runtime on the same ONNX files.
- :class:`LiteRtBackend`: the LiteRT interpreter on ``EXPORT/litert/<signature>.tflite``.
- :class:`SavedModelBackend`: ``tf.saved_model.load`` of a version directory.
- :class:`SessionBackend`: the SavedModel loaded the way TF Serving's C++ loader does
  (a TF1 session, variables restored by the restore op, tensors by SignatureDef names).
- :class:`RestBackend`: TF Serving's REST ``:predict`` API with ``signature_name``.
- :class:`GrpcBackend`: TF Serving's gRPC ``PredictionService`` (``tensorflow-serving-api``).

Nothing here imports ``rssm_tf``: the exported files are all a backend needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ServingError(RuntimeError):
    """The model could not be run: server unreachable, model or signature missing,
    or the server refused the request. The message says which and where."""


class Backend(Protocol):
    name: str

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


class _DropUnsavedGradientNotes(logging.Filter):
    """The export leaves the model's custom gradients out on purpose (a served model
    runs forward only), so TensorFlow's note on loading each function that held one,
    "Importing a function ... with ops with unsaved custom gradients", is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "with ops with unsaved custom gradients" not in record.getMessage()


# TensorFlow's SavedModel loader logs through absl (logger "absl"), the rest of its
# Python code through the "tensorflow" logger.
_LOADER_LOGGERS = ("absl", "tensorflow")


@contextlib.contextmanager
def expected_load_notes_dropped() -> Iterator[None]:
    """Within: the unsaved-gradient notes of loading an export are dropped (only
    those; every other log record passes)."""
    note = _DropUnsavedGradientNotes()
    for name in _LOADER_LOGGERS:
        logging.getLogger(name).addFilter(note)
    try:
        yield
    finally:
        for name in _LOADER_LOGGERS:
            logging.getLogger(name).removeFilter(note)


def load_saved_model(path: str | os.PathLike) -> Any:
    """``tf.saved_model.load(path)`` without the expected unsaved-gradient notes."""
    import tensorflow as tf

    with expected_load_notes_dropped():
        return tf.saved_model.load(str(path))


def latest_version(base: Path) -> Path:
    """``base`` itself if it is a SavedModel, else its highest numeric version."""
    if (base / "saved_model.pb").is_file():
        return base
    versions = sorted((int(p.name), p) for p in base.glob("*") if p.name.isdigit())
    if not versions:
        raise ServingError(f"{base}: no SavedModel and no numeric version directory")
    return versions[-1][1]


# ONNX Runtime's execution providers, fastest first; the CPU one is always there.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                       "OpenVINOExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], wanted: list[str] | None = None) -> list[str]:
    """``wanted`` (each must be available), or the available ones of
    :data:`PREFERRED_PROVIDERS` in that order (TensorRT, CUDA, OpenVINO, CPU)."""
    if wanted is None:
        return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]
    if isinstance(wanted, str) or not wanted:
        raise ServingError(f"providers must be a non-empty list of ONNX Runtime provider "
                           f"names, got {wanted!r}")
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ServingError(f"ONNX Runtime provider(s) {missing} are not available here; "
                           f"available: {available} (pip install \"rssm-tf[gpu]\" for "
                           "CUDA/TensorRT)")
    return list(wanted)


class _FileBackend:
    """A runtime that opens ``DIRECTORY/<signature><suffix>`` on first use, one loaded
    model per signature; subclasses say how to open a file and run it."""

    name = ""
    runtime = ""  # who loads the files, for messages
    kind, suffix, hint = "ONNX", ".onnx", "export with ONNX"  # the files

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ServingError(f"{self.directory}: no {self.kind} directory ({self.hint})")
        self.sessions: dict[str, Any] = {}

    def _open(self, path: Path) -> Any:
        raise NotImplementedError

    def _session(self, signature: str) -> Any:
        if signature not in self.sessions:
            path = self.directory / f"{signature}{self.suffix}"
            if not path.is_file():
                raise ServingError(f"signature {signature!r} has no {self.kind} file: {path}")
            try:
                self.sessions[signature] = self._open(path)
            except Exception as error:  # each runtime raises its own exception types
                raise ServingError(f"{path}: {self.runtime} cannot load it: {error}") from None
        return self.sessions[signature]


class OnnxBackend(_FileBackend):
    """ONNX Runtime sessions, one per signature file, opened on first use.

    ``threads``: intra-op threads per session; None keeps ONNX Runtime's default (one
    per core), the fastest for a single caller (batch-1 observe 0.50 ms vs 0.81 ms with
    one thread on 2 cores); set 1 when many client threads share the machine.
    ``providers``: ONNX Runtime execution providers in order of preference; None picks
    TensorRT, CUDA or OpenVINO when installed, else the CPU (:func:`choose_providers`)."""

    name = "onnx"
    runtime = "ONNX Runtime"

    def __init__(self, onnx_dir: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        super().__init__(onnx_dir)
        self._ort = ort
        self.providers = choose_providers(ort.get_available_providers(), providers)
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = threads
            self.options.inter_op_num_threads = 1

    def _open(self, path: Path) -> Any:
        return self._ort.InferenceSession(str(path), self.options, providers=self.providers)

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(signature)
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feed)))


def _signature_name(names: set[str]) -> str:
    """The signature's name among an OpenVINO tensor's names: tf2onnx names the graph's
    inputs and outputs by the signature's keys (identifiers such as ``h_seq``), and
    OpenVINO, folding the Identity before an output, adds the producer's TensorFlow
    name (``StatefulPartitionedCall/...:0``)."""
    plain = sorted(n for n in names if n.isidentifier())
    if len(plain) != 1:
        raise ServingError(f"cannot tell the signature's name among the tensor names "
                           f"{sorted(names)}")
    return plain[0]


class OpenVinoBackend(_FileBackend):
    """OpenVINO's runtime on the same ``EXPORT/onnx/<signature>.onnx`` files, compiled
    for ``device`` (``CPU``; ``GPU`` or ``NPU`` where OpenVINO has them) on first use.

    ``threads``: the CPU plugin's inference threads (None: OpenVINO's default).
    ``pip install "rssm-tf[openvino]"``."""

    name = "openvino"
    runtime = "OpenVINO"

    def __init__(self, onnx_dir: str | os.PathLike, device: str = "CPU",
                 threads: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ServingError(f"threads must be a positive integer or None, got {threads!r}")
        try:
            import openvino
        except ImportError:
            raise ServingError('the OpenVINO backend needs openvino: pip install '
                               '"rssm-tf[openvino]"') from None
        super().__init__(onnx_dir)
        self._core = openvino.Core()
        if device not in self._core.available_devices:
            raise ServingError(f"device must be one of OpenVINO's devices here "
                               f"{self._core.available_devices}, got {device!r}")
        self.device = device
        self.config = {} if threads is None else {"INFERENCE_NUM_THREADS": threads}

    def _open(self, path: Path) -> Any:
        compiled = self._core.compile_model(str(path), self.device, self.config)
        inputs = [(port, _signature_name(port.get_names())) for port in compiled.inputs]
        outputs = [(port, _signature_name(port.get_names())) for port in compiled.outputs]
        return compiled.create_infer_request(), inputs, outputs

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, ports, outputs = self._session(signature)
        results = request.infer({port: inputs[name] for port, name in ports})
        return {name: np.array(results[port]) for port, name in outputs}


class SavedModelBackend:
    """The SavedModel in-process, through its signatures only."""

    name = "savedmodel"

    def __init__(self, path: str | os.PathLike) -> None:
        import tensorflow as tf

        self._tf = tf
        self.path = latest_version(Path(path))
        try:
            self.model = load_saved_model(self.path)
        except Exception as error:  # TF raises several types for a bad directory
            raise ServingError(f"{self.path}: not a loadable SavedModel: {error}") from None
        self.signatures = self.model.signatures

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if signature not in self.signatures:
            raise ServingError(f"signature {signature!r} not found in {self.path}; it has "
                               f"{sorted(self.signatures)}")
        fn = self.signatures[signature]
        names = fn.structured_input_signature[1]
        out = fn(**{k: self._tf.constant(inputs[k]) for k in names})
        return {k: v.numpy() for k, v in out.items()}


class SessionBackend:
    """The SavedModel as ``tensorflow_model_server`` loads it.

    TF Serving does not use ``tf.saved_model.load``: it imports the MetaGraph tagged
    ``serve`` into a session, runs the saver's restore op on ``variables/`` and feeds
    and fetches tensors by the names each SignatureDef lists. A SavedModel whose
    variables are reachable only through Python object captures passes
    :class:`SavedModelBackend` and fails here, so the export is checked this way and
    the stand-in server serves this way.
    """

    name = "session"

    def __init__(self, path: str | os.PathLike, tags: tuple[str, ...] = ("serve",)) -> None:
        import tensorflow as tf

        self.path = latest_version(Path(path))
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            meta = tf.compat.v1.saved_model.loader.load(self.session, list(tags),
                                                        str(self.path))
        except Exception as error:  # TF raises several types for a bad directory
            raise ServingError(f"{self.path}: TF Serving's loader (a TF1 session) cannot "
                               f"load it: {error}") from None
        self.graph.finalize()
        self.signature_defs = {k: v for k, v in meta.signature_def.items()
                               if not k.startswith("__")}
        self.signatures = sorted(self.signature_defs)

    def input_specs(self, signature: str) -> dict[str, tuple[np.dtype, list[int | None]]]:
        """``{input name: (numpy dtype, shape with None for unknown sizes)}``."""
        from tensorflow import dtypes

        sig = self._signature(signature)
        return {k: (np.dtype(dtypes.as_dtype(t.dtype).as_numpy_dtype),
                    [d.size if d.size >= 0 else None for d in t.tensor_shape.dim])
                for k, t in sig.inputs.items()}

    def _signature(self, signature: str) -> Any:
        if signature not in self.signature_defs:
            raise ServingError(f"signature {signature!r} not found in {self.path}; it has "
                               f"{self.signatures}")
        return self.signature_defs[signature]

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = self._signature(signature)
        missing = sorted(set(sig.inputs) - set(inputs))
        if missing:
            raise ServingError(f"signature {signature!r} needs the input(s) {missing}")
        feed = {t.name: inputs[k] for k, t in sig.inputs.items()}
        fetch = {k: t.name for k, t in sig.outputs.items()}
        return self.session.run(fetch, feed)

    def close(self) -> None:
        self.session.close()


class LiteRtBackend(_FileBackend):
    """The LiteRT (TensorFlow Lite) interpreter of ``ai-edge-litert`` on
    ``EXPORT/litert/<signature>.tflite``: ``obs_step_noise``, ``obs_step_mode``,
    ``imagine_step_noise``, ``imagine_step_mode`` and ``predict``.

    A Dreamer's export adds ``act_noise`` and ``act_mode``.

    The other signatures are composed here from those files, so the client's calls
    are the same as on every backend: ``X`` (sampled) draws its uniform noise on the
    client (``seed``) and runs ``X_noise`` (``act``: the noise ``actor_noise`` names,
    "uniform" or "normal", the manifest's ``actor.noise``); ``imagine*`` runs ``imagine_step*`` and
    ``predict`` once per step (LiteRT cannot lower the scan's dynamic-size tensor
    lists). The step-by-step imagination computes what the exported ``imagine`` does.
    """

    name = "litert"
    runtime = "LiteRT"
    kind, suffix, hint = "LiteRT", ".tflite", "export with --litert"
    FILES = ("obs_step_noise", "obs_step_mode", "imagine_step_noise", "imagine_step_mode",
             "predict")

    def __init__(self, litert_dir: str | os.PathLike, threads: int | None = None,
                 seed: int | None = None, actor_noise: str | None = None) -> None:
        if actor_noise not in (None, "uniform", "normal"):
            raise ServingError(f"actor_noise must be 'uniform', 'normal' or None, got "
                               f"{actor_noise!r}")
        self.actor_noise = actor_noise
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ServingError('the LiteRT backend needs ai-edge-litert: pip install '
                               '"rssm-tf[litert]"') from None
        super().__init__(litert_dir)
        self._interpreter, self.threads = Interpreter, threads
        self.rng = np.random.default_rng(seed)

    def _open(self, path: Path) -> Any:
        interpreter = self._interpreter(model_path=str(path), num_threads=self.threads)
        return interpreter.get_signature_runner(path.stem)

    def _run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self._session(signature)
        names = runner.get_input_details()
        return {k: np.array(v) for k, v in runner(**{k: inputs[k] for k in names}).items()}

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if signature.startswith("plan_"):
            raise ServingError(f"{signature}: LiteRT has no planner (it cannot lower the "
                               "planner's loops); plan with the onnx or savedmodel backend")
        base = signature.removesuffix("_mode").removesuffix("_noise")
        if signature == "act":
            if self.actor_noise is None:
                raise ServingError("act on LiteRT draws the actor's noise here: pass "
                                   "actor_noise (the manifest's actor.noise), or call "
                                   "act_noise / act_mode")
            shape = (inputs["h"].shape[0], self._session("act_noise")
                     .get_input_details()["noise"]["shape_signature"][1])
            noise = self.rng.uniform(1e-6, 1 - 1e-6, shape) \
                if self.actor_noise == "uniform" else self.rng.standard_normal(shape)
            return self._run("act_noise", {**inputs, "noise": noise.astype(np.float32)})
        if base == signature and base in ("obs_step", "imagine_step", "imagine"):
            shape = self._noise_shape(base, inputs)
            inputs = {**inputs, "noise": self.rng.uniform(1e-6, 1 - 1e-6, shape)
                      .astype(np.float32)}
            signature = f"{base}_noise"
        if base == "imagine":
            return self._imagine(signature, inputs)
        return self._run(signature, inputs)

    def _noise_shape(self, base: str, inputs: dict[str, np.ndarray]) -> list[int]:
        details = self._session("imagine_step_noise").get_input_details()["noise"]
        groups, classes = (int(v) for v in details["shape_signature"][1:])
        lead = list(inputs["actions"].shape[:2]) if base == "imagine" else \
            [inputs["h"].shape[0]]
        return lead + [groups, classes]

    def _imagine(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        step = signature.replace("imagine", "imagine_step")
        h, z, actions = inputs["h"], inputs["z"], inputs["actions"]
        seq: dict[str, list[np.ndarray]] = {"h_seq": [], "z_seq": [], "reward": [],
                                            "continue_prob": []}
        for t in range(actions.shape[1]):
            feed = {"h": h, "z": z, "action": np.ascontiguousarray(actions[:, t])}
            if step.endswith("_noise"):
                feed["noise"] = np.ascontiguousarray(inputs["noise"][:, t])
            out = self._run(step, feed)
            h, z = out["h_next"], out["z_next"]
            now = self._run("predict", {"h": h, "z": z})
            for key, value in (("h_seq", h), ("z_seq", z), ("reward", now["reward"]),
                               ("continue_prob", now["continue_prob"])):
                seq[key].append(value)
        return {k: np.stack(v, axis=1) for k, v in seq.items()}


def _retrying(what: str, attempts: int, backoff: float, fn: Any, retry_on: tuple) -> Any:
    """Calls ``fn()``; on a ``retry_on`` error retries up to ``attempts`` times in all."""
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on as error:
            if attempt == attempts - 1:
                raise ServingError(f"cannot reach TF Serving at {what} after {attempts} "
                                   f"attempt(s): {error}") from None
            time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class _ServerBackend:
    """What the REST and gRPC clients share: the model, the version they call, and
    pinning it. ``version=None`` follows the server's newest version until
    :meth:`pin_latest` fixes one (the client does at every ``reset``); a version given
    to the constructor is kept. Every signature is a pure function of its inputs, so
    connection failures and timeouts are retried ``retries`` times with doubling
    ``backoff``."""

    def __init__(self, address: str, model: str, version: int | None, timeout: float,
                 retries: int, backoff: float) -> None:
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 1):
            raise ValueError(f"version must be a positive integer or None, got {version!r}")
        self.address, self.model, self.version = address, model, version
        self.fixed = version is not None
        self.timeout, self.attempts, self.backoff = timeout, retries + 1, backoff

    def latest_version(self) -> int:
        """The newest version the server serves now (its metadata answer's model_spec)."""
        raise NotImplementedError

    def pin_latest(self) -> int:
        """Calls go to the newest version from now on (a fixed version stays); returns it."""
        if not self.fixed:
            self.version = self.latest_version()
        return self.version

    def _refused(self, signature: str, code: str, message: str, not_found: bool) -> str:
        kind = "model or signature not found" if not_found else "request refused"
        text = f"TF Serving at {self.address} ({signature}): {kind} ({code}): {message}"
        if not_found and self.version is not None and "Specific(" in message:
            text += (f". Version {self.version} of {self.model!r}, which this client's episode "
                     "started on, is not served any more: reset() starts a new episode on "
                     "the newest version (or keep more versions with the model_version_policy)")
        return text


class RestBackend(_ServerBackend):
    """TF Serving REST: ``POST {url}/v1/models/{model}[/versions/{v}]:predict`` with
    ``signature_name`` and the inputs in columnar (``inputs``, the default) or row
    (``instances``) format; every documented answer is read: ``outputs`` (an object,
    or the bare tensor of a one-output signature) and ``predictions`` (rows of objects,
    or of values), with ``NaN``/``Infinity`` tokens. Output dtypes come from ``outputs``
    or else from the model's metadata, read once per version."""

    name = "rest"

    def __init__(self, url: str = "http://localhost:8501", model: str = "rssm",
                 version: int | None = None, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.2, request_format: str = "columnar",
                 outputs: dict[str, dict[str, str]] | None = None) -> None:
        """``outputs``: ``{signature: {output: dtype name}}`` (the export's manifest
        lists them; ``WorldModelClient.from_export`` passes them), else read from the
        server's metadata on the first call."""
        import requests

        if request_format not in ("columnar", "row"):
            raise ValueError(f"request_format must be 'columnar' or 'row', got "
                             f"{request_format!r}")
        super().__init__(url.rstrip("/"), model, version, timeout, retries, backoff)
        self._requests = requests
        self.url = self.address
        self.request_format = request_format
        self.session = requests.Session()
        self._given = None if outputs is None else {
            name: {k: np.dtype(v) for k, v in sig.items()} for name, sig in outputs.items()}
        self._outputs: dict[int | None, dict[str, dict[str, np.dtype]]] = {}

    def _path(self) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"{self.url}/v1/models/{self.model}{version}"

    @property
    def endpoint(self) -> str:
        return f"{self._path()}:predict"

    def _send(self, what: str, method: str, url: str, **kw: Any) -> Any:
        """The JSON answer of ``method url`` (connection failures and timeouts retried);
        an answer other than 200 is a :class:`ServingError` naming ``what``."""
        errors = (self._requests.ConnectionError, self._requests.Timeout)
        response = _retrying(self.url, self.attempts, self.backoff,
                             lambda: self.session.request(method, url, timeout=self.timeout,
                                                          **kw), errors)
        if response.status_code != 200:
            raise ServingError(self._refused(what, f"HTTP {response.status_code}",
                                             _error_text(response), response.status_code == 404))
        return response.json()

    def _metadata(self, pinned: bool) -> dict[str, Any]:
        path = self._path() if pinned else f"{self.url}/v1/models/{self.model}"
        return self._send("metadata", "GET", f"{path}/metadata")

    def latest_version(self) -> int:
        return int(self._metadata(pinned=False)["model_spec"]["version"])

    def signatures(self) -> dict[str, dict]:
        """The model's signatures as TF Serving reports them
        (``GET /v1/models/NAME[/versions/V]/metadata``), in the manifest's form:
        ``{name: {"inputs": {key: {"shape", "dtype"}}, "outputs": {...}}}``."""
        defs = self._metadata(pinned=True)["metadata"]["signature_def"]["signature_def"]
        return {name: {part: {key: {"dtype": _dtype_name(t["dtype"]),
                                    "shape": _json_shape(t.get("tensor_shape", {}))}
                              for key, t in sig.get(part, {}).items()}
                       for part in ("inputs", "outputs")}
                for name, sig in defs.items() if not name.startswith("__")}

    def _output_dtypes(self, signature: str) -> dict[str, np.dtype]:
        known = self._given
        if known is None:
            if self.version not in self._outputs:
                self._outputs[self.version] = {
                    name: {k: np.dtype(v["dtype"]) for k, v in sig["outputs"].items()}
                    for name, sig in self.signatures().items()}
            known = self._outputs[self.version]
        if signature not in known:
            raise ServingError(self._refused(signature, "metadata", f"signature {signature!r}"
                                             " is not in the model's metadata", True))
        return known[signature]

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lists = {k: np.asarray(v).tolist() for k, v in inputs.items()}
        if self.request_format == "row":
            sizes = {len(v) if isinstance(v, list) else None for v in lists.values()}
            if len(sizes) != 1 or None in sizes:
                raise ValueError(f"row format needs every input of {signature!r} to have the "
                                 "same first dimension; use request_format='columnar'")
            size = sizes.pop()
            data = {"instances": [{k: v[i] for k, v in lists.items()} for i in range(size)]}
        else:
            data = {"inputs": lists}
        body = json.dumps({"signature_name": signature, **data})  # NaN -> NaN token
        answer = self._send(signature, "POST", self.endpoint, data=body)
        return read_predict_response(answer, self._output_dtypes(signature))


def _error_text(response: Any) -> str:
    """The ``error`` of a TF Serving error body, else the body's start."""
    try:
        return str(response.json().get("error", response.text))
    except (ValueError, AttributeError):
        return response.text[:500]


def read_predict_response(body: dict[str, Any], outputs: dict[str, np.dtype]
                          ) -> dict[str, np.ndarray]:
    """The tensors of a REST predict answer, in any of the forms TF Serving's
    ``api_rest.md`` documents, as ``outputs``' dtypes (``{name: dtype}`` of the
    signature): ``{"outputs": {name: tensor}}`` or ``{"outputs": tensor}`` (one output),
    ``{"predictions": [{name: row}, ...]}`` or ``{"predictions": [row, ...]}``."""
    names = sorted(outputs)
    if "outputs" in body:
        value = body["outputs"]
        tensors = value if isinstance(value, dict) else {names[0]: value} \
            if len(names) == 1 else None
        if tensors is None:
            raise ServingError(f"a bare 'outputs' tensor, but the signature has the outputs "
                               f"{names}")
    elif "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):
            tensors = {k: [row[k] for row in rows] for k in rows[0]}
        elif len(names) == 1:
            tensors = {names[0]: rows}
        else:
            raise ServingError(f"'predictions' rows are values, but the signature has the "
                               f"outputs {names}")
    else:
        raise ServingError(f"a predict answer has 'outputs' or 'predictions', got the keys "
                           f"{sorted(body)}")
    if sorted(tensors) != names:
        raise ServingError(f"the answer has the outputs {sorted(tensors)}, the signature "
                           f"{names}")
    return {k: np.asarray(v, outputs[k]) for k, v in tensors.items()}


class GrpcBackend(_ServerBackend):
    """TF Serving gRPC: ``PredictionService.Predict`` with the model, version and
    signature named in the ``ModelSpec``. ``UNAVAILABLE`` and deadline errors are
    retried."""

    name = "grpc"

    def __init__(self, target: str = "localhost:8500", model: str = "rssm",
                 version: int | None = None, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.2) -> None:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        super().__init__(target, model, version, timeout, retries, backoff)
        self._grpc, self._predict_pb2 = grpc, predict_pb2
        self.target = target
        # a restarted server is reached again within half a second (gRPC's default
        # reconnect backoff grows to 2 minutes), and a new client does not inherit
        # another channel's backoff through the process-wide subchannel pool
        options = [("grpc.max_send_message_length", 256 << 20),
                   ("grpc.max_receive_message_length", 256 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 500),
                   ("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._spec(self._predict_pb2.PredictRequest())
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(to_tensor_proto(value))
        response = self._rpc(self.stub.Predict, request, signature)
        return {k: from_tensor_proto(v) for k, v in response.outputs.items()}

    def _metadata(self, pinned: bool) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model
        if pinned and self.version:
            request.model_spec.version.value = self.version
        request.metadata_field.append("signature_def")
        return self._rpc(self.stub.GetModelMetadata, request, "metadata")

    def latest_version(self) -> int:
        return int(self._metadata(pinned=False).model_spec.version.value)

    def signatures(self) -> dict[str, dict]:
        """The model's signatures from ``PredictionService.GetModelMetadata``
        (``signature_def``), in the manifest's form (see :meth:`RestBackend.signatures`)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        response = self._metadata(pinned=True)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        return {name: {part: {key: {"dtype": _dtype_name(t.dtype),
                                    "shape": [None if d.size < 0 else d.size
                                              for d in t.tensor_shape.dim]}
                              for key, t in getattr(sig, part).items()}
                       for part in ("inputs", "outputs")}
                for name, sig in defs.signature_def.items() if not name.startswith("__")}

    def _spec(self, request: Any) -> Any:
        """``request`` with its ``model_spec`` naming this model (and version)."""
        request.model_spec.name = self.model
        if self.version:
            request.model_spec.version.value = self.version
        return request

    def _rpc(self, method: Any, request: Any, signature: str) -> Any:
        """``method(request)``; ``UNAVAILABLE`` and deadline errors are retried, any
        other error is a :class:`ServingError` naming the address and the call."""
        grpc = self._grpc

        class Retry(Exception):
            pass

        def once():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                if error.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Retry(error.details()) from None
                raise ServingError(self._refused(
                    signature, error.code().name, error.details(),
                    error.code() == grpc.StatusCode.NOT_FOUND)) from None

        return _retrying(self.target, self.attempts, self.backoff, once, (Retry,))

    def close(self) -> None:
        self.channel.close()


# The dtypes the serving signatures use: float32 tensors, int32 batch sizes, uint8 images.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8))


def to_tensor_proto(array: np.ndarray) -> Any:
    """A ``TensorProto`` of a float32, int32 or uint8 array, made by TensorFlow's own
    ``tf.make_tensor_proto``. Other dtypes are refused, not cast: the signatures take
    exactly these, and a silent cast would hide a caller's mistake."""
    import tensorflow as tf

    array = np.asarray(array)
    if array.dtype not in SUPPORTED_DTYPES:
        raise ServingError(f"unsupported dtype {array.dtype} for a serving tensor; the "
                           "signatures take float32, int32 and uint8")
    return tf.make_tensor_proto(array)


def from_tensor_proto(proto: Any) -> np.ndarray:
    """The array of a float32/int32/uint8 ``TensorProto`` (``tf.make_ndarray``)."""
    import tensorflow as tf

    array = tf.make_ndarray(proto)
    if array.dtype not in SUPPORTED_DTYPES:
        raise ServingError(f"unsupported tensor dtype {array.dtype} in a message; "
                           "expected float32, int32 or uint8")
    return array


def _dtype_name(dtype: int | str) -> str:
    """A ``DataType`` (enum number, or its JSON name ``"DT_FLOAT"``) as numpy's name."""
    from tensorflow import dtypes
    from tensorflow.core.framework import types_pb2

    code = types_pb2.DataType.Value(dtype) if isinstance(dtype, str) else dtype
    return dtypes.as_dtype(code).name


def _json_shape(shape: dict) -> list[int | None]:
    """A ``TensorShapeProto`` in JSON (sizes as strings, -1 unknown) as a list."""
    return [None if int(d.get("size", -1)) < 0 else int(d["size"])
            for d in shape.get("dim", [])]
