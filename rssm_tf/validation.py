"""Checks at the library's boundary: named errors before any state changes.

Shapes and dtypes are checked on the static shape (in eager mode and while tracing);
``check_finite`` adds ``tf.debugging`` checks that also run inside graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


class DtypeError(TypeError, ValueError):
    """A value of the wrong dtype: a ``TypeError`` and a ``ValueError`` both, so code
    that catches either for bad input sees it."""


def check_keys(name: str, given: object, expected: Sequence[str]) -> None:
    """Raises ``ValueError`` unless the dict ``given`` has exactly the keys
    ``expected``, naming the missing and the unknown ones."""
    missing = [k for k in expected if k not in given]
    unknown = sorted(str(k) for k in given if k not in expected)
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + \
            ([f"unknown {unknown}"] if unknown else [])
        raise ValueError(f"{name} must have the keys {list(expected)}: "
                         f"{', '.join(parts)}")


def as_float_tensor(name: str, value: object, dtype: str = "float32") -> tf.Tensor:
    """Converts ``value`` to a float tensor; a non-numeric input raises ``TypeError``."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if not (value.dtype.is_floating or value.dtype.is_integer or value.dtype.is_bool):
            raise DtypeError(f"{name} must be numeric, got dtype {value.dtype.name}")
        return tf.cast(value, dtype)
    try:
        array = np.asarray(value)
    except Exception as error:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from error
    if array.dtype.kind not in "fiub":
        raise DtypeError(f"{name} must be numeric, got {type(value).__name__} with dtype "
                        f"{array.dtype}")
    return tf.convert_to_tensor(array.astype(dtype))


def as_image_tensor(name: str, value: object) -> tf.Tensor:
    """``value`` as a uint8 tensor; other dtypes raise ``TypeError`` (pixels are uint8
    in [0, 255] everywhere: episodes, batches, the served signatures)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        dtype = value.dtype.name
    else:
        value = np.asarray(value)
        dtype = str(value.dtype)
    if dtype != "uint8":
        raise DtypeError(f"{name} must be uint8 pixels in [0, 255], got dtype {dtype}")
    return tf.convert_to_tensor(value)


def check_positive_int(name: str, value: object) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_non_negative_int(name: str, value: object, zero_means: str) -> None:
    """Raises ``ValueError`` naming ``name`` (and what 0 means) unless ``value`` is an
    int >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0: {zero_means}), "
                         f"got {value!r}")


def check_shape(name: str, tensor: tf.Tensor, expected: Sequence[int | str | None]) -> None:
    """Raises ``ValueError`` unless ``tensor``'s static shape matches ``expected``.

    ``expected`` entries: an int (that size), ``None`` (any) or a letter such as "B"
    (any size; shown in the message). E.g. ``check_shape("obs", x, ["B", "T", 64])``.
    """
    shape = tensor.shape
    want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
    if shape.rank is None:
        return
    if shape.rank != len(expected):
        raise ValueError(f"{name} must have shape {want}, got shape {shape.as_list()}")
    for got, exp in zip(shape.as_list(), expected):
        if isinstance(exp, int) and got is not None and got != exp:
            raise ValueError(f"{name} must have shape {want}, got shape {shape.as_list()}")


def check_same(names: Sequence[str], sizes: Sequence[int | None], what: str) -> None:
    """Raises ``ValueError`` if the known ``sizes`` (e.g. batch sizes) differ."""
    known = [(n, s) for n, s in zip(names, sizes) if s is not None]
    if len({s for _, s in known}) > 1:
        listed = ", ".join(f"{n}: {s}" for n, s in known)
        raise ValueError(f"{what} must agree across inputs, got {listed}")


def check_finite(name: str, tensor: tf.Tensor) -> tf.Tensor:
    """``tensor`` unchanged, or an ``InvalidArgumentError`` naming it if it holds NaN/Inf
    (works in eager mode, in graphs and under XLA)."""
    if not tensor.dtype.is_floating:
        return tensor
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(tensor))):
            raise ValueError(f"{name} contains NaN or Inf values")
        return tensor
    return tf.debugging.assert_all_finite(tensor, f"{name} contains NaN or Inf values")


def eager_finite(name: str, tensor: tf.Tensor) -> tf.Tensor:
    """``tensor``, after a ``ValueError`` naming it if it holds NaN/Inf, when called
    eagerly (a user stepping a layer by hand). Inside graphs it adds no check: the
    training step checks its batch behind ``WorldModel(check_numerics=...)``, and the
    serving client checks before sending."""
    return check_finite(name, tensor) if tf.executing_eagerly() else tensor
