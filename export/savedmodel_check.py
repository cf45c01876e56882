"""Runs the parity cases through an exported SavedModel, the way a server loads it.

    python -m rssm_tf_export.savedmodel_check [--loader session|tf2] \
        SAVED_MODEL_DIR CASES.npz OUT.npz

``--loader session`` (the default) is TF Serving's path: the MetaGraph in a TF1
session, variables restored by the restore op, tensors fed and fetched by the names in
each SignatureDef (:class:`rssm_tf_serving.backends.SessionBackend`). ``--loader tf2`` calls
the signatures of ``tf.saved_model.load``. Imports TensorFlow, numpy and
``rssm_tf_serving.backends`` only (never ``rssm_tf``); the output file records whether
``rssm_tf`` was imported (it must not be).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rssm_tf_export.savedmodel_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--loader", choices=["session", "tf2"], default="session")
    parser.add_argument("saved_model")
    parser.add_argument("cases")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from rssm_tf_export.runner import load_cases, run_all, save_arrays
    from rssm_tf_serving.backends import SavedModelBackend, SessionBackend

    backend = (SessionBackend if args.loader == "session" else SavedModelBackend)(
        args.saved_model)
    results = run_all(backend.call, load_cases(args.cases))
    results["__process__"] = {"imported_rssm_tf": np.array(sys.modules.get("rssm_tf") is not None),
                              "signatures": np.array(sorted(backend.signatures))}
    save_arrays(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
