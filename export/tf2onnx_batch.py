"""tf2onnx's command line run on several signatures of one SavedModel in one process.

    python -m rssm_tf_export.tf2onnx_batch SAVED_MODEL OPSET NAME=OUTPUT [NAME=OUTPUT ...]

Each ``NAME`` is converted exactly as ``python -m tf2onnx.convert --saved-model
SAVED_MODEL --signature_def NAME --opset OPSET --output OUTPUT`` would, in turn, but
TensorFlow and tf2onnx are imported once (about 5 s each time on two cores) instead of
once per signature. Before each conversion a line ``tf2onnx_batch: converting NAME`` goes
to stderr, so a failure can be traced to its signature; the first failure ends the run
with a non-zero exit.
"""

from __future__ import annotations

import sys

MARK = "tf2onnx_batch: converting "


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not all("=" in job for job in argv[2:]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    saved_model, opset, *jobs = argv
    from rssm_tf_serving.backends import expected_load_notes_dropped
    from tf2onnx import convert

    with expected_load_notes_dropped():  # tf2onnx loads the SavedModel once per job
        for job in jobs:
            name, output = job.split("=", 1)
            print(MARK + name, file=sys.stderr, flush=True)
            sys.argv = ["tf2onnx.convert", "--saved-model", saved_model, "--signature_def",
                        name, "--opset", opset, "--output", output]
            convert.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
