"""Loads TensorFlow without the probing lines it prints on a machine with no GPU.

TensorFlow's C++ side logs, before its logging is set up and so past
``TF_CPP_MIN_LOG_LEVEL``, that it found no CUDA driver, that oneDNN is on and which CPU
instructions it was not built for. On a CPU machine those are
expected. ``load_tensorflow()`` runs the import and the device probe with the process'
standard error captured, then writes back every line that is not one of those, so a
real error still shows. Import it before anything that imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Level 3 also drops TensorFlow's C++ error lines. Those a CPU run prints are notes, not
# failures: "failed call to cuInit" (no GPU), and "oneDNN supports DT_UINT8 only on
# platforms with AVX-512. Falling back to the default Eigen-based implementation" once
# per process when the uint8 frames are transposed to time-major (printed on AVX-512
# machines too; Eigen's transpose is what runs either way). A real failure still
# raises a Python exception with TensorFlow's message. Set TF_CPP_MIN_LOG_LEVEL=0 to
# see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The lines TensorFlow 2.21 prints while it looks for devices (one of each per loaded
# library): none of them is actionable on a CPU machine.
EXPECTED = re.compile(
    r"absl::InitializeLog\(\) is called|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_platform\.cc.*cuInit|cuda_executor\.cc|port\.cc.*oneDNN custom operations"
    r"|cpu_feature_guard\.cc|^To enable the following instructions|TF-TRT Warning"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered")


def load_tensorflow() -> None:
    """Imports rssm_tf and TensorFlow and lists the devices with the expected probe lines
    dropped."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            # rssm_tf first: it asks TensorFlow for oneDNN's CPU kernels before
            # TensorFlow loads (rssm_tf/cpu.py)
            import rssm_tf  # noqa: F401, I001
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if line and not EXPECTED.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


load_tensorflow()
