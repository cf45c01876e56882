import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import EXPORT_CONFIG
from rssm_tf_export.__main__ import main as export_main
from rssm_tf_export.exporter import (
    LITERT_ACTOR_SIGNATURES,
    LITERT_SIGNATURES,
    ONNX_SIGNATURES,
    ExportError,
    export_model,
)
from rssm_tf_export.module import ACTOR_SIGNATURES
from rssm_tf_export.module import SIGNATURES as WORLD_MODEL_SIGNATURES
from rssm_tf_export.parity import onnx_call
from rssm_tf_export.runner import make_cases, per_step_cases, run_all, run_case
from rssm_tf_serving.backends import (
    LiteRtBackend,
    OnnxBackend,
    OpenVinoBackend,
    SavedModelBackend,
)
from served import cases_for, check_against_keras, keras_call, run_in_tf_serving_loader

from rssm_tf.saving import ModelFileError, load_world_model

ROOT = Path(__file__).resolve().parent.parent
# the shared export is a Dreamer's: the world model's signatures and the actor's
SIGNATURES = WORLD_MODEL_SIGNATURES + ACTOR_SIGNATURES
ONNX_FILES = ONNX_SIGNATURES + ACTOR_SIGNATURES
LITERT_FILES = LITERT_SIGNATURES + LITERT_ACTOR_SIGNATURES


def test_tree_layout_and_manifest(exported):
    out, manifest = exported
    assert (out / "saved_model" / "wm" / "1" / "saved_model.pb").is_file()
    assert sorted(p.name for p in (out / "onnx").glob("*.onnx")) == sorted(
        f"{s}.onnx" for s in ONNX_FILES)
    assert not [p for p in out.rglob(".*") if p.name != "."]  # no temporary leftovers
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["version"] == 1 and on_disk["config"] == EXPORT_CONFIG.to_dict()
    assert set(on_disk["signatures"]) == set(SIGNATURES) | {"serving_default"}
    assert on_disk["actor"] == {"discrete": True, "noise": "uniform", "action_low": -1.0,
                                "action_high": 1.0}
    act = on_disk["signatures"]["act_noise"]
    assert act["inputs"]["noise"] == {"shape": [None, 2], "dtype": "float32"}
    assert set(act["inputs"]) == {"h", "z", "action", "obs", "noise"}
    assert set(act["outputs"]) == {"h_next", "z_next", "action_next"}
    obs_step = on_disk["signatures"]["obs_step_noise"]
    assert obs_step["inputs"]["noise"] == {"shape": [None, 4, 4], "dtype": "float32"}
    assert set(obs_step["outputs"]) == {"h_next", "z_next", "post_logits", "prior_logits"}
    for name, spec in on_disk["signatures"].items():
        assert not set(spec["inputs"]) & set(spec["outputs"]), name
    assert on_disk["versions"]["tensorflow"] == tf.__version__
    for rel, digest in on_disk["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest


def test_saved_model_cli_lists_every_signature(exported):
    out, _ = exported
    proc = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                           "show", "--dir", str(out / "saved_model" / "wm" / "1"), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = set()
    for line in proc.stdout.splitlines():
        if line.startswith("signature_def['"):
            listed.add(line.split("'")[1])
    assert listed - {"__saved_model_init_op"} == set(SIGNATURES) | {"serving_default"}
    assert "inputs['batch_size'] tensor_info:" in proc.stdout


def test_parity_report_passes_on_every_backend(exported):
    out, manifest = exported
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and manifest["parity"]["passed"]
    assert set(report["backends"]) == {"function", "xla", "savedmodel", "savedmodel_session",
                                       "onnx", "openvino", "litert"}
    fresh = report["backends"]["savedmodel"]
    assert fresh["imported_rssm_tf"] is False
    assert "imagine_noise" in fresh["signatures"]
    for backend in report["backends"].values():
        assert backend["z_identical"] and backend["max_scaled_diff"] <= 1e-5
        assert backend["max_abs_diff"] <= 1e-5  # this model's values stay below 1
        assert {"rollout_obs_step_noise", "imagine_noise", "rollout_act_noise",
                "rollout_act_noise_per_step", "act_mode"} <= set(backend["cases"])
        assert backend["chain_drift"] <= 1e-4


@pytest.mark.parametrize("loader", ["session", "tf2"])
def test_tf_serving_loader_runs_every_signature_like_the_keras_model(exported, model_path,
                                                                    tmp_path, loader):
    """In a process where rssm_tf cannot be imported: TF Serving's way (a TF1 session
    restoring the variables, tensors by the names in each SignatureDef), and
    ``tf.saved_model.load``'s; checked here against Keras, not through the exporter's
    own report."""
    out, _ = exported
    model = load_world_model(model_path, compile=False)
    cases = cases_for(model, seed=4)
    for name in SIGNATURES:  # plain sampled twins and initial_state run too
        if name == "initial_state":
            cases[name] = {"signature": name, "inputs": {"batch_size": np.array(3, np.int32)}}
        elif name in cases:
            continue  # the planners' cases are there already
        elif not name.endswith(("_noise", "_mode")) and name != "predict":
            cases[name] = {"signature": name, "inputs": cases[f"{name}_mode"]["inputs"]}
    outputs = run_in_tf_serving_loader(out / "saved_model" / "wm" / "1", cases, tmp_path,
                                       loader)
    reference = keras_call(model)
    for name, case in cases.items():
        got = outputs[name]
        if case["signature"] == "initial_state":
            assert got["h"].shape == (3, 32) and not got["h"].any() and not got["z"].any()
            continue
        if "steps" in case or not (case["signature"].endswith(("_noise", "_mode", "predict"))
                                   or case["signature"].startswith("plan_")):
            continue  # rollouts are compared below; sampled twins draw their own noise
        want = reference(case["signature"], case["inputs"])
        for key, value in want.items():
            if key.startswith("z_"):
                np.testing.assert_array_equal(got[key], value, err_msg=f"{name} {key}")
            else:
                np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=1e-5,
                                           err_msg=f"{name} {key}")
    for rollout in ("rollout_obs_step_noise", "rollout_act_noise"):
        want = run_case(reference, cases[rollout])
        np.testing.assert_array_equal(outputs[rollout]["z_next"], want["z_next"])
        np.testing.assert_allclose(outputs[rollout]["h_next"], want["h_next"], atol=1e-5)
    # the closed loop: each step's action is the actor's choice of the step before
    np.testing.assert_array_equal(outputs["rollout_act_noise"]["action_next"],
                                  want["action_next"])
    for name in ("obs_step", "imagine_step", "imagine"):  # sampled: one-hot, valid shapes
        z = outputs[name]["z_next" if name != "imagine" else "z_seq"].reshape(-1, 4, 4)
        np.testing.assert_array_equal(z.sum(-1), 1.0)
    np.testing.assert_array_equal(outputs["act"]["action_next"].sum(-1), 1.0)  # one-hot


