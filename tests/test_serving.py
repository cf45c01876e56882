import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rssm_tf_serving.backends import (
    GrpcBackend,
    OnnxBackend,
    RestBackend,
    ServingError,
    SessionBackend,
)
from rssm_tf_serving.client import WorldModelClient
from rssm_tf_serving.standin import StandInServer
from served import free_port, rest_forms_agree

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(exported):
    out, _ = exported
    with StandInServer(out / "saved_model" / "wm", name="wm") as running:
        yield running


@pytest.fixture(scope="module")
def clients(exported, server):
    out, _ = exported
    return {"onnx": WorldModelClient.from_export(out, "onnx"),
            "openvino": WorldModelClient.from_export(out, "openvino"),
            "litert": WorldModelClient.from_export(out, "litert", seed=0),
            "savedmodel": WorldModelClient.from_export(out, "savedmodel"),
            "rest": WorldModelClient.from_export(out, "rest", url=server.rest_url),
            "grpc": WorldModelClient.from_export(out, "grpc", target=server.grpc_target)}


def episode(client, seed=0, steps=6, batch=3):
    rng = np.random.default_rng(seed)
    return {"action": rng.uniform(-1, 1, (steps, batch, client.action_dim)).astype("f"),
            "obs": rng.normal(size=(steps, batch, *client.obs_space["obs"][0])).astype("f"),
            "noise": rng.uniform(0.01, 0.99, (steps, batch, client.groups, client.classes)
                                 ).astype("f"),
            "actions": rng.uniform(-1, 1, (batch, 7, client.action_dim)).astype("f"),
            "noise_seq": rng.uniform(0.01, 0.99, (batch, 7, client.groups, client.classes)
                                     ).astype("f")}


def rollout(client, data, sample):
    client.reset(3)
    trace = []
    for t in range(len(data["obs"])):
        noise = data["noise"][t] if sample == "noise" else None
        out = client.observe(data["action"][t], data["obs"][t], sample="mode", noise=noise)
        trace.append({**out, **client.predict()})
    noise = data["noise_seq"] if sample == "noise" else None
    trace.append(client.imagine(data["actions"], sample="mode", noise=noise))
    return trace


@pytest.mark.parametrize("sample", ["mode", "noise"])
def test_every_backend_agrees_over_a_rollout(clients, sample):
    data = episode(clients["onnx"])
    reference = rollout(clients["onnx"], data, sample)
    assert reference[-1]["z_seq"].sum() == 3 * 7 * clients["onnx"].groups  # one-hot
    for name in ("openvino", "litert", "savedmodel", "rest", "grpc"):
        trace = rollout(clients[name], data, sample)
        for step, (a, b) in enumerate(zip(reference, trace)):
            assert set(a) == set(b), name
            for key in a:
                if key in ("z", "z_seq"):
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {step}")
                else:
                    np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0,
                                               err_msg=f"{name} step {step} {key}")


def test_server_side_sampling_runs_on_every_backend(clients):
    data = episode(clients["onnx"], seed=1)
    for client in clients.values():
        client.reset(3)
        out = client.observe(data["action"][0], data["obs"][0])  # sample="sample"
        z = out["z"].reshape(3, client.groups, client.classes)
        np.testing.assert_array_equal(z.sum(-1), 1.0)
        dream = client.imagine(data["actions"])
        assert dream["reward"].shape == (3, 7) and dream["continue_prob"].shape == (3, 7)


def test_state_can_be_read_saved_and_restored(clients, tmp_path):
    client = clients["onnx"]
    data = episode(client, seed=2)
    client.reset(3)
    client.observe(data["action"][0], data["obs"][0], noise=data["noise"][0])
    saved = client.save_state(tmp_path / "state.npz")
    first = client.observe(data["action"][1], data["obs"][1], noise=data["noise"][1])
    client.load_state(saved)
    again = client.observe(data["action"][1], data["obs"][1], noise=data["noise"][1])
    np.testing.assert_array_equal(first["h"], again["h"])
    snapshot = client.state
    snapshot["h"][:] = 99.0  # a copy: the client's state is untouched
    assert not np.any(client.state["h"] == 99.0)
    with pytest.raises(ValueError, match=r"state\['h'\] must have shape \[\?, 32\]"):
        client.state = {"h": np.zeros((3, 5)), "z": np.zeros((3, 16))}


