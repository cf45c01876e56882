"""The 8-bit-weight variants (``export --int8``): what one quantized ONNX product
computes, checked against the arithmetic written out here; and the exported ONNX and
LiteRT files, as ONNX Runtime, OpenVINO, the LiteRT interpreter and the client load
them."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rssm_tf_export.exporter import ExportError, export_model
from rssm_tf_export.int8 import quantize_onnx, quantized_products
from rssm_tf_serving.backends import OnnxBackend, ServingError
from rssm_tf_serving.client import WorldModelClient
from test_export import LITERT_FILES, ONNX_FILES, _nodes


def matmul_file(path, w):
    """``y = x @ w`` with ``w`` a constant, as an ONNX file."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def uint8(values):
    """Asymmetric uint8 quantization of ``values`` over [min(0, lo), max(0, hi)], as
    ONNX's DynamicQuantizeLinear defines it: (codes, scale, zero point)."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    scale = np.float32((hi - lo) / 255.0)
    zero = np.clip(np.round(-lo / scale), 0, 255)
    codes = np.clip(np.round(values / scale) + zero, 0, 255)
    return codes, scale, zero


def test_a_quantized_product_computes_the_integer_product_written_out(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    x = rng.normal(size=(2, 6)).astype(np.float32)
    (tmp_path / "float").mkdir()
    matmul_file(tmp_path / "float" / "mm.onnx", w)
    [path] = quantize_onnx(tmp_path / "float", tmp_path / "int8", ("mm",))
    assert quantized_products(path) == 1
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert [i for i in model.graph.initializer if i.data_type == TensorProto.UINT8]

    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    # by hand: both sides to uint8 codes, the integer product, one rescale
    wq, w_scale, w_zero = uint8(w)
    xq, x_scale, x_zero = uint8(x)
    expected = ((xq - x_zero) @ (wq - w_zero)) * (x_scale * w_scale)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # and that is not the float product (the variant's accuracy cost), though close
    assert 1e-4 < np.abs(y - x @ w).max() < 0.05 * np.abs(x @ w).max()


def test_quantize_names_a_missing_file_and_writes_nothing(tmp_path):
    (tmp_path / "float").mkdir()
    matmul_file(tmp_path / "float" / "a.onnx", np.eye(2, dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=r"\['b'\]"):
        quantize_onnx(tmp_path / "float", tmp_path / "int8", ("a", "b"))
    assert not (tmp_path / "int8").exists() or not list((tmp_path / "int8").iterdir())


def test_int8_needs_the_onnx_files(model_path, tmp_path):
    with pytest.raises(ExportError, match="--int8.*--no-onnx"):
        export_model(model_path, tmp_path, onnx=False, int8=True, verbose=False)
    assert not (tmp_path / "saved_model").exists()


def test_exported_int8_files_quantize_every_constant_product_outside_loops(exported):
    import openvino

    out, manifest = exported
    assert manifest["onnx_int8"]["files"] == [f"onnx_int8/{s}.onnx" for s in ONNX_FILES]
    core = openvino.Core()
    for name in ONNX_FILES:
        path = out / "onnx_int8" / f"{name}.onnx"
        assert f"onnx_int8/{name}.onnx" in manifest["files"]
        proto = onnx.load(str(path))
        assert {n.domain for n in _nodes(proto.graph)} <= {"", "ai.onnx"}
        onnx.checker.check_model(proto, full_check=True)
        # independently of the quantizer: the float file's top-level products with a
        # constant weight are the ones that became integer products
        float_proto = onnx.load(str(out / "onnx" / f"{name}.onnx"))
        constants = {i.name for i in float_proto.graph.initializer}
        products = sum(n.op_type == "MatMul" and n.input[1] in constants
                       for n in float_proto.graph.node)
        assert quantized_products(path) == manifest["onnx_int8"]["quantized_products"][name]
        assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == products
        core.compile_model(str(path), "CPU")
    assert manifest["onnx_int8"]["quantized_products"]["obs_step_mode"] > 0


def test_int8_steps_stay_close_to_the_float_files_and_serve_through_the_client(exported):
    out, manifest = exported
    rng = np.random.default_rng(1)
    specs = manifest["signatures"]["obs_step_mode"]["inputs"]
    inputs = {k: (0.5 * rng.standard_normal([4] + s["shape"][1:])).astype(s["dtype"])
              for k, s in specs.items()}
    full = OnnxBackend(out / "onnx").call("obs_step_mode", inputs)
    small = OnnxBackend(out / "onnx_int8").call("obs_step_mode", inputs)
    for key in ("h_next", "post_logits", "prior_logits"):
        scale = np.abs(full[key]).max()
        difference = np.abs(small[key] - full[key]).max()
        assert 0 < difference < 0.05 * scale, key

    client = WorldModelClient.from_export(out, "onnx_int8")
    client.reset(batch_size=4)
    step = client.observe(inputs["action"], {"obs": inputs["obs"]}, sample="mode")
    np.testing.assert_allclose(step["h"], OnnxBackend(out / "onnx_int8").call(
        "obs_step_mode", {**inputs, "h": 0 * inputs["h"], "z": 0 * inputs["z"]})["h_next"],
        rtol=1e-6, atol=1e-6)


def test_exported_litert_int8_files_store_int8_weights_and_stay_close(exported):
    from ai_edge_litert.interpreter import Interpreter

    out, manifest = exported
    assert manifest["litert_int8"]["files"] == [f"litert_int8/{s}.tflite"
                                                for s in LITERT_FILES]

    def weights(path):
        interpreter = Interpreter(model_path=str(path))
        return [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]

    for name in LITERT_FILES:
        path = out / "litert_int8" / f"{name}.tflite"
        assert f"litert_int8/{name}.tflite" in manifest["files"]
        assert weights(path) and not weights(out / "litert" / f"{name}.tflite"), name

    rng = np.random.default_rng(2)
    specs = manifest["signatures"]["obs_step_mode"]["inputs"]
    inputs = {k: (0.5 * rng.standard_normal([3] + s["shape"][1:])).astype(s["dtype"])
              for k, s in specs.items()}
    full = WorldModelClient.from_export(out, "litert").backend.call("obs_step_mode", inputs)
    client = WorldModelClient.from_export(out, "litert_int8")
    small = client.backend.call("obs_step_mode", inputs)
    for key in ("h_next", "post_logits", "prior_logits"):
        difference = np.abs(small[key] - full[key]).max()
        assert 0 < difference < 0.05 * np.abs(full[key]).max(), key
    client.reset(batch_size=3)
    dream = client.imagine(np.zeros((3, 4, manifest["config"]["action_dim"]), np.float32),
                           sample="mode")
    assert dream["h_seq"].shape[:2] == (3, 4) and np.isfinite(dream["reward"]).all()


@pytest.mark.parametrize("backend, flags", [("onnx_int8", "--int8"),
                                            ("litert_int8", "--litert --int8")])
def test_the_client_names_the_missing_int8_files(exported, tmp_path, backend, flags):
    out, manifest = exported
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, backend: None}))
    with pytest.raises(ServingError, match=f"no {backend}/ files: export with {flags}"):
        WorldModelClient.from_export(tmp_path, backend)
