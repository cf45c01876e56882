"""Discrete latents: S one-hot categoricals of K classes with a uniform mix.

``probs = (1 - unimix) * softmax(logits) + unimix / K``; every logits tensor the
library returns is ``log(probs)`` (shape [..., S, K]). Samples are drawn by Gumbel-max
over uniform noise, ``argmax(logits - log(-log(noise)))``, so the same noise gives the
same sample in TensorFlow (eager, graph, XLA), a reloaded SavedModel and ONNX Runtime.
``z = one_hot + probs - stop_gradient(probs)``: exactly one-hot in value, with the
gradient of the mixed probabilities (straight-through).
"""

from __future__ import annotations

import tensorflow as tf

# Uniform noise is clipped into [NOISE_EPS, 1 - NOISE_EPS] before the Gumbel transform.
NOISE_EPS = 1e-6


def _hash32(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer mixer (xor-shift-multiply, "lowbias32") on int64 holding
    values below 2**32; plain integer ops, so every backend computes the same bits."""
    mask = tf.constant(0xFFFFFFFF, tf.int64)
    x = tf.bitwise.bitwise_and(x, mask)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * 0x7FEB352D, mask)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = tf.bitwise.bitwise_and(x * 0x846CA68B, mask)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def uniform_noise(shape: tf.Tensor | list[int], seed: tf.Tensor) -> tf.Tensor:
    """Uniform noise in (0, 1) of ``shape`` from ``seed`` (two integers), float32.

    A counter-based hash of (seed, element index): the same seed gives the same bits
    in eager mode, in a ``tf.function`` and under XLA (TensorFlow's stateless ops do
    not: XLA's Philox lays out its counters differently for larger tensors).
    """
    count = tf.reduce_prod(tf.cast(shape, tf.int64))
    return tf.reshape(uniform_at(tf.range(count, dtype=tf.int64), seed), shape)


def uniform_at(index: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The elements of a :func:`uniform_noise` draw at flat positions ``index`` (int64,
    any shape; the result has its shape): a slice or transposed view of a draw
    computed directly, without drawing the rest."""
    seed = tf.cast(seed, tf.int64)
    key = _hash32(_hash32(seed[0] + 0x9E3779B9) + seed[1])
    bits = _hash32(_hash32(tf.cast(index, tf.int64) + key) + key)
    return cell_centre(tf.bitwise.right_shift(bits, 8))


# the largest float32 below 1
_BELOW_ONE = 1.0 - 2.0 ** -24


def cell_centre(bits: tf.Tensor) -> tf.Tensor:
    """24 random bits -> the centre of one of 2**24 equal cells of (0, 1), float32.

    The last cell's centre, 1 - 2**-25, rounds to 1.0 in float32 (where ``ndtri`` is
    infinite: once in 2**24 draws, a continuous actor's imagined action was, and its
    loss NaN); it is held at the largest float32 below 1, so every draw is strictly
    inside (0, 1)."""
    centre = (tf.cast(bits, tf.float32) + 0.5) * (1.0 / 2 ** 24)
    return tf.minimum(centre, _BELOW_ONE)


def mix_logits(logits: tf.Tensor, unimix: float) -> tf.Tensor:
    """Unimix-adjusted logits ``log((1 - unimix) softmax(l) + unimix / K)``, float32.

    ``logits`` [..., K] -> [..., K]. With ``unimix == 0`` this is ``log_softmax``.
    """
    logits = tf.cast(logits, "float32")
    if not unimix:
        return tf.nn.log_softmax(logits, axis=-1)
    k = logits.shape[-1]
    probs = (1.0 - unimix) * tf.nn.softmax(logits, axis=-1) + unimix / k
    return tf.math.log(probs)


def gumbel(noise: tf.Tensor) -> tf.Tensor:
    """Gumbel noise ``-log(-log(noise))`` from uniform ``noise`` in (0, 1), float32.
    Element-wise, so a loop can transform all its steps' noise at once."""
    noise = tf.clip_by_value(tf.cast(noise, "float32"), NOISE_EPS, 1.0 - NOISE_EPS)
    return -tf.math.log(-tf.math.log(noise))


def mode_onehot(logits: tf.Tensor) -> tf.Tensor:
    """One-hot of the most likely class, [..., K] -> [..., K] float32."""
    k = logits.shape[-1]
    return tf.one_hot(tf.argmax(logits, axis=-1, output_type=tf.int32), k,
                      dtype="float32")


def straight_through(onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """``onehot + probs - stop_gradient(probs)`` with ``probs = softmax(logits)``.

    ``logits`` must already be unimix-adjusted (then softmax gives the mixed probs).
    The value equals ``onehot`` exactly; the gradient flows to ``logits`` through the
    probabilities.
    """
    probs = tf.nn.softmax(tf.cast(logits, "float32"), axis=-1)
    return onehot + (probs - tf.stop_gradient(probs))


def sample_latent(logits: tf.Tensor, noise: tf.Tensor | None = None,
                  gumbel_noise: tf.Tensor | None = None) -> tf.Tensor:
    """Flattened straight-through latent from mixed logits [..., S, K] -> [..., S*K].

    ``noise`` (uniform, same shape as ``logits``) samples by Gumbel-max, or
    ``gumbel_noise`` (already through :func:`gumbel`); neither takes the mode (argmax,
    no randomness).
    """
    logits = tf.cast(logits, "float32")
    if gumbel_noise is None and noise is not None:
        gumbel_noise = gumbel(noise)
    return _flatten(straight_through(_pick(logits, gumbel_noise), logits))


def sample_log_probs(log_probs: tf.Tensor, gumbel_noise: tf.Tensor | None) -> tf.Tensor:
    """:func:`sample_latent` for logits that are normalised log-probabilities (what
    :func:`mix_logits` returns), the recurrent step's fast path: the straight-through
    term uses ``exp(log_probs)`` instead of a softmax. Same value (exactly one-hot);
    the gradient reaching the logits *before* :func:`mix_logits` is the same as
    through the softmax (the two differ by a multiple of the probabilities, which
    the softmax's Jacobian maps to zero)."""
    log_probs = tf.cast(log_probs, "float32")
    probs = tf.exp(log_probs)
    return _flatten(_pick(log_probs, gumbel_noise) + (probs - tf.stop_gradient(probs)))


def _pick(logits: tf.Tensor, gumbel_noise: tf.Tensor | None) -> tf.Tensor:
    """One-hot of the Gumbel-max sample, or of the mode without noise."""
    return mode_onehot(logits if gumbel_noise is None else logits + gumbel_noise)


def _flatten(z: tf.Tensor) -> tf.Tensor:
    """[..., S, K] -> [..., S*K]."""
    return tf.reshape(z, tf.concat([tf.shape(z)[:-2], [z.shape[-2] * z.shape[-1]]], 0))


def latent_distribution(logits: tf.Tensor):
    """The TFP distribution of the latent: S independent ``OneHotCategorical`` over
    K classes (``logits`` [..., S, K], already mixed). Event shape [S, K]."""
    try:  # imported lazily: TFP is slow to import, and optional
        import tensorflow_probability as tfp
    except ImportError as error:
        raise ImportError('latent_distribution needs TensorFlow Probability: pip install '
                          f'"rssm-tf[tfp]" ({error})') from None

    tfd = tfp.distributions
    return tfd.Independent(
        tfd.OneHotCategorical(logits=tf.cast(logits, "float32"), dtype=tf.float32), 1)