def test_unreachable_servers_name_the_address(exported):
    """reset() asks the server for its newest version (the episode's pin), so an
    unreachable server is named there, after the bounded retries."""
    out, _ = exported
    port = free_port()
    rest = WorldModelClient.from_export(out, "rest", url=f"http://127.0.0.1:{port}",
                                        retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ServingError, match=f"cannot reach TF Serving at http://127.0.0.1:{port}"
                                           " after 2 attempt"):
        rest.reset(1)
    grpc_client = WorldModelClient.from_export(out, "grpc", target=f"127.0.0.1:{port}",
                                               retries=0, timeout=2)
    with pytest.raises(ServingError, match=f"cannot reach TF Serving at 127.0.0.1:{port}"):
        grpc_client.reset(1)
    fixed = WorldModelClient.from_export(out, "grpc", target=f"127.0.0.1:{port}", version=1,
                                         retries=0, timeout=2)
    fixed.reset(1)  # a fixed version needs no answer from the server to start
    with pytest.raises(ServingError, match=f"cannot reach TF Serving at 127.0.0.1:{port}"):
        fixed.predict()


def test_missing_model_or_signature(exported, server):
    out, manifest = exported
    h = np.zeros((1, 32), "f")
    z = np.zeros((1, 16), "f")
    for backend in (RestBackend(server.rest_url, model="nope"),
                    GrpcBackend(server.grpc_target, model="nope")):
        with pytest.raises(ServingError, match="model or signature not found.*nope"):
            backend.call("predict", {"h": h, "z": z})
    for backend in (RestBackend(server.rest_url, model="wm"),
                    GrpcBackend(server.grpc_target, model="wm"),
                    WorldModelClient.from_export(out, "onnx").backend,
                    WorldModelClient.from_export(out, "savedmodel").backend,
                    WorldModelClient.from_export(out, "litert").backend,
                    SessionBackend(out / "saved_model" / "wm")):
        with pytest.raises(ServingError, match="not_a_signature"):
            backend.call("not_a_signature", {"h": h, "z": z})


def test_bad_inputs_are_refused_before_sending(exported):
    out, _ = exported
    # nothing listens here: a ValueError proves the check ran before any request (a fixed
    # version: reset needs no answer from the server)
    client = WorldModelClient.from_export(out, "rest", url=f"http://127.0.0.1:{free_port()}",
                                          version=1)
    client.reset(2)
    with pytest.raises(ValueError, match=r"action must have shape \[2, 2\], got \[2, 3\]"):
        client.observe(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"obs must have shape \[2, 4\]"):
        client.observe(np.zeros((2, 2)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="obs contains NaN"):
        client.observe(np.zeros((2, 2)), np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 4, 4\]"):
        client.observe(np.zeros((2, 2)), np.zeros((2, 4)), noise=np.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        client.observe(np.zeros((2, 2)), np.zeros((2, 4)), noise=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="sample must be"):
        client.imagine(np.zeros((2, 3, 2)), sample="greedy")
    with pytest.raises(ValueError, match="batch_size"):
        client.reset(0)
    fresh = WorldModelClient.from_export(out, "onnx")
    with pytest.raises(RuntimeError, match="reset"):
        fresh.predict()
    with pytest.raises(ServingError, match="no manifest"):
        WorldModelClient.from_export(out / "onnx", "onnx")


def test_serving_never_imports_rssm_tf_and_command_runs(exported):
    out, _ = exported
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = ("import sys, rssm_tf_serving.client, rssm_tf_serving.planner, rssm_tf_serving.standin\n"
            "import rssm_tf_serving.__main__ as m\n"
            f"rc = m.main(['--export', {str(out)!r}, '--backend', 'onnx', '--steps', '3'])\n"
            "assert 'rssm_tf' not in sys.modules, 'serving imported rssm_tf'\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "observing 3 steps" in proc.stdout and "imagined 5 steps" in proc.stdout


def _real_server(out):
    """(rest_url, grpc_target, process) of a real tensorflow_model_server, or a skip."""
    url, target = os.environ.get("TFSERVING_REST_URL"), os.environ.get("TFSERVING_GRPC_TARGET")
    if url or target:
        return url, target, None
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH and neither TFSERVING_REST_URL "
                    "nor TFSERVING_GRPC_TARGET is set (see README: Serving)")
    rest_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                             "--model_name=wm", f"--model_base_path={out / 'saved_model' / 'wm'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}", proc


def test_against_real_tensorflow_model_server(exported, clients):
    out, manifest = exported
    url, target, proc = _real_server(out)
    try:
        real = {}
        if url:
            real["rest"] = WorldModelClient.from_export(out, "rest", url=url, retries=20,
                                                        backoff=0.25)
        if target:
            real["grpc"] = WorldModelClient.from_export(out, "grpc", target=target,
                                                        retries=20, backoff=0.25)
        data = episode(clients["onnx"], seed=5)
        reference = rollout(clients["onnx"], data, "noise")
        for name, client in real.items():
            deadline = time.time() + 60
            while True:
                try:
                    trace = rollout(client, data, "noise")
                    break
                except ServingError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            for a, b in zip(reference, trace):
                for key in a:
                    np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0,
                                               err_msg=name)
            if name == "rest":  # both request formats, every answer form (api_rest.md)
                rest_forms_agree(out, manifest, url=url)
            where = {"url": url} if name == "rest" else {"target": target}
            remote = WorldModelClient.from_server(name, model="wm", **where)
            assert remote.manifest["signatures"]["predict"]["outputs"]["reward"]["dtype"] \
                == "float32"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_client_reads_the_signatures_from_the_server(exported, server, clients, protocol):
    """No export directory: TF Serving's metadata call gives the signatures."""
    out, manifest = exported
    where = {"url": server.rest_url} if protocol == "rest" else \
        {"target": server.grpc_target}
    client = WorldModelClient.from_server(protocol, model="wm", **where)
    assert client.manifest["signatures"]["obs_step_noise"] == \
        manifest["signatures"]["obs_step_noise"]
    assert (client.deter, client.groups, client.classes, client.action_dim) == (32, 4, 4, 2)
    assert client.obs_space == {"obs": ((4,), "float32")}
    data = episode(client, seed=8)
    reference, trace = rollout(clients["onnx"], data, "noise"), rollout(client, data, "noise")
    for a, b in zip(reference, trace):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0, err_msg=key)
    with pytest.raises(ServingError, match="nope"):
        WorldModelClient.from_server(protocol, model="nope", retries=0, **where)


