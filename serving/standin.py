"""A stand-in for ``tensorflow_model_server``, for tests and benchmarks only.

TF Serving has no pip package (its binary ships in containers and Debian-less apt
repositories), so where it is not installed this small server answers the same two
protocols from the exported SavedModel:

- REST: ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name`` and
  columnar ``inputs``; ``GET /v1/models/{name}`` for the version status;
  ``GET /v1/models/{name}[/versions/{v}]/metadata`` for the signatures. Errors come
  back as ``{"error": ...}`` with 404 for an unknown model or signature, 400 for bad
  inputs, as TF Serving does.
- gRPC: ``tensorflow.serving.PredictionService/Predict`` and ``/GetModelMetadata``
  (``signature_def``) with the real protos from ``tensorflow-serving-api``.

It serves the latest version under a model base path, one model, and loads it the way
TF Serving's C++ loader does (:class:`rssm_tf_serving.backends.SessionBackend`: the MetaGraph
in a TF1 session, variables restored by the SavedModel's restore op, tensors fed and
fetched by SignatureDef names), so the REST and gRPC tests exercise that loading path,
not ``tf.saved_model.load``'s. Use the real server in production: the README has its
command lines.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent import futures
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

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/([^/:]+)$")
_METADATA = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata$")


class StandInServer:
    """REST and gRPC endpoints on 127.0.0.1 for the model at ``base_path``.

    ``start()`` binds free ports (or the given ones) and returns ``self``;
    ``rest_url`` and ``grpc_target`` say where; ``stop()`` shuts both down.
    """

    def __init__(self, base_path: str | Path, name: str = "rssm", rest_port: int = 0,
                 grpc_port: int = 0) -> None:
        self.name = name
        self.backend = SessionBackend(base_path)
        self.version = int(self.backend.path.name) if self.backend.path.name.isdigit() else 1
        self.lock = threading.Lock()
        self._rest_port, self._grpc_port = rest_port, grpc_port
        self.http: ThreadingHTTPServer | None = None
        self.grpc_server: Any = None

    # --------------------------------------------------------------- serving
    def predict(self, name: str, version: int | None, signature: str,
                inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_model(name, version)
        signature = signature or "serving_default"
        if signature not in self.backend.signatures:
            raise LookupError(f"Serving signature name: \"{signature}\" not found in "
                              "signature def")
        specs = self.backend.input_specs(signature)
        if set(inputs) != set(specs):
            raise ValueError(f"signature {signature} takes inputs {sorted(specs)}, got "
                             f"{sorted(inputs)}")
        # TF Serving reads JSON numbers as the signature's dtype (uint8 images, ...)
        inputs = {k: np.asarray(v, specs[k][0]) for k, v in inputs.items()}
        with self.lock:
            return self.backend.call(signature, inputs)

    def signature_map(self, name: str, version: int | None) -> Any:
        """The ``SignatureDefMap`` TF Serving's metadata call reports."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        self._check_model(name, version)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.backend.signature_defs.items():
            defs.signature_def[key].CopyFrom(sig)
        return defs

    def _check_model(self, name: str, version: int | None) -> None:
        if name != self.name or (version is not None and version != self.version):
            raise LookupError(f"Servable not found for request: "
                              f"{'Specific' if version else 'Latest'}({name}"
                              f"{', ' + str(version) if version else ''})")

    def start(self) -> StandInServer:
        self._start_rest()
        self._start_grpc()
        return self

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
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

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                meta = _METADATA.match(self.path)
                if meta:
                    from google.protobuf import json_format

                    version = int(meta.group(2)) if meta.group(2) else None
                    try:
                        defs = server.signature_map(meta.group(1), version)
                    except LookupError as error:
                        return self._reply(404, {"error": str(error)})
                    body = json_format.MessageToDict(defs, preserving_proto_field_name=True)
                    body["@type"] = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
                    return self._reply(200, {
                        "model_spec": {"name": server.name, "signature_name": "",
                                       "version": str(server.version)},
                        "metadata": {"signature_def": body}})
                match = _STATUS.match(self.path)
                if not match or match.group(1) != server.name:
                    return self._reply(404, {"error": f"Could not find any versions of "
                                                      f"model {self.path.split('/')[-1]}"})
                self._reply(200, {"model_version_status": [
                    {"version": str(server.version), "state": "AVAILABLE",
                     "status": {"error_code": "OK", "error_message": ""}}]})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                match = _PREDICT.match(self.path)
                if not match:
                    return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
                try:
                    body = json.loads(raw)
                    inputs = {k: np.asarray(v) for k, v in body["inputs"].items()}
                    version = int(match.group(2)) if match.group(2) else None
                    out = server.predict(match.group(1), version,
                                         body.get("signature_name", ""), inputs)
                except LookupError as error:
                    return self._reply(404, {"error": str(error).strip('"')})
                except (ValueError, KeyError, TypeError, ServingError) as error:
                    return self._reply(400, {"error": str(error)})
                self._reply(200, {"outputs": {k: v.tolist() for k, v in out.items()}})

        self.http = ThreadingHTTPServer(("127.0.0.1", self._rest_port), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ gRPC
    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        server = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                try:
                    inputs = {k: from_tensor_proto(v) for k, v in request.inputs.items()}
                    out = server.predict(spec.name, version, spec.signature_name, inputs)
                except LookupError as error:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(error))
                except (ValueError, ServingError) as error:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                response = predict_pb2.PredictResponse()
                response.model_spec.name = server.name
                response.model_spec.version.value = server.version
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
                    defs = server.signature_map(spec.name, version)
                except LookupError as error:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(error))
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = server.name
                response.model_spec.version.value = server.version
                response.metadata["signature_def"].Pack(defs)
                return response

        options = [("grpc.max_send_message_length", 256 << 20),
                   ("grpc.max_receive_message_length", 256 << 20)]
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                       options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(),
                                                                           self.grpc_server)
        self._grpc_port = self.grpc_server.add_insecure_port(f"127.0.0.1:{self._grpc_port}")
        self.grpc_server.start()
