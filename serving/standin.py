"""A stand-in for ``tensorflow_model_server``, for tests and benchmarks only.

TF Serving has no pip package, so where it is not installed this server answers its
two protocols from the exported SavedModels, following TF Serving's documents
(``g3doc/api_rest.md``, the ``PredictionService`` protos) and, where they are silent,
its source (``util/json_tensor.cc``, the batching session):

- REST ``POST /v1/models/{name}[/versions/{v}]:predict``: a request in row format
  (``instances``: a list of values for a one-input signature, else a list of objects)
  or columnar format (``inputs``: a value for a one-input signature, else an object),
  never both. The answer takes the request's form: ``predictions`` (a list of rows; of
  objects when the signature has several outputs) or ``outputs`` (the bare tensor when
  it has one output, else an object). Floats may be ``NaN``, ``Infinity``,
  ``-Infinity``; integer inputs (uint8 images, int32) must be JSON integers. Errors:
  ``{"error": message}`` with 400 for a bad request, 404 for an unknown model, version
  or signature.
- REST ``GET /v1/models/{name}[/versions/{v}]`` (``model_version_status``: every
  version seen, ``AVAILABLE`` or ``END`` with the reason) and ``.../metadata``.
- gRPC ``PredictionService/Predict`` and ``/GetModelMetadata`` with the real protos
  (``tensorflow-serving-api``); a tensor of the wrong dtype is refused
  (``INVALID_ARGUMENT``), as TF Serving's session refuses it.

**Versions.** The server watches ``base_path`` every ``poll_seconds`` as TF Serving's
file-system source does (``--file_system_poll_wait_seconds``) and serves the versions
the ``model_version_policy`` asks for (``latest { num_versions: N }`` by default
``N = 1``, ``all {}``, ``specific { versions: ... }``; read from a ``models.config`` with
:meth:`StandInServer.from_config`). A new numeric directory is loaded once its listing
(names, sizes, times) is the same on two polls, so a directory still being copied is
never loaded; one that does not load (empty, corrupt, half-copied and stalled) is
refused by name in its status and tried again only when its files change. Versions
leave only after their replacement is ``AVAILABLE``, so a refused version never stops
the one serving.

**Batching.** With ``batching=`` (the ``batching.config`` TF Serving reads with
``--enable_batching``), concurrent requests to one signature and version are merged
along the first axis, up to ``max_batch_size`` rows, waiting at most
``batch_timeout_micros`` for more, run once, and split back. As in TF Serving, every
input of a batched signature must have the same first dimension: a signature with a
scalar input or inputs of different first sizes (``plan_*``, ``initial_state``) is
refused with TF Serving's message, and so is a request of more than ``max_batch_size``
rows. Padding (``allowed_batch_sizes``) is not imitated.

A version loads the way TF Serving's C++ loader loads it
(:class:`rssm_tf_serving.backends.SessionBackend`: the MetaGraph in a TF1 session,
variables restored by the SavedModel's restore op, tensors fed and fetched by
SignatureDef names), so the tests exercise that path, not ``tf.saved_model.load``'s.
Use the real server in production: docs/guide.md has its command lines.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from rssm_tf_serving.backends import (
    ServingError,
    SessionBackend,
    from_tensor_proto,
    to_tensor_proto,
)

log = logging.getLogger("rssm_tf_serving.standin")

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")
_METADATA = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata$")


class NotFound(LookupError):
    """An unknown model, version or signature (REST 404, gRPC ``NOT_FOUND``)."""


class InvalidArgument(ValueError):
    """A request TF Serving refuses (REST 400, gRPC ``INVALID_ARGUMENT``)."""


# --------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: which of the versions on disk to serve."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"policy kind must be 'latest', 'all' or 'specific', got "
                             f"{self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"latest num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific policy needs at least one version")

    def aspired(self, versions: list[int]) -> list[int]:
        """The versions to serve out of ``versions`` (those that can be loaded)."""
        versions = sorted(versions)
        if self.kind == "latest":
            return versions[-self.num_versions:]
        if self.kind == "all":
            return versions
        return [v for v in versions if v in self.versions]


def read_model_config(path: str | os.PathLike) -> tuple[str, Path, VersionPolicy]:
    """``(name, base_path, policy)`` of the one model in a TF Serving ``models.config``
    (text ``ModelServerConfig``); relative base paths are read from the file's folder."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(Path(path).read_text(), config)
    models = list(config.model_config_list.config)
    if len(models) != 1:
        raise ValueError(f"{path}: the stand-in serves one model, the config lists "
                         f"{len(models)}")
    model = models[0]
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice") or "latest"
    if which == "latest":
        result = VersionPolicy("latest", policy.latest.num_versions or 1)
    elif which == "all":
        result = VersionPolicy("all")
    else:
        result = VersionPolicy("specific", versions=tuple(policy.specific.versions))
    base = Path(model.base_path)
    return model.name, base if base.is_absolute() else Path(path).parent / base, result


