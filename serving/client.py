"""``WorldModelClient``: the recurrent state on the client, the model anywhere.

The served model is stateless (docs/design.md section 6): every call takes ``h`` and ``z`` and
returns the next ones. The client keeps them between calls, so an agent or a planner
writes ``reset / observe / imagine / predict`` whatever runs the model::

    client = WorldModelClient.from_export("out/export", backend="onnx")
    client.reset(batch_size=1)
    out = client.observe(action, {"joints": q, "camera": pixels})  # posterior step
                                                 # (one entry per key of obs_space)
    seen = client.decode()                       # per key: the model's reconstruction
    dream = client.imagine(actions)              # [B, T, A] from the current state
    now = client.predict()                       # reward, continue for the state
    best = client.plan("discrete", noise, top_k)  # the exported CEM planner
    step = client.act(obs)                       # a Dreamer's export: observe and act
    env.step(step["action"])                     # (the next act's action by default)

Sampling per call: ``sample="sample"`` (the server draws the noise), ``"mode"``
(argmax) or ``noise=`` an array of uniform (0, 1) values (Gumbel-max; reproducible).
Inputs are checked against the export's ``manifest.json`` before anything is sent.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rssm_tf_serving.backends import (
    Backend,
    GrpcBackend,
    LiteRtBackend,
    OnnxBackend,
    OpenVinoBackend,
    RestBackend,
    SavedModelBackend,
    ServingError,
)

BACKENDS = ("onnx", "onnx_int8", "openvino", "litert", "litert_int8", "savedmodel", "rest",
            "grpc")


# The manifest layout this client reads; an export's manifest.json says which it has.
MANIFEST_FORMAT = 1


def load_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServingError(f"{path}: no manifest; is {export_dir} an export directory "
                           "(rssm-tf export --out ...)?") from None
    except json.JSONDecodeError as error:
        raise ServingError(f"{path}: not valid JSON: {error}") from None
    found = manifest.get("format_version", 1)
    if not isinstance(found, int) or found > MANIFEST_FORMAT:
        raise ServingError(f"{path}: manifest format_version {found!r} is newer than this "
                           f"client reads ({MANIFEST_FORMAT}); upgrade rssm-tf")
    return manifest


def manifest_from_signatures(name: str, signatures: dict[str, dict]) -> dict[str, Any]:
    """A manifest for a model known only by its served signatures (TF Serving's
    metadata): the sizes are read off the input shapes of ``obs_step_noise``."""
    try:
        inputs = signatures["obs_step_noise"]["inputs"]
        _, groups, classes = inputs["noise"]["shape"]
        config = {"deterministic_size": inputs["h"]["shape"][1],
                  "n_categories": groups, "n_classes": classes,
                  "action_dim": inputs["action"]["shape"][1]}
    except (KeyError, ValueError, IndexError, TypeError):
        raise ServingError(f"model {name!r}: its signatures are not an rssm_tf export's "
                           f"(found {sorted(signatures)})") from None
    return {"format_version": MANIFEST_FORMAT, "name": name, "config": config,
            "signatures": signatures}


# the inputs of obs_step that are not observation keys
STATE_INPUTS = ("h", "z", "action", "noise")


class DtypeError(TypeError, ValueError):
    """An input of the wrong dtype (a ``TypeError`` and a ``ValueError`` both)."""


class WorldModelClient:
    """A stateful client over one :mod:`rssm_tf_serving.backends` backend.

    ``manifest``: the export's ``manifest.json`` (dict or export directory); it gives
    the sizes and the signatures' input shapes used to check every call.
    """

    def __init__(self, backend: Backend, manifest: dict[str, Any] | str | os.PathLike) -> None:
        self.backend = backend
        self.manifest = manifest if isinstance(manifest, dict) else load_manifest(manifest)
        c = self.manifest["config"]
        self.deter, self.classes = c["deterministic_size"], c["n_classes"]
        self.groups, self.action_dim = c["n_categories"], c["action_dim"]
        #: the observation inputs of obs_step, ``{key: (per-step shape, dtype)}``: float32
        #: vectors, uint8 images and int32 class indices, read off the signature (as a
        #: server describes it)
        inputs = self.manifest["signatures"]["obs_step"]["inputs"]
        self.obs_space = {k: (tuple(v["shape"][1:]), v["dtype"])
                          for k, v in sorted(inputs.items()) if k not in STATE_INPUTS}
        self.obs_keys = tuple(self.obs_space)
        #: the number of classes of each categorical key, as the manifest gives them
        self.obs_classes = {k: v["classes"] for k, v in self.manifest.get("obs_space", {}).items()
                            if "classes" in v}
        #: a Dreamer's actor (``discrete``, ``noise``, bounds), else None
        self.actor: dict[str, Any] | None = self.manifest.get("actor")
        self.h: np.ndarray | None = None
        self.z: np.ndarray | None = None
        #: the action :meth:`act` returned last (zeros after :meth:`reset`)
        self.action: np.ndarray | None = None
        #: the model version this episode runs on (TF Serving backends; None otherwise)
        self.version: int | None = None

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike, backend: str = "onnx",
                    **options: Any) -> WorldModelClient:
        """A client for an export directory. ``backend``: ``onnx`` (ONNX Runtime),
        ``onnx_int8`` (ONNX Runtime on the 8-bit-weight files of an export made with
        ``--int8``: faster at small batches, with an accuracy cost), ``openvino``
        (OpenVINO on the same files, ``device=``), ``litert`` (export
        with ``--litert``), ``litert_int8`` (its 8-bit-weight files, ``--litert --int8``),
        ``savedmodel`` (these read the files), ``rest`` (``url=``,
        ``model=``) or ``grpc`` (``target=``, ``model=``); ``model`` defaults to the
        exported name."""
        manifest = load_manifest(export_dir)
        export_dir = Path(export_dir)
        if backend in ("onnx_int8", "litert_int8") and not manifest.get(backend):
            flags = "--int8" if backend == "onnx_int8" else "--litert --int8"
            raise ServingError(f"{export_dir} has no {backend}/ files: export with {flags} "
                               f"to write them")
        if backend in ("onnx", "onnx_int8"):  # the directory is the backend's name
            impl: Backend = OnnxBackend(export_dir / backend, **options)
        elif backend == "openvino":
            impl = OpenVinoBackend(export_dir / "onnx", **options)
        elif backend in ("litert", "litert_int8"):
            actor = manifest.get("actor") or {}
            impl = LiteRtBackend(export_dir / backend,
                                 **{"actor_noise": actor.get("noise"), **options})
        elif backend == "savedmodel":
            impl = SavedModelBackend(export_dir / "saved_model" / manifest["name"], **options)
        elif backend == "rest":
            outputs = {name: {k: v["dtype"] for k, v in sig["outputs"].items()}
                       for name, sig in manifest["signatures"].items()}
            impl = RestBackend(**{"model": manifest["name"], "outputs": outputs, **options})
        elif backend == "grpc":
            impl = GrpcBackend(**{"model": manifest["name"], **options})
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return cls(impl, manifest)

    @classmethod
    def from_server(cls, backend: str = "grpc", model: str = "rssm",
                    **options: Any) -> WorldModelClient:
        """A client for a model TF Serving serves, without its export directory: the
        signatures (and so the sizes every call is checked against) come from the
        server's metadata (``GET /v1/models/NAME/metadata`` or ``GetModelMetadata``).
        ``backend``: ``rest`` (``url=``) or ``grpc`` (``target=``)."""
        if backend == "rest":
            impl: Any = RestBackend(model=model, **options)
        elif backend == "grpc":
            impl = GrpcBackend(model=model, **options)
        else:
            raise ValueError(f"from_server takes backend 'rest' or 'grpc', got {backend!r}")
        return cls(impl, manifest_from_signatures(model, impl.signatures()))

    # ---------------------------------------------------------------- state
    @property
    def batch_size(self) -> int | None:
        return None if self.h is None else int(self.h.shape[0])

    def random_observation(self, rng: np.random.Generator, *lead: int
                           ) -> dict[str, np.ndarray]:
        """Random inputs for every observation key, [*lead, *shape] each: uint8 pixels
        for an image key, class indices for a categorical key, standard normal float32
        for a vector key (for smoke runs and benchmarks)."""
        out = {}
        for k, (shape, dtype) in self.obs_space.items():
            size = (*lead, *shape)
            if dtype == "uint8":
                out[k] = rng.integers(0, 256, size, dtype=np.uint8)
            elif dtype == "int32":
                out[k] = rng.integers(0, self.obs_classes[k], size, dtype=np.int32)
            else:
                out[k] = rng.normal(size=size).astype(np.float32)
        return out

    def reset(self, batch_size: int = 1) -> None:
        """Starts every sequence afresh: ``h`` and ``z`` zeros (the initial state).

        On TF Serving (REST, gRPC) the episode is pinned to the newest version served
        now: every call names it, so a version loaded mid-episode never continues a state
        the old weights made; if the pinned version is unloaded, calls fail naming it and
        the next ``reset`` moves to the newest."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        pin = getattr(self.backend, "pin_latest", None)
        self.version = pin() if pin is not None else None
        self.h = np.zeros((batch_size, self.deter), np.float32)
        self.z = np.zeros((batch_size, self.groups * self.classes), np.float32)
        self.action = np.zeros((batch_size, self.action_dim), np.float32)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The current state, copied: ``{"h": [B, D], "z": [B, S*K], "action": [B, A]}``
        (``action``: the last one :meth:`act` returned, the next act's default)."""
        self._require_state()
        return {"h": self.h.copy(), "z": self.z.copy(), "action": self.action.copy()}

    @state.setter
    def state(self, value: dict[str, np.ndarray]) -> None:
        h = self._array("state['h']", value["h"], [None, self.deter])
        z = self._array("state['z']", value["z"], [None, self.groups * self.classes])
        action = self._array("state['action']", value["action"], [None, self.action_dim]) \
            if "action" in value else np.zeros((h.shape[0], self.action_dim), np.float32)
        if not h.shape[0] == z.shape[0] == action.shape[0]:
            raise ValueError(f"state['h'], state['z'] (and state['action']) must have the "
                             f"same batch size, got {h.shape[0]}, {z.shape[0]}, "
                             f"{action.shape[0]}")
        self.h, self.z, self.action = h.copy(), z.copy(), action.copy()

    def save_state(self, path: str | os.PathLike) -> Path:
        """Writes the state (and the pinned model version, if any) to ``path`` (.npz)
        through a temporary file and a rename."""
        path = Path(path)
        buffer = io.BytesIO()
        version = {} if self.version is None else {"version": np.int64(self.version)}
        np.savez(buffer, **self.state, **version)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
        return path

    def load_state(self, path: str | os.PathLike) -> None:
        """Restores a :meth:`save_state` file; on TF Serving the episode continues on
        the version it was saved on."""
        with np.load(path) as data:
            self.state = {k: data[k] for k in ("h", "z", "action") if k in data}
            version = int(data["version"]) if "version" in data else None
        if version is not None and hasattr(self.backend, "pin_latest"):
            if getattr(self.backend, "fixed", False) and self.backend.version != version:
                raise ValueError(f"{path} was saved on version {version}, this client is "
                                 f"fixed to version {self.backend.version}")
            self.backend.version = self.version = version

    # ---------------------------------------------------------------- calls
    def observe(self, action: Any, obs: Any, sample: str = "sample",
                noise: Any = None) -> dict[str, np.ndarray]:
        """One posterior step from the current state; the state advances.

        ``action`` [B, A] (the action that led to ``obs``); ``obs``: a dict with the
        model's observation keys (``obs_space``: [B, O_k] floats for a vector key,
        [B, H, W, C_k] uint8 pixels for an image key, [B, O_k] class indices for a
        categorical key), or one array for a one-key model.
        Returns ``post_logits``, ``prior_logits`` [B, S, K] and the new ``h``, ``z``.
        """
        self._require_state()
        b = self.batch_size
        inputs = {"h": self.h, "z": self.z,
                  "action": self._array("action", action, [b, self.action_dim]),
                  **self._observation(obs, b)}
        out = self._call("obs_step", inputs, sample, noise, [b, self.groups, self.classes])
        self.h, self.z = out["h_next"], out["z_next"]
        return {"post_logits": out["post_logits"], "prior_logits": out["prior_logits"],
                "h": self.h.copy(), "z": self.z.copy()}

    def imagine(self, actions: Any, sample: str = "sample",
                noise: Any = None) -> dict[str, np.ndarray]:
        """Rolls the prior from the current state (which does not change).

        ``actions`` [B, T, A]. Returns ``reward`` [B, T], ``continue_prob`` [B, T],
        ``h_seq`` [B, T, D], ``z_seq`` [B, T, S*K]."""
        self._require_state()
        b = self.batch_size
        actions = self._array("actions", actions, [b, None, self.action_dim])
        inputs = {"h": self.h, "z": self.z, "actions": actions}
        return self._call("imagine", inputs, sample, noise,
                          [b, actions.shape[1], self.groups, self.classes])

    def imagine_step(self, action: Any, sample: str = "sample",
                     noise: Any = None) -> dict[str, np.ndarray]:
        """One prior step from the current state; the state advances."""
        self._require_state()
        b = self.batch_size
        inputs = {"h": self.h, "z": self.z,
                  "action": self._array("action", action, [b, self.action_dim])}
        out = self._call("imagine_step", inputs, sample, noise, [b, self.groups, self.classes])
        self.h, self.z = out["h_next"], out["z_next"]
        return {"prior_logits": out["prior_logits"], "h": self.h.copy(), "z": self.z.copy()}

    def decode(self) -> dict[str, np.ndarray]:
        """The model's prediction of every observation key from the current state
        (after :meth:`observe`, its reconstruction): a vector key [B, O_k] in raw
        space, an image key [B, H, W, C_k] as floats in [0, 1]."""
        self._require_state()
        if "decode" not in self.manifest["signatures"]:
            raise ServingError(f"model {self.manifest.get('name')!r} has no decode "
                               "signature (exported before it was added): re-export it")
        return self.backend.call("decode", {"h": self.h, "z": self.z})

    def predict(self) -> dict[str, np.ndarray]:
        """``reward`` [B], ``continue_prob`` [B] and their logits for the current state."""
        self._require_state()
        return self.backend.call("predict", {"h": self.h, "z": self.z})

    def plan(self, kind: str, noise: Any, top_k: int, discount: float = 0.99,
             low: Any = None, high: Any = None) -> dict[str, np.ndarray]:
        """The exported cross-entropy planner from the current state (which does not
        change): ``plan_continuous`` or ``plan_discrete`` (``kind``).

        ``noise`` [I, B, N, H, A]: I iterations of N candidate action sequences of
        horizon H (standard normal for continuous actions, uniform in (0, 1) for
        discrete ones; :class:`rssm_tf_serving.planner.ClientPlanner` draws it from a
        seed); ``top_k`` elites (<= N); ``discount`` in (0, 1]; ``low`` / ``high`` the
        finite action bounds (a number or [A]; continuous only). Returns ``action``
        [B, A] (the first planned action; one-hot for discrete), ``plan`` [B, H, A],
        ``elite_return`` [B] and ``returns`` [B, N] (the last iteration's)."""
        self._require_state()
        if kind not in ("continuous", "discrete"):
            raise ValueError(f"kind must be 'continuous' or 'discrete', got {kind!r}")
        signature = f"plan_{kind}"
        if signature not in self.manifest["signatures"]:
            raise ServingError(f"model {self.manifest.get('name')!r} has no {signature} "
                               "signature (exported before the planner, or without reward "
                               "and continue heads): re-export it")
        b = self.batch_size
        noise = self._array("noise", noise, [None, b, None, None, self.action_dim])
        candidates = noise.shape[2]
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
                or not 1 <= top_k <= candidates:
            raise ValueError(f"top_k must be an integer in [1, {candidates}] (candidates: "
                             f"noise.shape[2]), got {top_k!r}")
        if isinstance(discount, bool) or not isinstance(discount, (int, float)) \
                or not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount!r}")
        if kind == "discrete" and not np.all((noise > 0) & (noise < 1)):
            raise ValueError("noise must lie strictly between 0 and 1 for discrete actions")
        inputs = {"h": self.h, "z": self.z, "noise": noise,
                  "top_k": np.array(top_k, np.int32), "discount": np.array(discount, np.float32)}
        if kind == "continuous":
            bounds = {}
            for name, value in (("low", low), ("high", high)):
                if value is None:
                    raise ValueError(f"{name} is required for continuous actions")
                if np.ndim(value) == 0:  # one bound for every action dimension
                    value = np.full(self.action_dim, value, np.float32)
                bounds[name] = self._array(name, value, [self.action_dim])
            if np.any(bounds["low"] >= bounds["high"]):
                raise ValueError(f"low must be below high everywhere, got low={low!r}, "
                                 f"high={high!r}")
            inputs.update(bounds)
        return self.backend.call(signature, inputs)

    def act(self, obs: Any, action: Any = None, sample: str = "sample",
            noise: Any = None) -> dict[str, np.ndarray]:
        """One environment step of a deployed agent (a Dreamer's export, the ``act*``
        signatures): the posterior's mode after ``obs``, then the actor's action in
        that state; the state advances.

        ``obs`` as for :meth:`observe`; ``action`` [B, A]: the action that led to
        ``obs``, by default the one the last ``act`` returned (zeros after
        :meth:`reset`). ``sample``: "sample" (the server draws the actor's noise) or
        "mode"; or ``noise`` [B, A] (uniform in (0, 1) for a discrete actor, standard
        normal for a continuous one; reproducible). Returns ``action`` [B, A] in the
        environment's units (one-hot for a discrete actor), ``h`` and ``z``."""
        if self.actor is None and "act" not in self.manifest["signatures"]:
            raise ServingError(f"model {self.manifest.get('name')!r} has no actor (act "
                               "signatures): export a Dreamer (rssm_tf.Dreamer) checkpoint")
        self._require_state()
        b = self.batch_size
        inputs = {"h": self.h, "z": self.z,
                  "action": self._array("action", self.action if action is None else action,
                                        [b, self.action_dim]),
                  **self._observation(obs, b)}
        if noise is not None:
            inputs["noise"] = self._array("noise", noise, [b, self.action_dim])
            if (self.actor or {}).get("discrete") and (
                    np.any(inputs["noise"] <= 0) or np.any(inputs["noise"] >= 1)):
                raise ValueError("noise must lie strictly between 0 and 1 for a discrete "
                                 "actor")
            signature = "act_noise"
        elif sample in ("sample", "mode"):
            signature = "act" if sample == "sample" else "act_mode"
        else:
            raise ValueError(f"sample must be 'sample' or 'mode' (or pass noise=), got "
                             f"{sample!r}")
        out = self.backend.call(signature, inputs)
        self.h, self.z = out["h_next"], out["z_next"]
        self.action = np.asarray(out["action_next"], np.float32)
        return {"action": self.action.copy(), "h": self.h.copy(), "z": self.z.copy()}

    # -------------------------------------------------------------- helpers
    def _call(self, base: str, inputs: dict[str, np.ndarray], sample: str, noise: Any,
              noise_shape: list) -> dict[str, np.ndarray]:
        if noise is not None:
            inputs["noise"] = self._array("noise", noise, noise_shape)
            if np.any(inputs["noise"] <= 0) or np.any(inputs["noise"] >= 1):
                raise ValueError("noise must lie strictly between 0 and 1")
            return self.backend.call(f"{base}_noise", inputs)
        if sample == "mode":
            return self.backend.call(f"{base}_mode", inputs)
        if sample == "sample":
            return self.backend.call(base, inputs)
        raise ValueError(f"sample must be 'sample' or 'mode' (or pass noise=), got {sample!r}")

    def _observation(self, obs: Any, b: int) -> dict[str, np.ndarray]:
        """The checked observation inputs of ``obs_step`` for batch size ``b``."""
        keys = self.obs_keys
        if not isinstance(obs, dict):
            if len(keys) != 1:
                raise TypeError(f"obs must be a dict with keys {list(keys)} for this model, "
                                f"got {type(obs).__name__}")
            obs = {keys[0]: obs}
        missing = [k for k in keys if k not in obs]
        unknown = sorted(str(k) for k in obs if k not in keys)
        if missing or unknown:
            raise ValueError(f"obs must have the keys {list(keys)}: missing {missing}, "
                             f"unknown {unknown}")
        out = {}
        for key, (shape, dtype) in self.obs_space.items():
            if dtype == "int32":
                out[key] = self._classes(key, obs[key], [b, *shape])
                continue
            if dtype != "uint8":
                out[key] = self._array(key, obs[key], [b, *shape])
                continue
            image = np.asarray(obs[key])
            if image.dtype != np.uint8:
                raise DtypeError(f"{key} must be uint8 pixels in [0, 255], got dtype "
                                 f"{image.dtype}")
            want = [b, *shape]
            if list(image.shape) != want:
                raise ValueError(f"{key} must have shape {want}, got {list(image.shape)}")
            out[key] = np.ascontiguousarray(image)
        return out

    def _classes(self, key: str, value: Any, shape: list[int]) -> np.ndarray:
        """A categorical key's class indices as int32 (integers, or floats holding
        integers), each in [0, classes) as the manifest describes the key."""
        array = np.asarray(value)
        if array.dtype.kind not in "fiu" or not np.all(array == np.round(array)):
            raise DtypeError(f"{key} must be class indices (integers), got dtype "
                             f"{array.dtype}")
        if list(array.shape) != shape:
            raise ValueError(f"{key} must have shape {shape}, got {list(array.shape)}")
        classes = self.obs_classes.get(key)
        if classes is not None and array.size and (array.min() < 0
                                                   or array.max() >= classes):
            raise ValueError(f"{key} must hold class indices in [0, {classes}), got "
                             f"values from {array.min()} to {array.max()}")
        return np.ascontiguousarray(array.astype(np.int32))

    def _require_state(self) -> None:
        if self.h is None:
            raise RuntimeError("no state yet: call reset(batch_size) first")

    @staticmethod
    def _array(name: str, value: Any, shape: list[int | None]) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from None
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        if array.ndim != len(shape) or any(s is not None and s != d
                                           for s, d in zip(shape, array.shape)):
            raise ValueError(f"{name} must have shape {want}, got {list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or Inf values")
        return np.ascontiguousarray(array)
