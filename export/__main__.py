"""``python -m export`` / ``rssm-tf-export``: a trained .keras model to a TF Serving
SavedModel tree, ONNX files, a manifest and a parity report.

    python -m export --model run/model.keras --out exported [--name rssm] [--version N]
        [--litert] [--int8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rssm-tf export",
        description="Export a trained rssm_tf WorldModel (.keras) to OUT/saved_model/NAME/"
                    "VERSION (TF Serving's layout), OUT/onnx/<signature>.onnx, "
                    "OUT/manifest.json and OUT/parity.json.")
    parser.add_argument("--model", required=True, help="the trained .keras file")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--name", default="rssm", help="model name under saved_model/ (rssm)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: one more than the latest; an "
                             "existing version is never overwritten)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX files")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity report")
    parser.add_argument("--litert", action="store_true",
                        help="also write OUT/litert/<signature>.tflite for the LiteRT "
                             "interpreter (pip install ai-edge-litert)")
    parser.add_argument("--int8", action="store_true",
                        help="also write OUT/onnx_int8/<signature>.onnx (and with "
                             "--litert OUT/litert_int8/<signature>.tflite): the files with "
                             "8-bit weights (faster at small batches; an accuracy cost, "
                             "not in the parity report)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

    from rssm_tf_export.exporter import ExportError, export_model

    from rssm_tf.saving import ModelFileError

    try:
        manifest = export_model(args.model, args.out, args.name, args.version,
                                onnx=not args.no_onnx, parity=not args.no_parity,
                                litert=args.litert, int8=args.int8)
    except (ExportError, ModelFileError) as error:
        print(f"rssm-tf-export: error: {error}", file=sys.stderr)
        return 2
    if manifest.get("parity") and not manifest["parity"]["passed"]:
        print("rssm-tf-export: parity check FAILED (see parity.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