def test_tensor_protos_are_tensorflows_and_other_dtypes_are_refused():
    import tensorflow as tf
    from rssm_tf_serving.backends import from_tensor_proto, to_tensor_proto

    for array in (np.arange(6, dtype=np.float32).reshape(2, 3),
                  np.array(3, np.int32), np.full((1, 2, 2, 1), 255, np.uint8)):
        proto = to_tensor_proto(array)
        assert proto == tf.make_tensor_proto(array)
        back = from_tensor_proto(proto)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
    with pytest.raises(ServingError, match="unsupported dtype float64"):
        to_tensor_proto(np.zeros(2))
    with pytest.raises(ServingError, match="unsupported tensor dtype int64"):
        from_tensor_proto(tf.make_tensor_proto(np.zeros(2, np.int64)))


def test_onnx_runtime_providers_are_chosen_and_checked(exported):
    from rssm_tf_serving.backends import choose_providers

    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider",
                             "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    out, _ = exported
    backend = OnnxBackend(out / "onnx", providers=["CPUExecutionProvider"])
    assert backend.call("predict", {"h": np.zeros((1, 32), "f"),
                                    "z": np.zeros((1, 16), "f")})["reward"].shape == (1,)
    assert backend.sessions["predict"].get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ServingError, match=r"provider\(s\) \['CUDAExecutionProvider'\] are "
                                           "not available"):
        OnnxBackend(out / "onnx", providers=["CUDAExecutionProvider"])
    client = WorldModelClient.from_export(out, "onnx", providers=["CPUExecutionProvider"])
    assert client.backend.providers == ["CPUExecutionProvider"]


