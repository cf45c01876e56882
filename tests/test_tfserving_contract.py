"""The stand-in server and the REST/gRPC clients held to TF Serving's documents.

The contract is TF Serving's ``g3doc/api_rest.md`` (request and response forms, JSON
mapping, NaN tokens, error bodies) and, where it is silent, its ``util/json_tensor.cc``
and batching session: the expected values here are written from those documents by
hand, not taken from the code under test. The version, fault and batching tests run
the stand-in on copies of a SavedModel-only export of the shared export's model sizes.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from rssm_tf_serving.backends import (
    GrpcBackend,
    RestBackend,
    ServingError,
    SessionBackend,
    read_predict_response,
)
from rssm_tf_serving.client import WorldModelClient
from rssm_tf_serving.standin import (
    Batching,
    InvalidArgument,
    StandInServer,
    VersionPolicy,
    parse_predict_body,
    predict_body,
    read_json,
    read_model_config,
)
from served import free_port, rest_forms_agree

ROOT = Path(__file__).resolve().parent.parent
F32, U8 = np.dtype(np.float32), np.dtype(np.uint8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(out, manifest)``: the shared export's model (an untrained Dreamer of its
    sizes, so every signature is there, the actor's too) exported as a SavedModel only:
    what a TF Serving server serves, without the ONNX/LiteRT conversions and the parity
    run, so these tests do not wait for (or add to) the shared export's worker."""
    from conftest import EXPORT_BEHAVIOR, EXPORT_CONFIG
    from rssm_tf_export.exporter import export_model

    from rssm_tf import Dreamer
    from rssm_tf.saving import save_world_model

    root = tmp_path_factory.mktemp("served")
    model = Dreamer(EXPORT_CONFIG, EXPORT_BEHAVIOR, seed=4)
    model.compile()
    path = save_world_model(model, root / "model.keras")
    manifest = export_model(path, root / "export", name="wm", onnx=False, litert=False,
                            parity=False, verbose=False)
    return root / "export", manifest


# ------------------------------------------------------------ the documented forms
def parse(text: str, specs: dict) -> tuple[dict, str]:
    return parse_predict_body(read_json(text.encode()), specs)


def test_row_and_columnar_requests_as_api_rest_md_writes_them():
    # api_rest.md's three-input example (numbers for its string "tag"), row and columnar
    specs = {"tag": (F32, [None]), "signal": (F32, [None, 5]), "sensor": (U8, [None, 2, 2])}
    row = """{"instances": [
        {"tag": 1, "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": 2, "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}"""
    columnar = """{"inputs": {"tag": [1, 2], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                   "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}"""
    want = {"tag": np.array([1, 2], F32),
            "signal": np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]], F32),
            "sensor": np.array([[[1, 2], [3, 4]], [[4, 5], [6, 8]]], U8)}
    for text, form in ((row, "row"), (columnar, "columnar")):
        got, got_form = parse(text, specs)
        assert got_form == form
        for key, value in want.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value)
    # one named input: the value itself, a list of 2 tensors of shape [1, 2]
    got, _ = parse('{"instances": [[[1, 2]], [[3, 4]]]}', {"x": (F32, [None, 1, 2])})
    np.testing.assert_array_equal(got["x"], np.array([[[1, 2]], [[3, 4]]], F32))
    got, _ = parse('{"inputs": [[1.5, -2]]}', {"x": (F32, [None, 2])})
    np.testing.assert_array_equal(got["x"], np.array([[1.5, -2]], F32))
    got, _ = parse('{"inputs": 3}', {"batch_size": (np.dtype(np.int32), [])})
    assert got["batch_size"].shape == () and got["batch_size"] == 3


