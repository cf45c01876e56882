"""Elementwise transforms of DreamerV3: symlog and symexp.

Written with ``log(1 + |x|)`` rather than ``log1p`` and ``exp(|x|) - 1`` rather than
``expm1`` so that exported graphs convert to standard ONNX operators.
"""

from __future__ import annotations

import tensorflow as tf


def symlog(x: tf.Tensor) -> tf.Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise; any shape, float dtype kept."""
    x = tf.convert_to_tensor(x)
    return tf.sign(x) * tf.math.log(1.0 + tf.abs(x))


def symexp(x: tf.Tensor) -> tf.Tensor:
    """``sign(x) * (exp(|x|) - 1)``, the inverse of :func:`symlog`; any shape."""
    x = tf.convert_to_tensor(x)
    return tf.sign(x) * (tf.exp(tf.abs(x)) - 1.0)