def test_saved_model_cli_run_computes_what_keras_does(exported, model_path, tmp_path):
    out, _ = exported
    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 32)).astype(np.float32)
    z = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 4))].reshape(2, 16)
    np.save(tmp_path / "h.npy", h)
    np.save(tmp_path / "z.npy", z)
    proc = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                           "run", "--dir", str(out / "saved_model" / "wm" / "1"),
                           "--tag_set", "serve", "--signature_def", "predict",
                           "--inputs", f"h={tmp_path / 'h.npy'};z={tmp_path / 'z.npy'}",
                           "--outdir", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = keras_call(load_world_model(model_path, compile=False))("predict", {"h": h, "z": z})
    for key, value in want.items():
        np.testing.assert_allclose(np.load(tmp_path / "cli" / f"{key}.npy"), value,
                                   atol=1e-5, rtol=1e-5, err_msg=key)
    assert abs(want["reward"]).max() > 0  # trained heads: a nonzero prediction


def test_savedmodel_onnx_and_litert_compute_what_keras_does(exported, model_path):
    """Every exported form against the Keras model run eagerly in this test."""
    out, manifest = exported
    model = load_world_model(model_path, compile=False)
    assert sorted(p.name for p in (out / "litert").glob("*.tflite")) == sorted(
        f"{s}.tflite" for s in LITERT_FILES)
    assert manifest["litert"]["files"] == [f"litert/{s}.tflite" for s in LITERT_FILES]
    for what, backend in (("savedmodel", SavedModelBackend(out / "saved_model" / "wm")),
                          ("onnx", OnnxBackend(out / "onnx")),
                          ("openvino", OpenVinoBackend(out / "onnx")),
                          ("litert", LiteRtBackend(out / "litert"))):
        check_against_keras(model, backend.call, what, seed=7)
    # weights really are inside the LiteRT file: a weightless conversion was ~35 KB
    assert (out / "litert" / "predict.tflite").stat().st_size > 30_000
    # the sampled LiteRT call draws client-side noise: one-hot z, seeded, reproducible
    case = cases_for(model, seed=2)["obs_step_mode"]["inputs"]
    draws = [LiteRtBackend(out / "litert", seed=s).call("obs_step", case)["z_next"]
             for s in (5, 5, 6)]
    np.testing.assert_array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(draws[0].reshape(-1, 4, 4).sum(-1), 1.0)
    assert not np.array_equal(draws[0], draws[2])


