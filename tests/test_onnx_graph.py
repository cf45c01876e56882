"""The ONNX loop rewrite (export/onnx_graph.py) on hand-built graphs: what it removes,
that ONNX Runtime computes the same numbers before and after (checked against values
computed here by hand), and that OpenVINO, which refuses tf2onnx's loops, loads them."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rssm_tf_export.onnx_graph import hoist_loop_invariants, rewrite_file

F = TensorProto.FLOAT


def value(name, shape=None, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def accumulate_loop(prefix, x, w, trips, extra_outputs=()):
    """A Loop as tf2onnx writes it: the weight ``w`` is carried through the body
    unchanged; the state ``y`` becomes ``y * w + x`` each iteration; the scan output
    is every ``y``. Outputs ``(w_final, y_final, ys)``."""
    body = helper.make_graph(
        [helper.make_node("Mul", [f"{prefix}y_in", f"{prefix}w_in"], [f"{prefix}yw"]),
         helper.make_node("Add", [f"{prefix}yw", x], [f"{prefix}y_out"]),
         helper.make_node("Identity", [f"{prefix}y_out"], [f"{prefix}scan"]),
         helper.make_node("Identity", [f"{prefix}cond_in"], [f"{prefix}cond_out"])],
        f"{prefix}body",
        [value(f"{prefix}i", [], TensorProto.INT64),
         value(f"{prefix}cond_in", [], TensorProto.BOOL),
         value(f"{prefix}w_in"), value(f"{prefix}y_in")],
        [value(f"{prefix}cond_out", [], TensorProto.BOOL), value(f"{prefix}w_in"),
         value(f"{prefix}y_out"), value(f"{prefix}scan")])
    return helper.make_node("Loop", [trips, "", w, f"{prefix}y0"],
                            [f"{prefix}w_final", f"{prefix}y_final", f"{prefix}ys",
                             *extra_outputs], body=body)


def model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_a_pass_through_weight_is_read_from_the_outer_scope_with_the_same_results():
    w = np.array([0.5, 2.0, -1.0], np.float32)
    nodes = [helper.make_node("Identity", ["x"], ["y0"]),
             accumulate_loop("", "x", "w", "trips"),
             # the loop's final w is used after it: it becomes w itself
             helper.make_node("Add", ["w_final", "y_final"], ["after"])]
    before = model(nodes, [value("x", [3]), value("trips", [], TensorProto.INT64)],
                   [value("after", [3]), value("ys", [None, 3])],
                   [numpy_helper.from_array(w, "w")])
    onnx.checker.check_model(before, full_check=True)
    x, trips = np.array([1.0, 1.0, 2.0], np.float32), np.array(3, np.int64)
    # by hand: y0 = x; y <- y * w + x three times
    y1 = x * w + x
    y2 = y1 * w + x
    y3 = y2 * w + x
    want = run(before, {"x": x, "trips": trips})
    np.testing.assert_allclose(want["ys"], [y1, y2, y3], rtol=1e-6)
    np.testing.assert_allclose(want["after"], y3 + w, rtol=1e-6)

    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert hoist_loop_invariants(after.graph) == 1
    onnx.checker.check_model(after, full_check=True)
    loop = next(n for n in after.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    assert list(loop.input) == ["trips", "", "y0"]
    assert list(loop.output) == ["y_final", "ys"]
    assert [i.name for i in body.input] == ["i", "cond_in", "y_in"]
    assert [o.name for o in body.output] == ["cond_out", "y_out", "scan"]
    assert body.node[0].input[1] == "w"  # the outer initializer, read in the body
    assert next(n for n in after.graph.node if n.op_type == "Add").input[0] == "w"
    got = run(after, {"x": x, "trips": trips})
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert hoist_loop_invariants(after.graph) == 0  # nothing left to move


def test_nested_loops_and_a_final_value_the_graph_outputs():
    """An inner loop reads the outer body's pass-through weight; both move out. A
    final value the graph outputs stays carried (a graph output must be produced)."""
    w = np.array([0.5, -2.0], np.float32)
    inner = accumulate_loop("in_", "x", "w_in", "trips")
    outer_body = helper.make_graph(
        [helper.make_node("Identity", ["y_in"], ["in_y0"]), inner,
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "outer_body",
        [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL),
         value("w_in"), value("y_in")],
        [value("cond_out", [], TensorProto.BOOL), value("w_in"), value("in_y_final")])
    outer = helper.make_node("Loop", ["trips", "", "w", "x"], ["w_final", "y_final"],
                             body=outer_body)
    kept = accumulate_loop("k_", "x", "w", "trips")
    before = model([outer, helper.make_node("Identity", ["x"], ["k_y0"]), kept],
                   [value("x", [2]), value("trips", [], TensorProto.INT64)],
                   [value("y_final", [2]), value("k_w_final", [2])],
                   [numpy_helper.from_array(w, "w")])
    onnx.checker.check_model(before, full_check=True)
    feeds = {"x": np.array([1.0, 3.0], np.float32), "trips": np.array(2, np.int64)}
    want = run(before, feeds)
    # by hand: the inner loop runs y <- y w + x twice from the outer y, twice over
    x, y = feeds["x"], feeds["x"]
    for _ in range(2 * 2):
        y = y * w + x
    np.testing.assert_allclose(want["y_final"], y, rtol=1e-6)

    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert hoist_loop_invariants(after.graph) == 2  # inner and outer w, not k_'s
    onnx.checker.check_model(after, full_check=True)
    inner_after = next(n for n in after.graph.node[0].attribute[0].g.node if n.op_type == "Loop")
    assert inner_after.attribute[0].g.node[0].input[1] == "w"  # renamed through both
    assert list(after.graph.node[2].output[:1]) == ["k_w_final"]
    got = run(after, feeds)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_openvino_loads_the_rewritten_loop_and_computes_the_same(tmp_path):
    ov = pytest.importorskip("openvino")
    w = np.array([0.5, 2.0, -1.0], np.float32)
    nodes = [helper.make_node("Identity", ["x"], ["y0"]), accumulate_loop("", "x", "w", "trips")]
    proto = model(nodes, [value("x", [3]), value("trips", [], TensorProto.INT64)],
                  [value("ys", [None, 3])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "loop.onnx"
    onnx.save(proto, path)
    feeds = {"x": np.array([1.0, -1.0, 2.0], np.float32), "trips": np.array(4, np.int64)}
    want = run(proto, feeds)["ys"]
    with pytest.raises(Exception, match="canonical inputs size"):
        ov.Core().compile_model(str(path), "CPU")  # tf2onnx's form: refused
    assert rewrite_file(str(path)) == 1
    compiled = ov.Core().compile_model(str(path), "CPU")
    got = compiled(feeds)[compiled.output("ys")]
    np.testing.assert_allclose(got, want, rtol=1e-6)
