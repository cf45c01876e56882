"""tf2onnx's command line run on several signatures of one SavedModel in one process.

    python -m rssm_tf_export.tf2onnx_batch SAVED_MODEL OPSET NAME=OUTPUT [NAME=OUTPUT ...]

Each ``NAME`` is converted exactly as ``python -m tf2onnx.convert --saved-model
SAVED_MODEL --signature_def NAME --opset OPSET --output OUTPUT`` would, in turn, but
TensorFlow and tf2onnx are imported once (about 5 s each time on two cores) instead of
once per signature, and the SavedModel is loaded once (the command line loads it for
each signature: 2-3 s on two cores, a third of the conversion time of our export). The
loaded object is only read (tf2onnx freezes the signature's function into a new graph):
the files have the same nodes of each type and the same initializers as the command
line's (tf2onnx orders nodes differently from run to run either way). Before each
conversion a line ``tf2onnx_batch: converting NAME`` goes to stderr, so a failure can be
traced to its signature; the first failure ends the run with a non-zero exit.

Each converted file then has its loops' pass-through values read from the outer scope
(:func:`rssm_tf_export.onnx_graph.rewrite_file`; without it OpenVINO cannot load the
loops tf2onnx writes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

MARK = "tf2onnx_batch: converting "


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not all("=" in job for job in argv[2:]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    saved_model, opset, *jobs = argv
    import tensorflow as tf
    from rssm_tf_export.onnx_graph import rewrite_file
    from rssm_tf_serving.backends import expected_load_notes_dropped
    from tf2onnx import convert

    tf.saved_model.load = _loaded_once(tf.saved_model.load)
    with expected_load_notes_dropped():
        for job in jobs:
            name, output = job.split("=", 1)
            print(MARK + name, file=sys.stderr, flush=True)
            sys.argv = ["tf2onnx.convert", "--saved-model", saved_model, "--signature_def",
                        name, "--opset", opset, "--output", output]
            convert.main()
            rewrite_file(output)
    return 0


def _loaded_once(load: Callable[..., Any]) -> Callable[..., Any]:
    """``load`` that loads each (path, tags) once and returns that object again."""
    loaded: dict[tuple, Any] = {}

    def load_once(export_dir: str, tags: Any = None, options: Any = None) -> Any:
        key = (str(export_dir), tags if tags is None or isinstance(tags, str)
               else tuple(tags), options)
        if key not in loaded:
            loaded[key] = load(export_dir, tags=tags, options=options)
        return loaded[key]

    return load_once


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
