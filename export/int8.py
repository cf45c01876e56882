"""An int8 variant of the exported ONNX files: ``OUT/onnx_int8/<signature>.onnx``.

At batch 1 a step is a dozen matrix-vector products, and its time is the time to read
the weights (17 MB at the seed sizes for ``obs_step``). Storing them as 8-bit integers
reads a quarter of the bytes: ONNX Runtime's dynamic quantization
(``onnxruntime.quantization.quantize_dynamic``) rewrites each ``MatMul`` with a constant
weight as ``DynamicQuantizeLinear`` on the activation, ``MatMulInteger`` with the 8-bit
weight and a float rescale: standard ONNX operators in the default domain, so OpenVINO
and any conforming runtime run the files too.

Weights are unsigned 8-bit (``QUInt8``). With signed weights ONNX Runtime's AVX2
kernels (on CPUs without VNNI) multiply with an instruction that saturates, and the
seed model's ``obs_step`` at batch 1 was off by 2.4% of ``h``'s range against 0.1%
with unsigned ones, and slower (docs/performance.md).

It is a variant with an accuracy cost, not a form of the same model: its outputs differ
from Keras' by far more than the 1e-5 the parity report holds the float files to, and
a sampled ``z`` can differ. The cost is measured as open-loop prediction error on
held-out episodes (``benchmarks/int8.py``). Products inside a ``Loop`` body (the
scans of ``imagine*`` and the planners) are not reached by the quantizer and stay
float32; the file of every signature is written, so a client has all of them.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import onnx
from rssm_tf_export.onnx_graph import subgraphs

from rssm_tf.atomic import atomic_path


def quantized_products(path: Path) -> int:
    """How many ``MatMulInteger`` nodes the ONNX file at ``path`` has, in loop bodies
    too."""
    def count(graph: onnx.GraphProto) -> int:
        return sum((node.op_type == "MatMulInteger") + sum(map(count, subgraphs(node)))
                   for node in graph.node)
    return count(onnx.load(str(path)).graph)


def quantize_onnx(onnx_dir: Path, int8_dir: Path, signatures: tuple[str, ...]) -> list[Path]:
    """Writes ``int8_dir/NAME.onnx`` for each ``onnx_dir/NAME.onnx`` (weights of the
    products outside loops as unsigned 8-bit integers), each checked by
    ``onnx.checker`` with ``full_check``; every file is renamed into place once all have
    been written, or none is."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    missing = [s for s in signatures if not (onnx_dir / f"{s}.onnx").is_file()]
    if missing:
        raise FileNotFoundError(f"no ONNX file to quantize for {missing} in {onnx_dir}")
    targets = [int8_dir / f"{name}.onnx" for name in signatures]
    quiet = logging.getLogger()  # the quantizer suggests its pre-processing on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with ExitStack() as stack:
            for name, target in zip(signatures, targets):
                tmp = stack.enter_context(atomic_path(target, suffix=".onnx"))
                quantize_dynamic(onnx_dir / f"{name}.onnx", tmp,
                                 weight_type=QuantType.QUInt8)
                onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    finally:
        quiet.setLevel(level)
    return targets