def test_nan_and_infinity_tokens_both_ways():
    got, _ = parse('{"inputs": {"x": [NaN, Infinity, -Infinity, 1e-3]}}', {"x": (F32, [4])})
    assert np.isnan(got["x"][0]) and got["x"][1] == np.inf and got["x"][2] == -np.inf
    assert got["x"][3] == np.float32(1e-3)
    body = json.dumps(predict_body({"y": np.array([np.nan, np.inf, -np.inf], F32)},
                                   "columnar"))
    assert body == '{"outputs": [NaN, Infinity, -Infinity]}'
    # the client reads the tokens in every documented answer form
    for text in ('{"outputs": [NaN, Infinity, -Infinity]}',
                 '{"outputs": {"y": [NaN, Infinity, -Infinity]}}',
                 '{"predictions": [NaN, Infinity, -Infinity]}',
                 '{"predictions": [{"y": NaN}, {"y": Infinity}, {"y": -Infinity}]}'):
        y = read_predict_response(json.loads(text), {"y": F32})["y"]
        assert y.dtype == F32 and np.isnan(y[0]) and list(y[1:]) == [np.inf, -np.inf], text


def test_every_documented_answer_form_is_read():
    outputs = {"a": F32, "b": np.dtype(np.int32)}
    a = np.array([[3.5, 4.0], [5.5, 0.25]], F32)
    b = np.array([1, 2], np.int32)
    for text in ('{"outputs": {"a": [[3.5, 4.0], [5.5, 0.25]], "b": [1, 2]}}',
                 '{"predictions": [{"a": [3.5, 4.0], "b": 1}, {"a": [5.5, 0.25], "b": 2}]}'):
        got = read_predict_response(json.loads(text), outputs)
        np.testing.assert_array_equal(got["a"], a)
        assert got["b"].dtype == np.int32 and got["b"].tolist() == [1, 2]
    # the document's half_plus_three answer: one output, its name omitted
    got = read_predict_response(json.loads('{"predictions": [3.5, 4.0, 5.5]}'), {"y": F32})
    np.testing.assert_array_equal(got["y"], np.array([3.5, 4.0, 5.5], F32))
    with pytest.raises(ServingError, match="outputs"):
        read_predict_response({"outputs": [1.0]}, outputs)  # bare, but two outputs
    with pytest.raises(ServingError, match=r"'outputs' or 'predictions'"):
        read_predict_response({"error": "x"}, outputs)
    # the stand-in writes each form as json_tensor.cc does
    assert predict_body({"a": a, "b": b}, "row") == {
        "predictions": [{"a": [3.5, 4.0], "b": 1}, {"a": [5.5, 0.25], "b": 2}]}
    assert predict_body({"a": a}, "row") == {"predictions": [[3.5, 4.0], [5.5, 0.25]]}
    assert predict_body({"a": a}, "columnar") == {"outputs": [[3.5, 4.0], [5.5, 0.25]]}
    with pytest.raises(InvalidArgument, match="inconsistent batch size: 2 expecting: 3"):
        predict_body({"a": np.zeros((3, 1), F32), "b": b}, "row")


@pytest.mark.parametrize("text, words", [
    ("", "The document is empty"),
    ("[1, 2]", "Is not object"),
    ('{"instances": [1], "inputs": [1]}', "only one of 'inputs' or 'instances'"),
    ('{"signature_name": "x"}', "Missing 'inputs' or 'instances' key"),
    ('{"instances": []}', "No values in 'instances' array"),
    ('{"instances": {"a": 1}}', "to be an list/array"),
    ('{"instances": [[1, 2], [3, 4]]}', "instances is a plain list, but expecting list of objects"),
    ('{"instances": [{"a": [1], "b": [2]}, [1]]}', "Expecting object but got list at item 1"),
    ('{"instances": [{"a": [1]}]}', "keys must be equal to: a,b"),
    ('{"inputs": [1, 2]}', "inputs is a plain value/list, but expecting an object"),
    ('{"inputs": {"a": [[1]]}}', "Missing named input: b"),
    ('{"inputs": {"a": [[1, 2], [3]], "b": [[1]]}}', "Encountered list at unexpected size"),
    ('{"inputs": {"a": [[1]], "b": [[2.5]]}}', "is not of expected type: uint8"),
    ('{"inputs": {"a": [[1]], "b": [[300]]}}', "is not of expected type: uint8"),
    ('{"inputs": {"a": [[true]], "b": [[1]]}}', "is not of expected type: float32"),
])
def test_malformed_requests_get_tf_servings_messages(text, words):
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse(text, {"a": (F32, [None, 1]), "b": (U8, [None, 1])})


