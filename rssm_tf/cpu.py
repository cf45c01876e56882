"""Which CPU kernels TensorFlow runs this library's convolutions with.

TensorFlow's Linux wheels carry two sets of CPU kernels for convolutions, matmuls and
norms: Eigen's and oneDNN's. TensorFlow turns oneDNN's on by default only on CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in
``tensorflow/core/util/port.cc``); on an AVX2-only CPU (many cloud VMs, AMD EPYC before
Zen 4, laptops) it runs Eigen's. An image model's convolutions on CPUs run on
TensorFlow's kernels, not XLA's (XLA's CPU convolutions are several times slower,
docs/performance.md), and with Eigen's the image update takes about 1.8x as long as with
oneDNN's on the same AVX2 machine (``benchmarks/train_speed.py --onednn``).

So importing ``rssm_tf`` asks TensorFlow for oneDNN's kernels
(``TF_ENABLE_ONEDNN_OPTS=1``), the choice TensorFlow itself makes on newer CPUs, when
both hold:

- TensorFlow is not imported yet (it reads the variable once, when it loads), and
- ``TF_ENABLE_ONEDNN_OPTS`` is not set: a user's ``0`` or ``1`` is always kept.

TensorFlow notes that oneDNN's kernels may round differently from Eigen's ("slightly
different numerical results"); the tests import ``rssm_tf`` first, so they run the
kernels a user gets.
:func:`onednn_enabled` says which set the process runs, and ``WorldModel.compile``
warns when an image model is compiled on a CPU without them.
"""

from __future__ import annotations

import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> bool:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=1`` if TensorFlow is not loaded and the variable is
    unset; returns whether it set it. Called once, when ``rssm_tf`` is imported."""
    if "tensorflow" in sys.modules or ONEDNN_VARIABLE in os.environ:
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_enabled() -> bool:
    """Whether this process' TensorFlow runs oneDNN's CPU kernels.

    TensorFlow 2.21 has no public getter; ``_pywrap_util_port.IsMklEnabled`` is the
    function its own tests read (tests/test_keras_conventions.py pins it)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


SET_BY_RSSM_TF = prefer_onednn()