@dataclass(frozen=True)
class Batching:
    """The ``BatchingParameters`` of a ``batching.config`` the stand-in follows."""

    max_batch_size: int = 64
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 256
    num_batch_threads: int = 2

    @classmethod
    def read(cls, path: str | os.PathLike) -> Batching:
        """Reads the text proto's ``field { value: N }`` entries (the wrapper fields of
        ``BatchingParameters``); fields the stand-in does not imitate are ignored."""
        values = {key: int(value) for key, value in
                  re.findall(r"(\w+)\s*\{\s*value:\s*(-?\d+)\s*\}", Path(path).read_text())}
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------- REST JSON
def read_json(raw: bytes) -> dict[str, Any]:
    """A request body as TF Serving parses it: a JSON object, where numbers may also be
    the tokens ``NaN``, ``Infinity`` and ``-Infinity``."""
    if not raw:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        body = json.loads(raw)  # Python's parser takes the three tokens
    except ValueError as error:
        raise InvalidArgument(f"JSON Parse error: {error}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("JSON Value: Is not object")
    return body


def parse_predict_body(body: dict[str, Any], specs: dict[str, tuple[np.dtype, list]]
                       ) -> tuple[dict[str, np.ndarray], str]:
    """The inputs of a REST predict body (:func:`read_json`) and its format (``"row"``
    or ``"columnar"``), as TF Serving reads them; ``specs``: ``{input: (dtype, shape)}``
    of the signature."""
    if "instances" in body and "inputs" in body:
        raise InvalidArgument("JSON Value: Not formatted correctly expecting only one of "
                              "'inputs' or 'instances' keys to exist")
    names = sorted(specs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise InvalidArgument("JSON Value: Excepting 'instances' to be an list/array")
        if not rows:
            raise InvalidArgument("JSON Value: No values in 'instances' array")
        objects = isinstance(rows[0], dict)
        if not objects and len(names) > 1:
            raise InvalidArgument("instances is a plain list, but expecting list of objects "
                                  "as multiple input tensors required as per tensorinfo_map")
        columns: dict[str, list] = {name: [] for name in names}
        for i, row in enumerate(rows):
            if isinstance(row, dict) != objects:
                raise InvalidArgument(f"Expecting {'object' if objects else 'value/list'} "
                                      f"but got {'list' if objects else 'object'} at item "
                                      f"{i} of input list")
            if objects and sorted(row) != names:
                raise InvalidArgument(f"Failed to process element: {i} of 'instances' list. "
                                      f"JSON object: keys must be equal to: {','.join(names)}")
            for name in names:
                columns[name].append(row[name] if objects else row)
        return {k: _tensor(k, v, specs[k][0]) for k, v in columns.items()}, "row"
    if "inputs" in body:
        value = body["inputs"]
        if not isinstance(value, dict):
            if len(names) > 1:
                raise InvalidArgument("inputs is a plain value/list, but expecting an object "
                                      "as multiple input tensors required as per "
                                      "tensorinfo_map")
            value = {names[0]: value}
        for name in names:
            if name not in value:
                raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        return {k: _tensor(k, value[k], specs[k][0]) for k in names}, "columnar"
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _tensor(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """A JSON value as a tensor of ``dtype``: floats take any number (and the NaN and
    infinity tokens), integer dtypes only JSON integers; lists must be rectangular."""
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidArgument(f"input {name}: Encountered list at unexpected size (the "
                              "nested lists are not rectangular)") from None
    kind = array.dtype.kind
    if array.size == 0:
        ok = kind in "iuf"
    elif np.issubdtype(dtype, np.floating):
        ok = kind in "iuf"
    else:
        info = np.iinfo(dtype)
        ok = kind in "iu" and array.min() >= info.min and array.max() <= info.max
    if not ok:
        raise InvalidArgument(f"input {name}: JSON Value: {json.dumps(value)[:80]} is not of "
                              f"expected type: {np.dtype(dtype).name}")
    return array.astype(dtype)


def predict_body(outputs: dict[str, np.ndarray], form: str) -> dict[str, Any]:
    """TF Serving's answer to a predict request in ``form`` ``"row"`` or ``"columnar"``:
    a one-output signature's tensor goes out bare, several go out keyed by name."""
    names = sorted(outputs)
    if form == "columnar":
        if len(names) == 1:
            return {"outputs": outputs[names[0]].tolist()}
        return {"outputs": {k: outputs[k].tolist() for k in names}}
    sizes = {k: outputs[k].shape[0] if outputs[k].ndim else None for k in names}
    for key, size in sizes.items():
        if size is None:
            raise InvalidArgument(f"Tensor name: {key} has no shape information ")
        if size != sizes[names[0]]:
            raise InvalidArgument(f"Tensor name: {key} has inconsistent batch size: {size} "
                                  f"expecting: {sizes[names[0]]}")
    if len(names) == 1:
        return {"predictions": outputs[names[0]].tolist()}
    lists = {k: outputs[k].tolist() for k in names}
    return {"predictions": [{k: lists[k][i] for k in names}
                            for i in range(sizes[names[0]])]}


# ------------------------------------------------------------------------ versions
@dataclass
class _Status:
    state: str  # "AVAILABLE" or "END"
    error_code: str = "OK"
    error_message: str = ""
    listing: tuple = ()


def _listing(path: Path) -> tuple:
    """What a version directory holds: (relative name, size, mtime) of every file."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            try:
                stat = full.stat()
            except OSError:  # removed while listing
                continue
            entries.append((str(full.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class _Batcher:
    """Merges concurrent requests of one version's signature along the first axis."""

    def __init__(self, backend: SessionBackend, signature: str, params: Batching) -> None:
        self.backend, self.signature, self.params = backend, signature, params
        self.queue: queue.Queue = queue.Queue(params.max_enqueued_batches
                                              * params.max_batch_size)
        for _ in range(params.num_batch_threads):
            threading.Thread(target=self._work, daemon=True).start()

    def call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {k: v.shape[0] if v.ndim else None for k, v in inputs.items()}
        if None in rows.values():
            raise InvalidArgument("Batching session Run() input tensors must have at least "
                                  "one dimension")
        if len(set(rows.values())) != 1:
            raise InvalidArgument("Batching session Run() input tensors must have equal "
                                  "0th-dimension size")
        size = next(iter(rows.values()))
        if size > self.params.max_batch_size:
            raise InvalidArgument(f"Task size {size} is larger than maximum input batch "
                                  f"size {self.params.max_batch_size}")
        task: futures.Future = futures.Future()
        try:
            self.queue.put_nowait((inputs, size, task))
        except queue.Full:
            raise ServingError("The batch scheduling queue to which this task was submitted "
                               "is full") from None
        return task.result()

    def close(self) -> None:
        """Ends the worker threads once the queued requests are answered."""
        for _ in range(self.params.num_batch_threads):
            self.queue.put(None)

    def _work(self) -> None:
        params = self.params
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            rows = batch[0][1]
            deadline = time.perf_counter() + params.batch_timeout_micros / 1e6
            while rows < params.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None or rows + item[1] > params.max_batch_size:
                    self.queue.put(item)  # the next batch's first task
                    break
                batch.append(item)
                rows += item[1]
            self._run(batch)

    def _run(self, batch: list) -> None:
        try:
            merged = {k: np.concatenate([inputs[k] for inputs, _, _ in batch])
                      for k in batch[0][0]}
            out = self.backend.call(self.signature, merged)
            start = 0
            for _, size, task in batch:
                task.set_result({k: v[start:start + size] for k, v in out.items()})
                start += size
        except Exception as error:  # every waiting request gets the batch's error
            for _, _, task in batch:
                if not task.done():
                    task.set_exception(error)


class StandInServer:
    """REST and gRPC endpoints on 127.0.0.1 for the model whose versions are under
    ``base_path`` (or a single SavedModel directory, served as version 1).

    ``policy``: the :class:`VersionPolicy` (latest 1, as TF Serving's default);
    ``poll_seconds``: how often the base path is watched (0: only at start and when
    :meth:`poll` is called); ``batching``: :class:`Batching` to merge requests, or None.
    ``start()`` binds free ports (or the given ones) and returns ``self``; ``rest_url``
    and ``grpc_target`` say where; ``stop()`` shuts both down.
    """

    def __init__(self, base_path: str | os.PathLike, name: str = "rssm", rest_port: int = 0,
                 grpc_port: int = 0, policy: VersionPolicy | None = None,
                 poll_seconds: float = 1.0, batching: Batching | None = None) -> None:
        self.name = name
        self.base_path = Path(base_path)
        if not self.base_path.is_dir():
            raise ServingError(f"model base path {self.base_path} is not a directory")
        self.policy = policy or VersionPolicy()
        self.poll_seconds, self.batching = poll_seconds, batching
        self.loaded: dict[int, SessionBackend] = {}
        self.status: dict[int, _Status] = {}
        self._seen: dict[int, tuple] = {}
        self._batchers: dict[tuple[int, str], _Batcher] = {}
        self._lock = threading.Lock()  # the loaded versions and their batchers
        self._polling = threading.Lock()  # one poll at a time (the watcher, or a caller)
        self._stopping = threading.Event()
        self._rest_port, self._grpc_port = rest_port, grpc_port
        self.http: ThreadingHTTPServer | None = None
        self._connections: set = set()  # open keep-alive REST connections
        self.grpc_server: Any = None

    @classmethod
    def from_config(cls, models_config: str | os.PathLike,
                    batching_config: str | os.PathLike | None = None,
                    **options: Any) -> StandInServer:
        """The server TF Serving would be with ``--model_config_file=models_config``
        (and ``--enable_batching --batching_parameters_file=batching_config``)."""
        name, base, policy = read_model_config(models_config)
        batching = Batching.read(batching_config) if batching_config else None
        return cls(base, name=name, policy=policy, batching=batching, **options)

    # ---------------------------------------------------------------- versions
    @property
    def version(self) -> int:
        """The newest version being served."""
        with self._lock:
            if not self.loaded:
                raise NotFound(f"Servable not found for request: Latest({self.name})")
            return max(self.loaded)

    def poll(self, initial: bool = False) -> None:
        """One look at the base path: loads the complete new versions the policy asks
        for, refuses those that do not load, unloads those the policy no longer wants
        once a wanted one is serving."""
        with self._polling:
            self._poll(initial)

    def _poll(self, initial: bool) -> None:
        if (self.base_path / "saved_model.pb").is_file():  # one SavedModel, no versions
            found = {1: self.base_path}
        else:
            found = {int(p.name): p for p in self.base_path.iterdir()
                     if p.name.isdigit() and p.is_dir()}
        ready = []  # loaded, or complete and not refused as they are now
        listings = {}
        for version, path in found.items():
            if version in self.loaded:
                ready.append(version)
                continue
            listing = listings[version] = _listing(path)
            status = self.status.get(version)
            if status is not None and status.error_code != "OK" and status.listing == listing:
                continue  # refused before, unchanged since
            stable = initial or self._seen.get(version) == listing
            self._seen[version] = listing
            if stable:
                ready.append(version)
        for version in self.policy.aspired(ready):
            if version not in self.loaded:
                self._load(version, found[version], listings[version])
        keep = self.policy.aspired([v for v in ready if v in self.loaded])
        if keep:  # availability first: nothing leaves until a wanted version serves
            for version in [v for v in self.loaded if v not in keep]:
                self._unload(version)

    def _load(self, version: int, path: Path, listing: tuple) -> None:
        """Loads ``path`` (whose files are ``listing``) as ``version``, or refuses it."""
        if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt"
                                                            ).is_file():
            message = (f"version {version} at {path}: Could not find SavedModel .pb or "
                       ".pbtxt at supplied export directory path")
            self.status[version] = _Status("END", "NOT_FOUND", message, listing)
            log.error("refused %s", message)
            return
        try:
            backend = SessionBackend(path)
        except ServingError as error:
            message = f"version {version}: {error}"  # the error names the path
            self.status[version] = _Status("END", "UNKNOWN", message, listing)
            log.error("refused %s", message)
            return
        with self._lock:
            self.loaded[version] = backend
            self.status[version] = _Status("AVAILABLE", listing=listing)
        log.info("serving %s version %d", self.name, version)

    def _unload(self, version: int) -> None:
        with self._lock:
            self.loaded.pop(version)
            for key in [k for k in self._batchers if k[0] == version]:
                self._batchers.pop(key).close()
            self.status[version] = _Status("END")
        # the session is closed when the last request holding it returns
        log.info("unloaded %s version %d", self.name, version)

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.poll()
            except OSError as error:  # the base path itself went away: keep serving
                log.error("cannot read %s: %s", self.base_path, error)

    def _backend(self, name: str, version: int | None) -> tuple[int, SessionBackend]:
        with self._lock:
            if name == self.name and self.loaded and version is None:
                version = max(self.loaded)
            if name != self.name or version not in self.loaded:
                raise NotFound(f"Servable not found for request: "
                               f"{'Specific' if version else 'Latest'}({name}"
                               f"{', ' + str(version) if version else ''})")
            return version, self.loaded[version]

    # ----------------------------------------------------------------- serving
    def servable(self, name: str, version: int | None, signature: str
                 ) -> tuple[int, SessionBackend, dict[str, tuple[np.dtype, list]]]:
        """``(version, its session, the signature's input specs)`` for a request."""
        version, backend = self._backend(name, version)
        signature = signature or "serving_default"
        if signature not in backend.signatures:
            raise NotFound(f"Serving signature name: \"{signature}\" not found in "
                           "signature def")
        return version, backend, backend.input_specs(signature)

    def predict(self, name: str, version: int | None, signature: str,
                inputs: dict[str, np.ndarray], servable: tuple | None = None
                ) -> tuple[int, dict[str, np.ndarray]]:
        """``(version served, outputs)``; inputs must have the signature's dtypes.
        ``servable``: what :meth:`servable` returned for this request, if known."""
        version, backend, specs = servable or self.servable(name, version, signature)
        signature = signature or "serving_default"
        if set(inputs) != set(specs):
            raise InvalidArgument(f"signature {signature} takes inputs {sorted(specs)}, "
                                  f"got {sorted(inputs)}")
        for key, (dtype, shape) in specs.items():
            value = inputs[key]
            if value.dtype != dtype:
                raise InvalidArgument(f"Expects arg {key} to be {dtype.name} but "
                                      f"{value.dtype.name} is provided")
            if value.ndim != len(shape) or any(s is not None and s != d
                                               for s, d in zip(shape, value.shape)):
                want = [-1 if s is None else s for s in shape]
                raise InvalidArgument(f"input {key}: shape {list(value.shape)} does not "
                                      f"match the signature's {want}")
        if self.batching is None:
            return version, backend.call(signature, inputs)
        with self._lock:
            batcher = self._batchers.get((version, signature))
            if batcher is None:
                batcher = self._batchers[version, signature] = _Batcher(
                    backend, signature, self.batching)
        return version, batcher.call(inputs)

    def signature_map(self, name: str, version: int | None) -> tuple[int, Any]:
        """``(version, SignatureDefMap)`` as TF Serving's metadata call reports them."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        version, backend = self._backend(name, version)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in backend.signature_defs.items():
            defs.signature_def[key].CopyFrom(sig)
        return version, defs

    def version_status(self, name: str, version: int | None) -> list[dict[str, Any]]:
        """``model_version_status`` of GetModelStatus: every version seen, newest first."""
        with self._lock:
            statuses = dict(self.status)
        if name != self.name or not statuses or (version is not None
                                                 and version not in statuses):
            raise NotFound(f"Could not find version {version} of model {name}" if version
                           else f"Could not find any versions of model {name}")
        return [{"version": str(v), "state": s.state,
                 "status": {"error_code": s.error_code, "error_message": s.error_message}}
                for v, s in sorted(statuses.items(), reverse=True)
                if version is None or v == version]

    # ---------------------------------------------------------------- lifetime
    def start(self) -> StandInServer:
        self.poll(initial=True)
        if not self.loaded:
            raise ServingError(f"no version of {self.name} under {self.base_path} could be "
                               f"loaded: {[s.error_message for s in self.status.values()]}")
        self._start_rest()
        self._start_grpc()
        if self.poll_seconds > 0:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            for connection in list(self._connections):  # a stopped server answers nobody
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self.grpc_server is not None:
            self.grpc_server.stop(None)

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self._grpc_port}"

    # ------------------------------------------------------------------ REST
    def _start_rest(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in separate writes: without TCP_NODELAY each
            # keep-alive response waits for the client's delayed ACK (~40 ms)
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                server._connections.add(self.connection)

            def finish(self) -> None:
                server._connections.discard(self.connection)
                super().finish()

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()  # NaN and infinities as TF Serving's tokens
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, work: Any) -> None:
                try:
                    self._reply(200, work())
                except NotFound as error:
                    self._reply(404, {"error": str(error).strip('"')})
                except (InvalidArgument, ServingError, ValueError, TypeError) as error:
                    self._reply(400, {"error": str(error)})

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                meta = _METADATA.match(self.path)
                status = _STATUS.match(self.path)
                if meta:
                    name, version = meta.group(1), meta.group(2)
                    return self._answer(lambda: server._metadata_json(
                        name, int(version) if version else None))
                if status:
                    name, version = status.group(1), status.group(2)
                    return self._answer(lambda: {"model_version_status": server.version_status(
                        name, int(version) if version else None)})
                self._reply(404, {"error": f"Malformed request: GET {self.path}"})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                match = _PREDICT.match(self.path)
                if not match:
                    return self._reply(404, {"error": f"Malformed request: POST {self.path}"})

                def work() -> dict:
                    body = read_json(raw)
                    signature = body.get("signature_name", "")
                    if not isinstance(signature, str):
                        raise InvalidArgument("JSON Value: not formatted correctly. "
                                              "'signature_name' key must be a string value.")
                    name = match.group(1)
                    version = int(match.group(2)) if match.group(2) else None
                    servable = server.servable(name, version, signature)
                    inputs, form = parse_predict_body(body, servable[2])
                    _, out = server.predict(name, version, signature, inputs, servable)
                    return predict_body(out, form)

                self._answer(work)

        self.http = ThreadingHTTPServer(("127.0.0.1", self._rest_port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _metadata_json(self, name: str, version: int | None) -> dict[str, Any]:
        from google.protobuf import json_format

        version, defs = self.signature_map(name, version)
        body = json_format.MessageToDict(defs, preserving_proto_field_name=True)
        body["@type"] = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(version)},
                "metadata": {"signature_def": body}}

    # ------------------------------------------------------------------ gRPC
    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        server = self

        def abort(context: Any, error: Exception) -> None:
            code = grpc.StatusCode.NOT_FOUND if isinstance(error, NotFound) \
                else grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(error))

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                try:
                    inputs = {k: from_tensor_proto(v) for k, v in request.inputs.items()}
                    served, out = server.predict(spec.name, version, spec.signature_name,
                                                 inputs)
                except (LookupError, ValueError, ServingError) as error:
                    abort(context, error)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = server.name
                response.model_spec.version.value = served
                response.model_spec.signature_name = spec.signature_name or "serving_default"
                for key, value in out.items():
                    response.outputs[key].CopyFrom(to_tensor_proto(np.asarray(value)))
                return response

            def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                if list(request.metadata_field) != ["signature_def"]:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  "Metadata field(s) other than signature_def are not "
                                  f"supported: {list(request.metadata_field)}")
                try:
                    served, defs = server.signature_map(spec.name, version)
                except LookupError as error:
                    abort(context, error)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = server.name
                response.model_spec.version.value = served
                response.metadata["signature_def"].Pack(defs)
                return response

        options = [("grpc.max_send_message_length", 256 << 20),
                   ("grpc.max_receive_message_length", 256 << 20)]
        workers = max(8, 2 * (self.batching.max_batch_size if self.batching else 4))
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                       options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(),
                                                                           self.grpc_server)
        port = self.grpc_server.add_insecure_port(f"127.0.0.1:{self._grpc_port}")
        if not port:  # older grpc returns 0 instead of raising
            raise ServingError(f"cannot bind gRPC port {self._grpc_port} on 127.0.0.1")
        self._grpc_port = port
        self.grpc_server.start()


def main(argv: list[str] | None = None) -> int:
    """``python -m rssm_tf_serving.standin``: serve until killed (for benchmarks and
    fault tests that need the server in its own process)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", help="the model's base path (or --model-config)")
    parser.add_argument("--model-name", default="rssm")
    parser.add_argument("--model-config", help="a TF Serving models.config")
    parser.add_argument("--batching-config", help="a batching.config (enables batching)")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    ports = dict(rest_port=args.rest_port, grpc_port=args.port, poll_seconds=args.poll_seconds)
    if args.model_config:
        server = StandInServer.from_config(args.model_config, args.batching_config, **ports)
    elif args.model_base_path:
        batching = Batching.read(args.batching_config) if args.batching_config else None
        server = StandInServer(args.model_base_path, name=args.model_name, batching=batching,
                               **ports)
    else:
        parser.error("give --model-base-path or --model-config")
    server.start()
    print(f"serving {server.name} version {server.version}: REST {server.rest_url}, "
          f"gRPC {server.grpc_target}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