def test_every_signature_in_both_formats_through_rest(served):
    out, manifest = served
    rest_forms_agree(out, manifest)


# --------------------------------------------------------------------- versions
def write_version(export_out: Path, base: Path, version: int, scale: float = 1.0) -> Path:
    """A copy of the served export's SavedModel as ``base/version``; ``scale`` != 1
    multiplies every float variable in its checkpoint (different weights, same graph)."""
    src = next(p for p in (export_out / "saved_model" / "wm").iterdir() if p.name.isdigit())
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    if scale != 1.0:
        prefix = str(tmp / "variables" / "variables")
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_dtype_map())
        tensors = [reader.get_tensor(n) for n in names]
        tensors = [t * np.asarray(scale, t.dtype) if getattr(t, "dtype", None) is not None
                   and t.dtype.kind == "f" else t for t in tensors]
        for path in (tmp / "variables").iterdir():
            path.unlink()
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                          shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(t) for t in tensors])
    (base / str(version)).parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(base / str(version))  # whole, as TF Serving's users are told to copy
    return base / str(version)


def step_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (1, 2)).astype("f"), rng.normal(size=(1, 4)).astype("f")


def reference_episode(path: Path, steps: int) -> list[np.ndarray]:
    """``h`` after each ``obs_step_mode`` of ``step_inputs(t)``, run by TF Serving's loader."""
    session = SessionBackend(path)
    h, z = np.zeros((1, 32), "f"), np.zeros((1, 16), "f")
    trace = []
    for t in range(steps):
        action, obs = step_inputs(t)
        out = session.call("obs_step_mode", {"h": h, "z": z, "action": action, "obs": obs})
        h, z = out["h_next"], out["z_next"]
        trace.append(h)
    return trace


def statuses(server: StandInServer) -> dict[str, tuple[str, str]]:
    body = requests.get(f"{server.rest_url}/v1/models/wm").json()
    return {s["version"]: (s["state"], s["status"]["error_message"])
            for s in body["model_version_status"]}


def test_half_copied_empty_or_corrupt_versions_are_refused_and_the_served_one_stays(
        served, tmp_path):
    out, _ = served
    base = tmp_path / "wm"
    write_version(out, base, 1)
    with StandInServer(base, name="wm", poll_seconds=0) as server:
        # a copy in progress: saved_model.pb there, the variables not yet
        half = base / "2"
        half.mkdir()
        src = next(p for p in (out / "saved_model" / "wm").iterdir() if p.name.isdigit())
        shutil.copy(src / "saved_model.pb", half / "saved_model.pb")
        server.poll()  # first sight: not loaded until its files hold still for a poll
        assert statuses(server) == {"1": ("AVAILABLE", "")}
        server.poll()  # still incomplete after a poll: tried, refused by name
        state, message = statuses(server)["2"]
        assert state == "END" and "version 2" in message and str(half) in message
        assert server.version == 1
        (base / "3").mkdir()  # empty
        (base / "4").mkdir()
        (base / "4" / "saved_model.pb").write_bytes(b"not a protocol buffer")
        for _ in range(3):  # seen; 4 (the newest) tried and refused; then 3
            server.poll()
        got = statuses(server)
        assert got["1"] == ("AVAILABLE", "")
        assert "Could not find SavedModel" in got["3"][1] and str(base / "3") in got["3"][1]
        assert got["4"][0] == "END" and "version 4" in got["4"][1]
        # the served version answers every client meanwhile
        client = WorldModelClient.from_export(out, "rest", url=server.rest_url)
        client.reset(1)
        assert client.version == 1
        client.observe(*step_inputs(0), sample="mode")
        # the copy completes: loaded once it holds still, then version 1 leaves
        shutil.rmtree(half)
        write_version(out, base, 2)
        server.poll()
        assert server.version == 1
        server.poll()
        assert server.version == 2 and statuses(server)["1"] == ("END", "")
        # a fixed client asking for the unloaded version 1 gets TF Serving's 404
        fixed = WorldModelClient.from_export(out, "grpc", target=server.grpc_target, version=1)
        fixed.reset(1)
        with pytest.raises(ServingError, match=r"NOT_FOUND.*Specific\(wm, 1\)"):
            fixed.predict()