def test_parity_check_fails_on_outputs_that_differ(exported, model_path):
    from rssm_tf_export.parity import compare

    model = load_world_model(model_path, compile=False)
    cases = cases_for(model)
    reference = run_all(keras_call(model), cases)
    assert compare(reference, reference)["passed"]
    shifted = {c: {k: (v + 1e-3 if k == "h_next" else v) for k, v in o.items()}
               for c, o in reference.items()}
    result = compare(reference, shifted)
    assert not result["passed"] and result["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    flipped = {c: {k: (v[::-1] if k == "z_next" else v) for k, v in o.items()}
               for c, o in reference.items()}
    assert not compare(reference, flipped)["z_identical"]


def _linear_actor(bias: float):
    """A stand-in ``act_noise`` for the runner: ``h' = 1.5 h + obs + bias``, ``z' = z``,
    ``action' = 2 action + noise + bias``; ``bias`` is one step's "rounding"."""
    def call(name, inputs):
        assert name == "act_noise"
        return {"h_next": 1.5 * inputs["h"] + inputs["obs"] + bias, "z_next": inputs["z"],
                "action_next": 2.0 * inputs["action"] + inputs["noise"] + bias}
    return call


def test_per_step_cases_start_each_step_from_the_reference_and_free_chains_compound():
    from rssm_tf_export.parity import CHAIN_TOLERANCE, TOLERANCE, compare

    zeros = {"h": np.zeros((1, 1)), "z": np.ones((1, 2)), "action": np.zeros((1, 1))}
    steps = {"obs": np.array([1.0, 0.0, 0.0]).reshape(3, 1, 1),
             "noise": np.array([0.5, 0.0, 0.0]).reshape(3, 1, 1)}
    cases = {"rollout_act_noise": {"signature": "act_noise", "inputs": zeros,
                                   "steps": steps}}
    reference = run_all(_linear_actor(0.0), cases)
    # by hand: h 0 -> 1 -> 1.5 -> 2.25; action 0 -> 0.5 -> 1 -> 2
    np.testing.assert_array_equal(reference["rollout_act_noise"]["h_next"].ravel(),
                                  [1.0, 1.5, 2.25])
    np.testing.assert_array_equal(reference["rollout_act_noise"]["action_next"].ravel(),
                                  [0.5, 1.0, 2.0])
    forced = per_step_cases(cases, reference)
    carry = forced["rollout_act_noise_per_step"]["carry"]
    np.testing.assert_array_equal(carry["h"].ravel(), [0.0, 1.0, 1.5])
    np.testing.assert_array_equal(carry["action"].ravel(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(carry["z"], np.ones((3, 1, 2)))
    cases.update(forced)
    reference.update(run_all(_linear_actor(0.0), forced))
    # a backend off by e per step: per step e; free-running, h' - h = e (1 + 1.5 + 2.25)
    # and the action's e (1 + 2 + 4) after three steps
    e = 4e-6
    got = run_all(_linear_actor(e), cases)
    result = compare(reference, got)
    per_step = result["cases"]["rollout_act_noise_per_step"]["max_abs_diff"]
    assert per_step == {"h_next": pytest.approx(e), "action_next": pytest.approx(e)}
    chain = result["cases"]["rollout_act_noise"]["max_scaled_diff"]
    assert chain["h_next"] == pytest.approx(e * 4.75 / 2.25)
    assert chain["action_next"] == pytest.approx(e * 7 / 2)
    assert result["max_scaled_diff"] == pytest.approx(e)
    assert result["chain_drift"] == pytest.approx(14e-6)
    assert TOLERANCE < result["chain_drift"] < CHAIN_TOLERANCE and result["passed"]
    # the per-step gate is 1e-5; the free chains' 1e-4
    assert not compare(reference, run_all(_linear_actor(3e-5), cases))["passed"]
    loose = compare(reference, run_all(_linear_actor(5e-6), cases))
    assert loose["passed"] and loose["chain_drift"] == pytest.approx(17.5e-6)
    drifting = run_all(_linear_actor(6e-5), {"rollout_act_noise": cases["rollout_act_noise"]})
    drifting.update({n: reference[n] for n in forced})  # exact per step, the chain drifts
    assert not compare(reference, drifting)["passed"]


def test_export_exits_1_when_parity_fails(model_path, tmp_path, monkeypatch, capsys):
    import rssm_tf_export.exporter
    import rssm_tf_export.parity

    real_compare, real_report = (rssm_tf_export.parity.compare,
                                 rssm_tf_export.exporter.parity_report)

    def off_by_a_little(reference, other):
        return real_compare(reference, {c: {k: v + 1e-3 if k == "h_next" else v
                                            for k, v in o.items()} for c, o in other.items()})

    def in_process_only(module, saved, onnx_dir, **kwargs):  # skip the fresh processes
        return real_report(module, None, onnx_dir, **{**kwargs, "rollout": 2, "horizon": 2})

    monkeypatch.setattr(rssm_tf_export.parity, "compare", off_by_a_little)
    monkeypatch.setattr(rssm_tf_export.exporter, "parity_report", in_process_only)
    code = export_main(["--model", str(model_path), "--out", str(tmp_path / "o"),
                        "--no-onnx"])
    assert code == 1
    assert "parity check FAILED" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert not report["passed"] and not report["backends"]["function"]["passed"]
    assert report["backends"]["function"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_rollouts_equal_between_savedmodel_and_onnx_runtime(exported):
    out, _ = exported
    loaded = tf.saved_model.load(str(out / "saved_model" / "wm" / "1"))

    def tf_call(name, inputs):
        result = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    cases = make_cases(dict(deterministic_size=32, n_categories=4, n_classes=4,
                            obs_space={"obs": {"shape": [4], "dtype": "float32"}},
                            action_dim=2),
                       batch=3, rollout=10, horizon=15, seed=9)
    ort_call = onnx_call(out / "onnx")
    for name in ("rollout_obs_step_noise", "imagine_noise", "imagine_mode"):
        a, b = run_case(tf_call, cases[name]), run_case(ort_call, cases[name])
        z_key = "z_next" if "z_next" in a else "z_seq"
        np.testing.assert_array_equal(a[z_key], b[z_key])
        assert a[z_key].sum() > 0  # real one-hot samples, not an all-zero state
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0)
    # the sampled z really depends on the noise
    flipped = dict(cases["imagine_noise"])
    flipped["inputs"] = {**flipped["inputs"], "noise": 1.0 - flipped["inputs"]["noise"]}
    assert not np.array_equal(run_case(ort_call, flipped)["z_seq"],
                              run_case(ort_call, cases["imagine_noise"])["z_seq"])


def _nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _nodes(attribute.g)


def test_every_onnx_file_opens_in_onnx_runtime_and_openvino(exported):
    import onnx
    import onnxruntime as ort
    import openvino

    out, _ = exported
    core = openvino.Core()
    for name in ONNX_FILES:
        path = out / "onnx" / f"{name}.onnx"
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version >= 17
        # standard ONNX operators only, in loop bodies too
        assert {n.domain for n in _nodes(proto.graph)} <= {"", "ai.onnx"}
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        assert {"h", "z"} <= inputs and not inputs & outputs
        compiled = core.compile_model(str(path), "CPU")  # tf2onnx's loops it refused
        assert {n for p in compiled.inputs for n in p.get_names()} == inputs


def test_onnx_conversion_names_the_failing_signature_and_writes_nothing(exported, tmp_path):
    """Two signatures in one tf2onnx process: the second does not exist, so the error
    names it and neither .onnx file (nor a temporary one) is left behind."""
    from rssm_tf_export.exporter import convert_onnx

    out, _ = exported
    target = tmp_path / "onnx"
    with pytest.raises(ExportError, match="tf2onnx failed on signature no_such_signature"):
        convert_onnx(out / "saved_model" / "wm" / "1", target,
                     ("predict", "no_such_signature"), workers=1)
    assert list(target.iterdir()) == []


def test_the_batch_converter_loads_each_saved_model_once():
    """tf2onnx loads the SavedModel for every signature; the batch converter hands it
    the first load again for the same path and tags (the files it converts are checked
    against Keras by the parity tests), and loads anew for another path or tags."""
    from rssm_tf_export.tf2onnx_batch import _loaded_once

    calls = []

    def load(export_dir, tags=None, options=None):
        calls.append((export_dir, tags))
        return object()

    load_once = _loaded_once(load)
    first = load_once("/m/1", tags=["serve"])
    assert load_once("/m/1", tags=["serve"]) is first
    assert load_once("/m/2", tags=["serve"]) is not first
    assert load_once("/m/1", tags=None) is not first
    assert calls == [("/m/1", ["serve"]), ("/m/2", ["serve"]), ("/m/1", None)]


def test_next_version_and_no_overwrite(model_path, tmp_path):
    for expected in (1, 2):
        manifest = export_model(model_path, tmp_path, name="wm", onnx=False, parity=False,
                                verbose=False)
        assert manifest["version"] == expected
        assert (tmp_path / "saved_model" / "wm" / str(expected)).is_dir()
    with pytest.raises(ExportError, match="version 1 already exists"):
        export_model(model_path, tmp_path, name="wm", version=1, onnx=False, parity=False,
                     verbose=False)


def test_interrupted_export_leaves_no_partial_version(model_path, tmp_path):
    out = tmp_path / "out"
    model_dir = out / "saved_model" / "rssm"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "export", "--model", str(model_path),
                             "--out", str(out), "--no-onnx", "--no-parity"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if model_dir.is_dir() and any(p.name.startswith(".tmp-") for p in model_dir.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it was killed"
    assert [p.name for p in model_dir.iterdir() if p.name.isdigit()] == []
    # the next export ignores the leftover and writes a complete version 1
    manifest = export_model(model_path, out, onnx=False, parity=False, verbose=False)
    assert manifest["version"] == 1
    assert tf.saved_model.load(str(model_dir / "1")).signatures["predict"] is not None


def test_clear_errors(model_path, tmp_path, capsys):
    with pytest.raises(ModelFileError, match="no such model file"):
        export_model(tmp_path / "missing.keras", tmp_path / "o", verbose=False)
    (tmp_path / "model.txt").write_text("not a model")
    with pytest.raises(ModelFileError, match=r"expected a \.keras file"):
        export_model(tmp_path / "model.txt", tmp_path / "o", verbose=False)
    with pytest.raises(ModelFileError, match="is a directory"):
        export_model(tmp_path, tmp_path / "o", verbose=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="not writable"):
        export_model(model_path, blocker / "sub", verbose=False)
    with pytest.raises(ExportError, match="--name"):
        export_model(model_path, tmp_path / "o", name="a/b", verbose=False)
    assert export_main(["--model", str(tmp_path / "missing.keras"), "--out",
                        str(tmp_path / "o")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_a_continuous_actor_exports_with_its_action_bounds(tmp_path):
    """A continuous Dreamer's ``act`` in TF Serving's loader and ONNX Runtime against
    the Keras actor: mean + std * noise, clipped to [-1, 1] and mapped onto the bounds."""
    from rssm_tf_export.exporter import convert_onnx, save_version
    from rssm_tf_export.module import InferenceModule

    from rssm_tf import BehaviorConfig, Dreamer

    model = Dreamer(EXPORT_CONFIG, BehaviorConfig(discrete=False, layers=2, units=16),
                    action_low=-2.0, action_high=0.5, seed=1)
    saved = save_version(InferenceModule(model), tmp_path / "sm", 1)
    convert_onnx(saved, tmp_path / "onnx", ("act_noise", "act_mode"), workers=1)
    cases = {k: v for k, v in cases_for(model, seed=3, batch=8).items()
             if v["signature"].startswith("act")}
    assert set(cases) == {"act_noise", "act_mode", "rollout_act_noise", "rollout_act_mode"}
    reference = run_all(keras_call(model), cases)
    taken = reference["rollout_act_noise"]["action_next"]
    assert taken.min() == -2.0 and taken.max() == 0.5  # the clipped draws hit both bounds
    assert np.all(np.abs(reference["act_mode"]["action_next"] + 0.75) < 0.1)  # mean ~ 0
    for what, outputs in (("session", run_in_tf_serving_loader(saved, cases, tmp_path)),
                          ("onnx", run_all(onnx_call(tmp_path / "onnx"), cases))):
        for case, want in reference.items():
            np.testing.assert_array_equal(outputs[case]["z_next"], want["z_next"])
            for key in ("h_next", "action_next"):
                np.testing.assert_allclose(outputs[case][key], want[key], atol=1e-5,
                                           err_msg=f"{what} {case} {key}")


@pytest.mark.slow
def test_exported_planner_selects_and_refits_elites_as_keras_does(tmp_path):
    """Several CEM iterations keeping ``top_k`` < candidates: the exported elite
    selection and refit run in TF Serving's SavedModel and in ONNX Runtime, and pick
    what Keras picks. The reward head's weights are drawn large so that candidates
    rank; the case is checked to be decidable (the returns around the k-th best differ
    by far more than float32 rounding, or are one sequence drawn twice)."""
    from rssm_tf_export.exporter import convert_onnx, describe_signatures, save_version
    from rssm_tf_export.module import InferenceModule
    from rssm_tf_serving.backends import SessionBackend
    from rssm_tf_serving.client import WorldModelClient
    from rssm_tf_serving.planner import ClientPlanner

    from rssm_tf import WorldModel
    from rssm_tf.planning import Planner

    model = WorldModel(EXPORT_CONFIG, seed=2)
    rng = np.random.default_rng(0)
    for w in model.rssm.reward_head.weights:
        w.assign(rng.normal(0.0, 0.5, w.shape).astype("f"))
    saved = save_version(InferenceModule(model), tmp_path / "sm", 1)
    convert_onnx(saved, tmp_path / "onnx", ("obs_step_mode", "plan_continuous", "plan_discrete"),
                 workers=1)
    manifest = {"name": "rssm", "config": model.config.to_dict(),
                "signatures": describe_signatures(saved)}
    clients = {"onnx": WorldModelClient(OnnxBackend(tmp_path / "onnx"), manifest),
               "session": WorldModelClient(SessionBackend(saved), manifest)}
    obs = rng.normal(size=(3, 2, 4)).astype("f")
    actions = rng.uniform(-1, 1, (3, 2, 2)).astype("f")
    for kind in ("continuous", "discrete"):
        for iterations in (1, 2):  # the same draws: each run extends the one before
            fields = dict(horizon=5, candidates=24, top_k=4, iterations=iterations,
                          kind=kind, low=-1.0, high=1.0, discount=0.9, seed=11)
            keras_planner = Planner(model, **fields)
            keras_planner.reset(2)
            for t in range(3):
                keras_planner.observe(actions[t], {"obs": obs[t]})
            want = keras_planner.plan_details()
            ranked = -np.sort(-want["returns"], axis=1)
            gap = ranked[:, 3] - ranked[:, 4]  # between the 4th best and the 5th
            # a gap of exactly 0 is one action sequence drawn twice (the discrete refit
            # concentrates the draws): either copy makes the same elite set
            assert np.all((gap > 1e-4) | (gap == 0)), (kind, iterations, gap)
            if iterations == 1:
                assert np.all(gap > 1e-4), (kind, gap)
            for name, client in clients.items():
                planner = ClientPlanner(client, **fields)
                planner.reset(2)
                for t in range(3):
                    planner.observe(actions[t], obs[t])
                got = planner.plan_details()
                for key, value in want.items():
                    np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=1e-5,
                                               err_msg=f"{name} {kind} {iterations} {key}")
