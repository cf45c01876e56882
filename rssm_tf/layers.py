"""Building-block layers: ``NormDense`` (Dense -> Norm -> activation), ``Mlp``,
``BlockLinear`` and ``BlockGRU``.

The activation is ``RssmConfig.activation``: ``"silu"`` (DreamerV3 paper, the default;
its backward is fused, :func:`norm_act`) or ``"gelu"`` (tanh approximation, as
``jax.nn.gelu``; DreamerV3's current code), looked up by :func:`activation_fn`.

Norms always run in float32 (their own dtype policy), so a ``mixed_float16`` or
``mixed_bfloat16`` model keeps its normalisation statistics in full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from rssm_tf.config import ACTIVATIONS
from rssm_tf.validation import check_non_negative_int, check_positive_int

_PACKAGE = "rssm_tf"


def _gelu(x: tf.Tensor) -> tf.Tensor:
    return tf.nn.gelu(x, approximate=True)


_ACTIVATION_FNS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "silu": tf.nn.silu, "gelu": _gelu}


def activation_fn(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The element-wise function of an activation name in ``ACTIVATIONS``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return _ACTIVATION_FNS[name]


def matmul(site: str, x: tf.Tensor, kernel: tf.Variable | tf.Tensor,
           rows: tuple[int, int] | None = None,
           bias: tf.Variable | tf.Tensor | None = None) -> tf.Tensor:
    """``x @ kernel[rows] + bias`` in ``x``'s dtype; a 3-D kernel [G, in, out] multiplies
    each block of ``x`` [G, ..., in] (blocks in front) by its own matrix (one batched
    einsum, whose output XLA lays out blocks-first without a transpose) and adds its
    row of ``bias`` [G, out].

    The recurrent step calls every weight multiplication through a function of this
    signature; ``site`` names it, so :mod:`rssm_tf.scan` can pass another one that
    records the multiplication for its hand-written backward.
    """
    w = kernel if rows is None else kernel[rows[0]:rows[1]]
    w = tf.cast(w, x.dtype)
    if w.shape.rank == 3:
        y = tf.einsum("g...i,gio->g...o", x, w)
        if bias is not None:
            y = y + tf.reshape(tf.cast(bias, x.dtype),
                               [w.shape[0]] + [1] * (x.shape.rank - 2) + [w.shape[2]])
        return y
    if x.shape.rank > 2:  # one 2-D matmul: a broadcast one's kernel gradient is a
        # batched matmul per leading index plus a sum (a [T, in, out] temporary)
        y = tf.reshape(tf.matmul(tf.reshape(x, [-1, w.shape[0]]), w),
                       tf.concat([tf.shape(x)[:-1], [w.shape[1]]], 0))
    else:
        y = tf.matmul(x, w)
    return y if bias is None else y + tf.cast(bias, x.dtype)


def make_norm(kind: str, eps: float, name: str | None = None) -> keras.layers.Layer:
    """Keras' own RMS or layer normalisation over the last axis, in float32."""
    if kind == "rms":
        return keras.layers.RMSNormalization(epsilon=eps, dtype="float32", name=name)
    if kind == "layer":
        return keras.layers.LayerNormalization(epsilon=eps, dtype="float32", name=name)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


@tf.function(jit_compile=True)
def _norm_silu_grad(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor | None,
                    dy: tf.Tensor, eps: float) -> tuple:
    """Backward of ``silu(norm(x))`` over the last axis (``offset`` None: RMS, else
    layer norm): ``(dx, dscale, doffset)``. One XLA computation, so the dozen passes
    autodiff makes over the activation (each a separate kernel outside XLA) fuse."""
    centred = x if offset is None else x - tf.reduce_mean(x, -1, keepdims=True)
    r = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), -1, keepdims=True) + eps)
    xhat = centred * r
    n = xhat * scale + (0.0 if offset is None else offset)
    s = tf.sigmoid(n)
    dn = dy * s * (1.0 + n * (1.0 - s))  # silu'
    dxhat = dn * scale
    inner = dxhat - xhat * tf.reduce_mean(dxhat * xhat, -1, keepdims=True)
    if offset is not None:
        inner -= tf.reduce_mean(dxhat, -1, keepdims=True)
    rows = list(range(x.shape.rank - 1))
    return (r * inner, tf.reduce_sum(dn * xhat, rows),
            None if offset is None else tf.reduce_sum(dn, rows))