def test_a_version_loaded_mid_episode_does_not_continue_the_old_state(served, tmp_path):
    """The watcher loads version 2 (other weights) while an episode runs on version 1:
    with two versions kept the episode ends on version 1's weights; once version 1 is
    unloaded its calls fail naming it, and reset() moves to version 2."""
    out, _ = served
    base = tmp_path / "wm"
    write_version(out, base, 1)
    v2 = tmp_path / "staging" / "wm"
    write_version(out, v2, 2, scale=1.25)
    want1 = reference_episode(base / "1", 4)
    want2 = reference_episode(v2 / "2", 2)
    assert np.abs(want1[1] - want2[1]).max() > 1e-3  # the weights differ in the outputs
    with StandInServer(base, name="wm", policy=VersionPolicy("latest", 2),
                       poll_seconds=0.05) as server:
        clients = {"rest": WorldModelClient.from_export(out, "rest", url=server.rest_url),
                   "grpc": WorldModelClient.from_export(out, "grpc",
                                                        target=server.grpc_target)}
        for client in clients.values():
            client.reset(1)
            assert client.version == 1
            client.observe(*step_inputs(0), sample="mode")
        shutil.move(v2 / "2", base / "2")  # version 2 arrives, whole, mid-episode
        deadline = time.time() + 60
        while server.loaded.keys() != {1, 2} and time.time() < deadline:
            time.sleep(0.05)
        assert server.loaded.keys() == {1, 2}
        for name, client in clients.items():
            for t in range(1, 4):
                client.observe(*step_inputs(t), sample="mode")
            np.testing.assert_array_equal(client.h, want1[3], err_msg=name)
        # keep only the newest: version 1 leaves, its episode cannot go on silently
        server.policy = VersionPolicy("latest", 1)
        server.poll()
        assert server.loaded.keys() == {2}
        for client in (WorldModelClient.from_export(out, "rest", url=server.rest_url),
                       WorldModelClient.from_export(out, "grpc", target=server.grpc_target)):
            client.state = {"h": np.zeros((1, 32), "f"), "z": np.zeros((1, 16), "f")}
            client.version = client.backend.version = 1  # an episode started on version 1
            with pytest.raises(ServingError, match="Version 1 of 'wm'.*reset\\(\\) starts a new"):
                client.observe(*step_inputs(0), sample="mode")
            client.reset(1)
            assert client.version == 2
            for t in range(2):
                client.observe(*step_inputs(t), sample="mode")
            np.testing.assert_allclose(client.h, want2[1], atol=1e-6)


def test_models_config_and_batching_config_are_read(tmp_path):
    config = tmp_path / "models.config"
    config.write_text((ROOT / "serving" / "models.config").read_text()
                      .replace("/models/rssm", "versions").replace("num_versions: 1",
                                                                   "num_versions: 3"))
    name, base, policy = read_model_config(config)
    assert (name, base, policy) == ("rssm", tmp_path / "versions", VersionPolicy("latest", 3))
    assert policy.aspired([4, 1, 7, 2]) == [2, 4, 7]
    config.write_text('model_config_list { config { name: "m" base_path: "/x" '
                      'model_platform: "tensorflow" model_version_policy { specific { '
                      'versions: 2 versions: 5 } } } }')
    _, _, policy = read_model_config(config)
    assert policy.aspired([1, 2, 3, 5]) == [2, 5]
    assert VersionPolicy("all").aspired([3, 1]) == [1, 3]
    assert Batching.read(ROOT / "serving" / "batching.config") == Batching(64, 1000, 256, 2)
    with pytest.raises(ValueError, match="num_versions must be >= 1"):
        VersionPolicy("latest", 0)


