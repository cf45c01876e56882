"""Runs the parity cases through an exported SavedModel, the way a server loads it.

    python -m export.savedmodel_check SAVED_MODEL_DIR CASES.npz OUTPUTS.npz

Imports TensorFlow and numpy only (never ``rssm_tf``): it calls the signatures of
``tf.saved_model.load`` and nothing else. The output file records whether ``rssm_tf``
was imported (it must not be).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from export.runner import load_cases, run_all, save_arrays

    loaded = tf.saved_model.load(argv[0])
    signatures = loaded.signatures

    def call(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    results = run_all(call, load_cases(argv[1]))
    results["__process__"] = {"imported_rssm_tf": np.array("rssm_tf" in sys.modules),
                              "signatures": np.array(sorted(signatures))}
    save_arrays(argv[2], results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
