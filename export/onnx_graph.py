"""One rewrite of tf2onnx's ONNX graphs: loop-invariant values read from the outer scope.

tf2onnx turns a ``tf.while_loop`` into an ONNX ``Loop`` whose loop-carried values
include every tensor the TensorFlow loop captured: for our scans the weights (17 in
``imagine``, about 60 in the planners). Each such value enters the body as a body input
and leaves it unchanged as the matching body output. That is valid ONNX, but OpenVINO's
ONNX front end (2026.4) counts those body inputs against the Loop's declared inputs and
refuses the node ("canonical inputs size (40), does not match ... (23)"), and every
runtime copies them from iteration to iteration.

:func:`hoist_loop_invariants` removes each such pass-through from the ``Loop`` (its
input, body input, body output and final output) and lets the body read the outer
tensor directly, as ONNX allows a subgraph to (the ``Loop`` operator's documentation:
values of the enclosing scope are visible in the body). Uses of the removed final
output become uses of the value itself, which is what it equals. Nested loops are
rewritten innermost first, and a value an inner loop reads from its enclosing body is
renamed with it. The graph stays standard ONNX (no operator or domain is added).
"""

from __future__ import annotations

import onnx

#: ONNX Loop: inputs (M, cond, v_initial...), body inputs (iteration, cond, v...),
#: body outputs (cond, v..., scan...), node outputs (v_final..., scan...)
_CONTROL_INPUTS = 2


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs ``node`` holds in its attributes (a ``Loop``'s or ``Scan``'s body, an
    ``If``'s branches)."""
    out = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            out.append(attribute.g)
        out.extend(attribute.graphs)
    return out


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node input ``old`` of ``graph`` and of its subgraphs reads ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in subgraphs(node):
            _rename_uses(sub, old, new)


def hoist_loop_invariants(graph: onnx.GraphProto) -> int:
    """Rewrites every ``Loop`` of ``graph`` (and of its subgraphs) in place so that no
    loop-carried value is passed through its body unchanged; returns how many were
    removed. A final value the graph itself outputs is kept (a graph output must be
    produced by the graph)."""
    removed = 0
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        for sub in subgraphs(node):
            removed += hoist_loop_invariants(sub)
        if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        carried = len(node.input) - _CONTROL_INPUTS
        invariant = [k for k in range(carried)
                     if body.input[_CONTROL_INPUTS + k].name == body.output[1 + k].name
                     and node.input[_CONTROL_INPUTS + k]  # not an omitted input
                     and (k >= len(node.output) or node.output[k] not in graph_outputs)]
        for k in reversed(invariant):  # from the back: the indices before stay valid
            outer = node.input[_CONTROL_INPUTS + k]
            inner = body.input[_CONTROL_INPUTS + k].name
            if k < len(node.output):
                if node.output[k]:
                    _rename_uses(graph, node.output[k], outer)
                del node.output[k]
            del body.output[1 + k]
            del body.input[_CONTROL_INPUTS + k]
            _rename_uses(body, inner, outer)
            del node.input[_CONTROL_INPUTS + k]
        removed += len(invariant)
    return removed


def rewrite_file(path: str) -> int:
    """Applies :func:`hoist_loop_invariants` to the ONNX file at ``path`` (rewritten in
    place, after ``onnx.checker`` with ``full_check`` passes on the result); returns the
    number of values hoisted."""
    model = onnx.load(path)
    removed = hoist_loop_invariants(model.graph)
    if removed:
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, path)
    return removed