def test_openvino_backend_names_its_device_threads_and_missing_files(exported, tmp_path):
    from rssm_tf_serving.backends import OpenVinoBackend

    out, _ = exported
    with pytest.raises(ServingError, match=r"device must be one of OpenVINO's devices here "
                                           r"\['CPU'.*got 'TPU'"):
        OpenVinoBackend(out / "onnx", device="TPU")
    with pytest.raises(ServingError, match="no ONNX directory"):
        OpenVinoBackend(tmp_path / "nowhere")
    with pytest.raises(ServingError, match="threads must be a positive integer or None, "
                                           "got 0"):
        OpenVinoBackend(out / "onnx", threads=0)
    backend = OpenVinoBackend(out / "onnx", threads=1)
    assert backend.sessions == {}  # compiled on first use
    h = np.random.default_rng(0).normal(size=(2, 32)).astype("f")
    z = np.zeros((2, 16), "f")
    got = backend.call("predict", {"h": h, "z": z})
    want = OnnxBackend(out / "onnx").call("predict", {"h": h, "z": z})
    assert set(got) == set(want) == {"reward", "reward_logits", "continue_prob",
                                     "continue_logits"}
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0)
    with pytest.raises(ServingError, match="signature 'plan_everything' has no ONNX file"):
        backend.call("plan_everything", {})


def test_manifest_carries_its_format_version(exported, tmp_path):
    import json

    out, manifest = exported
    assert manifest["format_version"] == 1
    newer = {**manifest, "format_version": 2}
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(ServingError, match="format_version 2 is newer than this client"):
        WorldModelClient.from_export(tmp_path, "onnx")


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_exported_planner_plans_what_the_keras_planner_does(exported, model_path, clients,
                                                            kind):
    """The same seed on every serving backend and in Keras: the same candidates, so the
    same returns and plan (one iteration keeping every candidate, whose outputs are
    smooth in the model's: this model's untrained reward head cannot rank them)."""
    from rssm_tf_serving.planner import ClientPlanner

    from rssm_tf.planning import Planner
    from rssm_tf.saving import load_world_model

    fields = dict(horizon=4, candidates=20, top_k=20, iterations=1, kind=kind, low=-1.0,
                  high=0.5, discount=0.95, seed=5)
    data = episode(clients["onnx"], steps=3, batch=2)
    keras_planner = Planner(load_world_model(model_path, compile=False), **fields)
    keras_planner.reset(2)
    for t in range(3):
        keras_planner.observe(data["action"][t], {"obs": data["obs"][t]})
    want = keras_planner.plan_details()
    assert want["plan"].shape == (2, 4, 2) and want["returns"].shape == (2, 20)
    for name in ("onnx", "savedmodel", "rest", "grpc"):
        planner = ClientPlanner(clients[name], **fields)
        planner.reset(2)
        for t in range(3):
            planner.observe(data["action"][t], data["obs"][t])
        got = planner.plan_details()
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=f"{name} {key}")
    if kind == "discrete":
        np.testing.assert_array_equal(want["action"].sum(-1), 1.0)  # one-hot


