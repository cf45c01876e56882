"""What the tests compare exported files with: the Keras model's own outputs.

``keras_call(model)`` runs a serving signature's inputs through the ``Rssm`` layer's
public methods, eagerly, written here from docs/design.md section 6 (not through
``rssm_tf_export.module``), so an export test never trusts the exporter's code or its own
``parity.json``. ``check_against_keras`` runs parity cases through a backend and
compares: identical ``z``, continuous outputs within 1e-5 (scaled by
``max(1, |value|)`` for decoded rewards).

``run_in_tf_serving_loader`` loads a SavedModel as TF Serving does, in a fresh Python
process in which importing ``rssm_tf`` raises, and returns every case's outputs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from rssm_tf_export.runner import litert_cases, load_arrays, make_cases, run_all, save_cases

from rssm_tf import RssmState
from rssm_tf.planning import cem, rssm_rollout

ROOT = Path(__file__).resolve().parent.parent


def keras_call(model):
    rssm = model.rssm
    keys = model.config.obs_keys

    def call(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = {k: tf.constant(v) for k, v in inputs.items()}
        kind = {"sample": False, "noise": t.get("noise")}
        if name == "predict":
            out = rssm.predict(t["h"], t["z"])
        elif name == "decode":  # design section 1: vectors back through symexp, images in
            # [0, 1], categorical keys as class probabilities
            recon = model.decoder(tf.concat([t["h"], t["z"]], -1))
            space = model.config.space
            out = {k: tf.clip_by_value(v + 0.5, 0.0, 1.0) if k in model.config.image_keys
                   else tf.nn.softmax(v) if space[k].classes
                   else tf.math.sign(v) * (tf.exp(tf.abs(v)) - 1.0) for k, v in recon.items()}
        elif name.startswith("obs_step"):
            obs = {k: t[k] for k in keys}
            state, post, prior = rssm.obs_step(RssmState(t["h"], t["z"]), t["action"], obs,
                                               **kind)
            out = {"h_next": state.h, "z_next": state.z, "post_logits": post,
                   "prior_logits": prior}
        elif name.startswith("act"):  # design section 6: the posterior's mode, the actor
            state, _, _ = rssm.obs_step(RssmState(t["h"], t["z"]), t["action"],
                                        {k: t[k] for k in keys}, sample=False)
            out = {"h_next": state.h, "z_next": state.z,
                   "action_next": actor_action(model, state.h, state.z, t.get("noise"))}
        elif name.startswith("plan_"):
            low, high = t.get("low"), t.get("high")
            out = cem(rssm_rollout(rssm), t["h"], t["z"], t["noise"], int(inputs["top_k"]),
                      float(inputs["discount"]), name.removeprefix("plan_"), low, high)
        elif name.startswith("imagine_step"):
            state, prior = rssm.imagine_step(RssmState(t["h"], t["z"]), t["action"],
                                             return_logits=True, **kind)
            out = {"h_next": state.h, "z_next": state.z, "prior_logits": prior}
        else:
            states, _ = rssm.imagine(RssmState(t["h"], t["z"]), t["actions"], **kind)
            heads = rssm.predict(states.h, states.z)
            out = {"h_seq": states.h, "z_seq": states.z, "reward": heads["reward"],
                   "continue_prob": heads["continue_prob"]}
        return {k: np.asarray(v) for k, v in out.items()}

    return call


def actor_action(model, h, z, noise=None) -> np.ndarray:
    """A Dreamer's action from its actor's distribution parameters, by the definitions
    of docs/design.md section 8: discrete, the one-hot argmax of the log-probabilities
    (plus Gumbel noise ``-log(-log(u))`` when sampled); continuous, ``mean + std *
    noise`` (the mean without noise) clipped to [-1, 1] and mapped onto the bounds."""
    params = model.actor(tf.concat([h, z], -1)).numpy().astype(np.float64)
    a = model.config.action_dim
    if model.behavior.discrete:
        scores = params if noise is None else params - np.log(-np.log(np.asarray(noise)))
        return np.eye(a, dtype=np.float32)[scores.argmax(-1)]
    mean, std = params[..., :a], params[..., a:]
    action = mean if noise is None else mean + std * np.asarray(noise)
    low, high = model.action_low, model.action_high
    return (low + (np.clip(action, -1, 1) + 1) * (high - low) / 2).astype(np.float32)


def cases_for(model, seed: int = 0, batch: int = 3, rollout: int = 5, horizon: int = 6):
    c = model.config
    dims = {k: getattr(c, k) for k in ("deterministic_size", "n_categories", "n_classes",
                                       "action_dim")}
    dims["obs_space"] = c.space.manifest()
    if getattr(model, "actor", None) is not None:
        dims["actor"] = "discrete" if model.behavior.discrete else "continuous"
    return make_cases(dims, batch, rollout, horizon, seed)


def assert_same(reference: dict, other: dict, what: str, atol: float = 1e-5) -> None:
    assert set(reference) <= set(other), (what, sorted(reference), sorted(other))
    for case, ref in reference.items():
        assert set(ref) == set(other[case]), (what, case)
        for key, value in ref.items():
            got = other[case][key]
            assert got.shape == value.shape, (what, case, key, got.shape, value.shape)
            if key in ("z_next", "z_seq"):
                np.testing.assert_array_equal(got, value, err_msg=f"{what} {case} {key}")
                assert value.sum() > 0  # real one-hot samples
            else:
                scaled = np.abs(got - value) / np.maximum(1.0, np.abs(value))
                assert scaled.max() <= atol, (what, case, key, float(scaled.max()))


def check_against_keras(model, call, what: str, seed: int = 0) -> dict:
    cases = cases_for(model, seed)
    if what == "litert":
        cases = litert_cases(cases)
    reference = run_all(keras_call(model), cases)
    assert_same(reference, run_all(call, cases), what)
    return reference


def run_in_tf_serving_loader(saved_model: Path, cases: dict, tmp_path: Path,
                             loader: str = "session") -> dict:
    """Outputs of ``cases`` from the SavedModel loaded in a fresh process without
    ``rssm_tf``: by TF Serving's path (``session``: a TF1 session, tensors by
    SignatureDef names) or by ``tf.saved_model.load`` (``tf2``)."""
    cases_path, out_path = tmp_path / "cases.npz", tmp_path / "outputs.npz"
    save_cases(cases_path, cases)
    code = ("import sys; sys.modules['rssm_tf'] = None  # importing rssm_tf now raises\n"
            "from rssm_tf_export.savedmodel_check import main\n"
            f"sys.exit(main(['--loader', {loader!r}, {str(saved_model)!r}, "
            f"{str(cases_path)!r}, {str(out_path)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = load_arrays(out_path)
    outputs.pop("__process__")  # rssm_tf is poisoned above: importing it would raise
    return outputs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest_cases(manifest: dict, seed: int = 0) -> dict:
    """Parity cases for every signature of an export, sized from its manifest."""
    c = manifest["config"]
    dims = {k: c[k] for k in ("deterministic_size", "n_categories", "n_classes", "action_dim")}
    dims["obs_space"] = manifest["obs_space"]
    if manifest.get("actor"):
        dims["actor"] = "discrete" if manifest["actor"]["discrete"] else "continuous"
    return make_cases(dims, batch=3, rollout=2, horizon=4, seed=seed)


def rest_forms_agree(out: Path, manifest: dict, url: str | None = None) -> None:
    """Every signature's inputs sent to the stand-in's REST API in columnar and in row
    format (where every input has the batch first) come back, in the form TF Serving's
    api_rest.md gives that request, as the TF Serving loader computes them; and the raw
    bodies have that form: a bare tensor (``outputs``) or rows of values
    (``predictions``) for a one-output signature, objects otherwise. ``url``: a real
    TF Serving's REST address serving the export (default: a stand-in)."""
    import contextlib

    import requests
    from rssm_tf_serving.backends import RestBackend, SessionBackend
    from rssm_tf_serving.standin import StandInServer

    name = manifest["name"]
    cases = {k: v for k, v in manifest_cases(manifest).items() if "steps" not in v}
    session = SessionBackend(out / "saved_model" / name)
    serving = contextlib.nullcontext() if url else StandInServer(
        out / "saved_model" / name, name=name, poll_seconds=0)
    with serving as server:
        base = url or server.rest_url
        columnar = RestBackend(base, model=name)
        row = RestBackend(base, model=name, request_format="row")
        url = f"{base}/v1/models/{name}:predict"
        for case in cases.values():
            signature, inputs = case["signature"], case["inputs"]
            want = session.call(signature, inputs)
            batched = all(np.ndim(v) and len(v) == 3 for v in inputs.values())
            for backend in (columnar, row) if batched else (columnar,):
                got = backend.call(signature, inputs)
                assert set(got) == set(want), (signature, backend.request_format)
                for key, value in want.items():
                    assert got[key].dtype == value.dtype, (signature, key)
                    np.testing.assert_array_equal(got[key], value, err_msg=signature)
            lists = {k: np.asarray(v).tolist() for k, v in inputs.items()}
            body = requests.post(url, json={"signature_name": signature,
                                            "inputs": lists}).json()
            assert isinstance(body["outputs"], dict) == (len(want) > 1), signature
            if batched:
                rows = [{k: v[i] for k, v in lists.items()} for i in range(3)]
                body = requests.post(url, json={"signature_name": signature,
                                                "instances": rows}).json()
                assert len(body["predictions"]) == 3
                assert isinstance(body["predictions"][0], dict) == (len(want) > 1), signature
            else:  # the client refuses row format for inputs without a common batch
                try:
                    row.call(signature, inputs)
                except ValueError as error:
                    assert "same first dimension" in str(error)
                else:
                    raise AssertionError(f"row format taken for {signature}")