def norm_act(norm: keras.layers.Layer, x: tf.Tensor, activation: str = "silu") -> tf.Tensor:
    """``act(norm(x))`` for a :func:`make_norm` layer over the last axis of float32
    ``x``. For SiLU the backward is written out and compiled by XLA
    (``_norm_silu_grad``); any other activation runs the norm layer and autodiff.

    The forward runs the norm layer's own ops (same values), so an exported forward
    stays free of XLA-compiled functions, which TensorFlow Serving does not run by
    default. For the image encoder and decoder: outside XLA (their default on
    CPUs) autodiff of this pair is about a dozen separate passes over activations of
    up to [B*T, 32, 32, 32]; fused, the image update takes ~0.9x the time
    (README, Benchmarks)."""
    if activation != "silu":
        return activation_fn(activation)(norm(x))
    rms = isinstance(norm, keras.layers.RMSNormalization)
    scale = tf.convert_to_tensor(norm.scale if rms else norm.gamma)
    offset = None if rms else tf.convert_to_tensor(norm.beta)

    @tf.custom_gradient
    def fused(x, scale, *offset):
        # the ops the norm layer runs, on its weights read once outside (so no
        # variable is captured here, also under a distribution strategy)
        if rms:
            y = keras.ops.rms_normalization(x, scale=scale, axis=-1, epsilon=norm.epsilon)
        else:
            y = keras.ops.layer_normalization(x, scale, offset[0], -1, norm.epsilon)

        def grad(dy):
            dx, dscale, doffset = _norm_silu_grad(x, scale, offset[0] if offset else None,
                                                  dy, norm.epsilon)
            return (dx, dscale) + ((doffset,) if offset else ())

        return tf.nn.silu(y), grad

    return fused(x, scale, *(() if offset is None else (offset,)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormDense(keras.layers.Layer):
    """``L(x) = act(Norm(Dense(x)))`` with a bias-free Dense, as in DreamerV3
    (``activation`` "silu" or "gelu").

    Input [..., X] -> output [..., units]. The norm (``"rms"`` or ``"layer"``, eps
    ``norm_eps``) and the activation run in float32; the output is cast back to the
    layer's compute dtype.
    """

    def __init__(self, units: int, norm: str = "rms", norm_eps: float = 1e-4,
                 activation: str = "silu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("units", units)
        self.units = units
        self.norm_kind = norm
        self.norm_eps = norm_eps
        self.activation = activation
        self._act = activation_fn(activation)
        self.dense = keras.layers.Dense(units, use_bias=False, name="dense",
                                        dtype=self.dtype_policy)
        self.norm = make_norm(norm, norm_eps, name="norm")

    def build(self, input_shape: tuple) -> None:
        self.dense.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.units,))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.activate(self.dense(x))

    def activate(self, pre: tf.Tensor) -> tf.Tensor:
        """Norm and activation of a pre-activation computed elsewhere (e.g. split)."""
        y = self._act(self.norm(tf.cast(pre, "float32")))
        return tf.cast(y, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, norm=self.norm_kind, norm_eps=self.norm_eps,
                      activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Mlp(keras.layers.Layer):
    """``layers`` stacked :class:`NormDense` of width ``units``, then an optional
    plain ``Dense(out_dim)``. Input [..., X] -> [..., out_dim or units].

    ``zero_init`` initialises the output layer's kernel and bias to zeros (the reward
    head: its first prediction is exactly 0).
    """

    def __init__(self, layers: int, units: int, out_dim: int | None = None,
                 norm: str = "rms", norm_eps: float = 1e-4, zero_init: bool = False,
                 activation: str = "silu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("layers", layers)
        check_positive_int("units", units)
        if out_dim is not None:
            check_positive_int("out_dim", out_dim)
        self.n_layers = layers
        self.units = units
        self.out_dim = out_dim
        self.norm_kind = norm
        self.norm_eps = norm_eps
        self.zero_init = zero_init
        self.activation = activation
        self.hidden = [NormDense(units, norm, norm_eps, activation, name=f"hidden{i}",
                                 dtype=self.dtype_policy) for i in range(layers)]
        self.out = None
        if out_dim is not None:
            init = "zeros" if zero_init else "glorot_uniform"
            self.out = keras.layers.Dense(out_dim, kernel_initializer=init,
                                          name="out", dtype=self.dtype_policy)

    def build(self, input_shape: tuple) -> None:
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = shape[:-1] + (self.units,)
        if self.out is not None:
            self.out.build(shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.hidden:
            x = layer(x)
        if self.out is not None:
            x = self.out(x)
        return x

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(layers=self.n_layers, units=self.units, out_dim=self.out_dim,
                      norm=self.norm_kind, norm_eps=self.norm_eps,
                      zero_init=self.zero_init, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlockLinear(keras.layers.Layer):
    """A linear map applied independently to each of ``n_blocks`` blocks.

    Input [..., G, in] -> output [..., G, units], with a kernel of shape
    [G, in, units] (one matrix per block, i.e. a block-diagonal weight) and a bias
    [G, units]. Computed as one batched einsum, not G small matmuls.
    """

    def __init__(self, units: int, n_blocks: int, use_bias: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("units", units)
        check_positive_int("n_blocks", n_blocks)
        self.units = units
        self.n_blocks = n_blocks
        self.use_bias = use_bias

    def build(self, input_shape: tuple) -> None:
        if input_shape[-2] != self.n_blocks:
            raise ValueError(f"BlockLinear input must have shape [..., {self.n_blocks}, "
                             f"in], got {tuple(input_shape)}")
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.n_blocks, fan_in, self.units),
            initializer=keras.initializers.VarianceScaling(1.0, "fan_avg", "uniform"))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.n_blocks, self.units),
                                        initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        rank = x.shape.rank
        to_front = [rank - 2] + list(range(rank - 2)) + [rank - 1]
        to_back = list(range(1, rank - 1)) + [0, rank - 1]
        return tf.transpose(self.block_major(tf.transpose(x, to_front)), to_back)

    def block_major(self, x: tf.Tensor, mm: Any = matmul, site: str | None = None
                    ) -> tf.Tensor:
        """The map on blocks in front: [G, ..., in] -> [G, ..., units]; ``site`` names
        the multiplication for ``mm`` (default: the layer's name)."""
        return mm(site or self.name, x, self.kernel, None, self.bias)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, n_blocks=self.n_blocks, use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlockGRU(keras.layers.Layer):
    """DreamerV3's normalised GRU, block-diagonal with ``n_blocks`` blocks.

    ``call(x, h)``: input ``x`` [B, X] (shared by all blocks), memory ``h`` [B, units]
    -> new memory [B, units]. With G = ``n_blocks`` > 0 and d = units / G::

        xg = concat(split(h, G), broadcast(x))        # [B, G, d + X]
        y  = act(Norm(BlockLinear_d(xg)))              # norm over all G*d units
        r, c, u = split(BlockLinear_3d(y), 3)          # per block
        r = sigmoid(r); c = tanh(r * c); u = sigmoid(u - 1)
        h' = u * c + (1 - u) * h

    As in DreamerV3 (``rssm.py``, ``_core``: ``dynhid`` then ``Norm`` of the flat
    deterministic vector) and TorchRL's ``_DreamerV3BlockGRU``, the norm's statistic
    runs over all ``units`` and its learned scale (and offset, for layer norm) has one
    entry per unit: the blocks' weights are block-diagonal, but the norm couples them.
    With ``n_blocks=0`` it is one dense GRU: ``r, c, u = split(Norm(Dense_3D([x, h])))``.

    The input half of the first linear map is the ``input_kernel`` [X, width]: a caller
    can compute ``x @ input_kernel`` for a whole sequence at once (or in parts of ``x``'s
    rows) and pass it to :meth:`step`, as :class:`~rssm_tf.rssm.Rssm` does; ``call``
    does both for one step.
    """

    def __init__(self, units: int, n_blocks: int = 8, norm: str = "rms",
                 norm_eps: float = 1e-4, update_bias: float = -1.0,
                 activation: str = "silu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("units", units)
        check_non_negative_int("n_blocks", n_blocks, "a dense GRU")
        if n_blocks and units % n_blocks:
            raise ValueError(f"units ({units}) must be divisible by n_blocks ({n_blocks})")
        self.units = units
        self.n_blocks = n_blocks
        self.norm_kind = norm
        self.norm_eps = norm_eps
        self.update_bias = float(update_bias)
        self.activation = activation
        self._act = activation_fn(activation)
        self._pre_width = units if n_blocks else 3 * units
        self.norm = make_norm(norm, norm_eps, name="norm")
        if n_blocks:
            bs = units // n_blocks
            self.hidden = BlockLinear(bs, n_blocks, name="hidden",
                                      dtype=self.dtype_policy)
            self.gates = BlockLinear(3 * bs, n_blocks, name="gates",
                                     dtype=self.dtype_policy)
        else:
            self.hidden = keras.layers.Dense(3 * units, name="hidden",
                                             dtype=self.dtype_policy)
            self.gates = None

    def build(self, input_shape: Any) -> None:
        x_shape = input_shape[0] if isinstance(input_shape[0], (tuple, list)) \
            else input_shape
        d, g = self.units, self.n_blocks
        # Input half of the first map: a dense [X, width] kernel, equal to the
        # per-block kernels [G, X, d/G] laid side by side (x is shared by all blocks).
        self.input_kernel = self.add_weight(
            name="input_kernel", shape=(int(x_shape[-1]), self._pre_width),
            initializer=keras.initializers.VarianceScaling(1.0, "fan_avg", "uniform"))
        if g:
            self.hidden.build((None, g, d // g))
            self.gates.build((None, g, d // g))
            self.norm.build((None, d))  # one scale (and offset) per unit
        else:
            self.hidden.build((None, d))
            self.norm.build((None, self._pre_width))

    def step(self, h: tf.Tensor, x_proj: tf.Tensor, mm: Any = matmul) -> tf.Tensor:
        """One update from ``h`` [B, units] and ``x_proj = x @ input_kernel``; float32
        result. ``mm`` multiplies by the weights (see :func:`matmul`); its sites are
        ``<name>/hidden`` and ``<name>/gates``."""
        dtype = self.compute_dtype
        h = tf.cast(h, dtype)
        d, g = self.units, self.n_blocks
        x_proj = tf.cast(x_proj, dtype)
        if g:  # blocks in front: [G, B, d/G]
            def blocks(t):
                return tf.transpose(tf.reshape(t, [-1, g, d // g]), [1, 0, 2])

            h = blocks(h)
            pre = self.hidden.block_major(h, mm, f"{self.name}/hidden") + blocks(x_proj)
            y = self._act(self._norm_blocks(tf.cast(pre, "float32")))
            gates = self.gates.block_major(tf.cast(y, dtype), mm, f"{self.name}/gates")
            r, c, u = tf.split(tf.cast(gates, "float32"), 3, axis=-1)  # [G, B, d/G]
        else:
            pre = mm(f"{self.name}/hidden", h, self.hidden.kernel, None, self.hidden.bias) \
                + x_proj
            r, c, u = tf.split(self.norm(tf.cast(pre, "float32")), 3, axis=-1)
        r = tf.sigmoid(r)
        c = tf.tanh(r * c)
        u = tf.sigmoid(u + self.update_bias)
        h = u * c + (1.0 - u) * tf.cast(h, "float32")  # the memory stays float32
        return tf.reshape(tf.transpose(h, [1, 0, 2]), [-1, d]) if g else h

    def _norm_blocks(self, x: tf.Tensor) -> tf.Tensor:
        """The norm of ``x`` [G, B, d] (blocks in front) over each row's G*d units,
        with the norm layer's per-unit weights; what ``self.norm`` computes on the flat
        [B, G*d] layout, without transposing to it inside the recurrent step."""
        g, d = self.n_blocks, self.units // self.n_blocks

        def per_unit(weight: Any) -> tf.Tensor:
            return tf.reshape(tf.cast(weight, "float32"), [g, 1, d])

        if self.norm_kind == "rms":
            mean_square = tf.reduce_mean(tf.square(x), axis=[0, 2], keepdims=True)
            return x * tf.math.rsqrt(mean_square + self.norm_eps) * per_unit(self.norm.scale)
        mean = tf.reduce_mean(x, axis=[0, 2], keepdims=True)
        variance = tf.reduce_mean(tf.square(x - mean), axis=[0, 2], keepdims=True)
        y = (x - mean) * tf.math.rsqrt(variance + self.norm_eps) * per_unit(self.norm.gamma)
        return y + per_unit(self.norm.beta)

    def call(self, x: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
        x_proj = matmul(f"{self.name}/input", tf.cast(x, self.compute_dtype),
                        self.input_kernel)
        return self.step(h, x_proj)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, n_blocks=self.n_blocks, norm=self.norm_kind,
                      norm_eps=self.norm_eps, update_bias=self.update_bias,
                      activation=self.activation)
        return config