def test_exported_planner_refuses_bad_settings(exported):
    from rssm_tf_serving.planner import ClientPlanner

    out, _ = exported
    client = WorldModelClient.from_export(out, "onnx")
    client.reset(1)
    noise = np.zeros((1, 1, 8, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 8\]"):
        client.plan("continuous", noise, 9, low=-1, high=1)
    with pytest.raises(ValueError, match="low is required for continuous actions"):
        client.plan("continuous", noise, 2)
    with pytest.raises(ValueError, match="high contains NaN or Inf"):
        client.plan("continuous", noise, 2, low=-1, high=np.inf)
    with pytest.raises(ValueError, match=r"low must have shape \[2\], got \[3\]"):
        client.plan("continuous", noise, 2, low=[-1, -1, -1], high=1)
    with pytest.raises(ValueError, match="low must be below high"):
        client.plan("continuous", noise, 2, low=1, high=[2, 0])
    with pytest.raises(ValueError, match=r"noise must have shape \[\?, 1, \?, \?, 2\]"):
        client.plan("discrete", noise[0], 2)
    with pytest.raises(ValueError, match="strictly between 0 and 1 for discrete"):
        client.plan("discrete", noise, 2)
    with pytest.raises(ValueError, match="kind must be"):
        client.plan("gaussian", noise, 2)
    with pytest.raises(ValueError, match="top_k must be <= candidates"):
        ClientPlanner(client, candidates=5, top_k=6)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        ClientPlanner(client, horizon=0)
    litert = WorldModelClient.from_export(out, "litert")
    litert.reset(1)
    with pytest.raises(ServingError, match="LiteRT has no planner"):
        litert.plan("discrete", np.full((1, 1, 8, 3, 2), 0.5, np.float32), 2)
    old = dict(client.manifest, signatures={k: v for k, v in client.manifest["signatures"]
                                            .items() if not k.startswith("plan_")})
    stale = WorldModelClient(client.backend, old)
    stale.reset(1)
    with pytest.raises(ServingError, match="has no plan_discrete signature"):
        stale.plan("discrete", np.full((1, 1, 8, 3, 2), 0.5, np.float32), 2)


@pytest.mark.parametrize("sample", [True, False])
def test_the_exported_actor_acts_as_the_keras_actor_in_cartpole(model_path, clients,
                                                                 tmp_path, sample):
    """The Dreamer's actor from the export (one ``act`` call per step) against the Keras
    ``ActorPolicy`` on the same CartPole seeds and the same actor noise: every backend
    takes the same actions, so the episodes' returns are the same."""
    from rssm_tf_serving.planner import ClientActor

    from rssm_tf.agent import run_episodes
    from rssm_tf.dreamer import ActorPolicy
    from rssm_tf.episodes import load_episode
    from rssm_tf.saving import load_world_model

    def run(policy, name):
        results = run_episodes("CartPole-v1", policy, episodes=3, seed=10, max_steps=40,
                               directory=tmp_path / name)
        actions = [load_episode(r["path"])["action"] for r in results]
        return [r["return"] for r in results], actions

    keras_policy = ActorPolicy(load_world_model(model_path, compile=False), sample=sample,
                               seed=5)
    want_returns, want_actions = run(keras_policy, "keras")
    assert all(a.shape[1] == 2 and np.all(a[1:].sum(-1) == 1) for a in want_actions)
    if sample:  # the sampled actor really varies its actions
        assert len({int(a) for x in want_actions for a in x[1:].argmax(-1)}) == 2
    for name in ("onnx", "openvino", "litert", "savedmodel", "rest", "grpc"):
        returns, actions = run(ClientActor(clients[name], sample=sample, seed=5), name)
        assert returns == want_returns, name
        for got, want in zip(actions, want_actions):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_act_keeps_its_action_in_the_saved_state_and_refuses_bad_inputs(clients, tmp_path):
    from rssm_tf_serving.planner import ClientActor

    client = clients["onnx"]
    data = episode(client, seed=3, steps=3, batch=2)
    noise = np.random.default_rng(0).uniform(0.01, 0.99, (3, 2, 2)).astype("f")
    client.reset(2)
    first = client.act(data["obs"][0], noise=noise[0])
    np.testing.assert_array_equal(first["action"].sum(-1), 1.0)  # one-hot, CartPole-like
    np.testing.assert_array_equal(client.state["action"], first["action"])
    saved = client.save_state(tmp_path / "state.npz")
    second = client.act(data["obs"][1], noise=noise[1])  # its action input: first's
    client.load_state(saved)
    again = client.act(data["obs"][1], noise=noise[1])
    for key in ("action", "h", "z"):
        np.testing.assert_array_equal(second[key], again[key])
    client.load_state(saved)
    client.action = np.zeros((2, 2), np.float32)  # overridden by the explicit action
    explicit = client.act(data["obs"][1], action=first["action"], noise=noise[1])
    np.testing.assert_array_equal(explicit["h"], second["h"])
    before = client.state
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 2\]"):
        client.act(data["obs"][2], noise=noise[2][:1])
    with pytest.raises(ValueError, match="strictly between 0 and 1 for a discrete actor"):
        client.act(data["obs"][2], noise=np.zeros((2, 2), "f"))
    with pytest.raises(ValueError, match="sample must be 'sample' or 'mode'"):
        client.act(data["obs"][2], sample="greedy")
    with pytest.raises(ValueError, match=r"action must have shape \[2, 2\]"):
        client.act(data["obs"][2], action=np.zeros((2, 3)))
    for key, value in client.state.items():  # refused before anything changed
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(RuntimeError, match=r"call reset\(batch_size\) first"):
        ClientActor(WorldModelClient(client.backend, client.manifest)).observe(
            np.zeros((1, 2)), data["obs"][0][:1])
    no_actor = {**client.manifest, "actor": None,
                "signatures": {k: v for k, v in client.manifest["signatures"].items()
                               if not k.startswith("act")}}
    plain = WorldModelClient(client.backend, no_actor)
    plain.reset(1)
    with pytest.raises(ServingError, match="has no actor"):
        plain.act(data["obs"][0][:1])
    with pytest.raises(ValueError, match="has no actor"):
        ClientActor(plain)