# ----------------------------------------------------------------------- faults
def start_standin_process(base: Path, rest_port: int, grpc_port: int) -> subprocess.Popen:
    """The stand-in in its own process (``python -m rssm_tf_serving.standin``), once it
    answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "rssm_tf_serving.standin",
                             "--model-base-path", str(base), "--model-name", "wm",
                             "--rest-port", str(rest_port), "--port", str(grpc_port),
                             "--poll-seconds", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving wm version"), line
    return proc


def test_server_killed_and_restarted_mid_episode(served, tmp_path):
    """SIGKILL of the server process mid-episode: each client's next call fails after
    its bounded retries, naming the address, and changes nothing; a restarted server
    and the saved state continue the episode where it stopped."""
    out, _ = served
    base = out / "saved_model" / "wm"
    rest_port, grpc_port = free_port(), free_port()
    want = reference_episode(next(p for p in base.iterdir() if p.name.isdigit()), 5)
    server = start_standin_process(base, rest_port, grpc_port)
    try:
        clients = {"rest": WorldModelClient.from_export(
                       out, "rest", url=f"http://127.0.0.1:{rest_port}", retries=2,
                       backoff=0.01, timeout=2),
                   "grpc": WorldModelClient.from_export(
                       out, "grpc", target=f"127.0.0.1:{grpc_port}", retries=2, backoff=0.01,
                       timeout=2)}
        for name, client in clients.items():
            client.reset(1)
            for t in range(3):
                client.observe(*step_inputs(t), sample="mode")
            client.save_state(tmp_path / f"{name}.npz")
        server.kill()
        server.wait(30)
        for name, client in clients.items():
            started = time.time()
            with pytest.raises(ServingError, match=r"cannot reach TF Serving at .* after 3 "
                                                   "attempt"):
                client.observe(*step_inputs(3), sample="mode")
            assert time.time() - started < 10, name  # bounded: 3 attempts, short backoff
            np.testing.assert_array_equal(client.h, want[2])  # the failed step changed nothing
        server = start_standin_process(base, rest_port, grpc_port)
        for name, client in clients.items():
            resumed = WorldModelClient.from_export(out, name, **(
                {"url": f"http://127.0.0.1:{rest_port}"} if name == "rest"
                else {"target": f"127.0.0.1:{grpc_port}"}))
            resumed.load_state(tmp_path / f"{name}.npz")
            assert resumed.version == client.version
            for t in (3, 4):
                resumed.observe(*step_inputs(t), sample="mode")
            np.testing.assert_allclose(resumed.h, want[4], atol=1e-6, err_msg=name)
            for t in (3, 4):  # and the client that saw the failure reconnects and goes on
                client.observe(*step_inputs(t), sample="mode")
            np.testing.assert_allclose(client.h, want[4], atol=1e-6, err_msg=name)
    finally:
        server.kill()
        server.wait(30)


def test_bad_requests_get_tf_servings_errors_and_others_are_served(served):
    out, _ = served
    with StandInServer(out / "saved_model" / "wm", name="wm", poll_seconds=0) as server:
        url = f"{server.rest_url}/v1/models/wm:predict"
        h, z = np.zeros((1, 32), "f"), np.zeros((1, 16), "f")
        good = {"h": h, "z": z}
        want = SessionBackend(out / "saved_model" / "wm").call("predict", good)
        errors: list = []
        stop = threading.Event()

        def well_behaved(backend):
            while not stop.is_set():
                got = backend.call("predict", good)
                if not np.array_equal(got["reward"], want["reward"]):
                    errors.append(got)

        workers = [threading.Thread(target=well_behaved, args=(b,)) for b in
                   (RestBackend(server.rest_url, model="wm"),
                    GrpcBackend(server.grpc_target, model="wm"))]
        for worker in workers:
            worker.start()
        try:
            for body, code, words in (
                    ({"signature_name": "predict", "inputs": {"h": [[1.0] * 5], "z": z.tolist()}},
                     400, "shape"),
                    ({"signature_name": "predict", "inputs": {"h": h.tolist()}}, 400,
                     "Missing named input: z"),
                    ({"signature_name": "nope", "inputs": good}, 404,
                     'Serving signature name: "nope" not found'),
                    ({"signature_name": 3, "inputs": {}}, 400, "'signature_name' key must be")):
                body = {**body, "inputs": {k: np.asarray(v).tolist()
                                           for k, v in body["inputs"].items()}}
                response = requests.post(url, json=body)
                assert response.status_code == code and words in response.json()["error"]
            response = requests.post(url, data=b"{not json")
            assert response.status_code == 400 and "JSON Parse error" in response.json()["error"]
            grpc = GrpcBackend(server.grpc_target, model="wm", retries=0)
            with pytest.raises(ServingError, match="INVALID_ARGUMENT.*Expects arg h to be "
                                                   "float32 but int32 is provided"):
                grpc.call("predict", {"h": h.astype(np.int32), "z": z})
            with pytest.raises(ServingError, match="INVALID_ARGUMENT.*shape"):
                grpc.call("predict", {"h": np.zeros((1, 5), "f"), "z": z})
            with pytest.raises(ServingError, match="NOT_FOUND.*nope"):
                grpc.call("nope", good)
            rest_pinned = RestBackend(server.rest_url, model="wm", version=7)
            with pytest.raises(ServingError, match=r"HTTP 404.*Specific\(wm, 7\)"):
                rest_pinned.call("predict", good)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert not errors


# --------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_as_batching_config_says(served):
    out, _ = served
    params = Batching(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    session = SessionBackend(out / "saved_model" / "wm")
    rng = np.random.default_rng(0)
    inputs = [{"h": rng.normal(size=(1, 32)).astype("f"), "z": np.eye(16, dtype="f")[[i]]}
              for i in range(8)]
    with StandInServer(out / "saved_model" / "wm", name="wm", poll_seconds=0,
                       batching=params) as server:
        runs = []
        backend = server.loaded[server.version]
        original = backend.call

        def counted(signature, feed):
            runs.append(len(feed["h"]))
            return original(signature, feed)

        backend.call = counted
        results: dict = {}
        barrier = threading.Barrier(8)

        def one(i):
            client = GrpcBackend(server.grpc_target, model="wm")
            barrier.wait()
            results[i] = client.call("predict", inputs[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(runs) == 8 and len(runs) < 8, runs  # merged into fewer session runs
        for i in range(8):
            want = session.call("predict", inputs[i])
            for key, value in want.items():
                np.testing.assert_allclose(results[i][key], value, atol=1e-6)
        # as TF Serving's batching session: every input batched on its first axis
        grpc = GrpcBackend(server.grpc_target, model="wm", retries=0)
        with pytest.raises(ServingError, match="at least one dimension"):
            grpc.call("initial_state", {"batch_size": np.array(2, np.int32)})
        with pytest.raises(ServingError, match="must have equal 0th-dimension size"):
            grpc.call("predict", {"h": np.zeros((2, 32), "f"), "z": np.zeros((3, 16), "f")})
        with pytest.raises(ServingError, match="Task size 9 is larger than maximum input "
                                               "batch size 8"):
            grpc.call("predict", {"h": np.zeros((9, 32), "f"), "z": np.zeros((9, 16), "f")})
