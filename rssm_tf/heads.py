"""The networks around the recurrent core: the observation encoder and decoder, the
reward and continue heads, with DreamerV3's sizes (``RssmConfig``).

Observations are a dict with the keys of ``RssmConfig.obs_shapes``, as DreamerV3's
``Encoder(obs_space)``: the vector keys (float [..., O_k]) are concatenated and go
through one :class:`~rssm_tf.layers.Mlp` on their symlog; the image keys (uint8
[..., H, W, C_k]) are stacked on channels and go through one strided CNN on
``image / 255 - 0.5``. The two embeddings are concatenated. The decoder predicts each
key in its loss space (``symlog`` of a vector, an image in [-0.5, 0.5]): one MLP for
all vector keys and one CNN for all image keys, split back per key.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from rssm_tf.config import RssmConfig
from rssm_tf.layers import Mlp, activation_fn, make_norm, norm_act
from rssm_tf.math import symlog
from rssm_tf.spaces import CATEGORICAL, image_to_float


def cnn_grid(image_shape: tuple[int, ...], depth: int, stages: int) -> tuple[int, int, int]:
    """The encoder's last feature map for images of ``image_shape`` (the decoder's
    first): (H / 2**stages, W / 2**stages, depth * 2**(stages - 1))."""
    return (image_shape[0] // 2 ** stages, image_shape[1] // 2 ** stages,
            depth * 2 ** (stages - 1))


def _merge_lead(x: tf.Tensor, rank: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``x`` [..., *inner] (``rank`` inner axes) as [N, *inner], and the lead shape."""
    shape = tf.shape(x)
    lead = shape[:tf.rank(x) - rank]
    return tf.reshape(x, tf.concat([[-1], shape[-rank:]], 0)), lead


@keras.saving.register_keras_serializable(package="rssm_tf")
class ImageEncoder(keras.layers.Layer):
    """DreamerV3's image encoder: ``stages`` convolutions (``kernel`` x ``kernel``,
    stride 2, no bias), each followed by a norm over channels and ``activation``, with
    ``depth * 2**i`` channels at stage i; the last grid is flattened.

    uint8 image [..., H, W, C] -> embed [..., (H / 2**stages) * (W / 2**stages) *
    depth * 2**(stages - 1)]; DreamerV3's size S is depth 32 (64x64 -> 4x4x256).
    """

    def __init__(self, depth: int = 32, stages: int = 4, kernel: int = 4,
                 norm: str = "rms", norm_eps: float = 1e-4, activation: str = "silu",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth, self.stages, self.kernel = depth, stages, kernel
        self.norm_kind, self.norm_eps = norm, norm_eps
        activation_fn(activation)  # validates the name
        self.activation = activation
        self.convs = [keras.layers.Conv2D(depth * 2 ** i, kernel, strides=2, padding="same",
                                          use_bias=False, name=f"conv{i}",
                                          dtype=self.dtype_policy)
                      for i in range(stages)]
        self.norms = [make_norm(norm, norm_eps, name=f"norm{i}") for i in range(stages)]

    def build(self, input_shape: tuple) -> None:
        height, width, channels = input_shape[-3:]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            conv.build((None, height, width, channels))
            height, width, channels = height // 2, width // 2, self.depth * 2 ** i
            norm.build((None, height, width, channels))
        self.built = True

    def output_size(self, image_shape: tuple[int, int, int]) -> int:
        """The embedding width for images of ``image_shape``."""
        height, width, channels = cnn_grid(image_shape, self.depth, self.stages)
        return height * width * channels

    def call(self, image: tf.Tensor) -> tf.Tensor:
        x, lead = _merge_lead(image_to_float(image, self.compute_dtype), 3)
        for conv, norm in zip(self.convs, self.norms):
            x = tf.cast(norm_act(norm, tf.cast(conv(x), "float32"), self.activation),
                        self.compute_dtype)
        return tf.reshape(x, tf.concat([lead, [-1]], 0))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(depth=self.depth, stages=self.stages, kernel=self.kernel,
                      norm=self.norm_kind, norm_eps=self.norm_eps,
                      activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package="rssm_tf")
class ImageDecoder(keras.layers.Layer):
    """DreamerV3's image decoder, the encoder mirrored: a Dense from ``feat`` to the
    encoder's last grid, then ``stages`` transposed convolutions of stride 2 (norm and
    ``activation`` after all but the last), the last one to the image's channels.

    feat [..., F] -> image [..., H, W, C] in [-0.5, 0.5] (``image / 255 - 0.5``).
    """

    def __init__(self, image_shape: tuple[int, int, int] | list[int], depth: int = 32,
                 stages: int = 4, kernel: int = 4, norm: str = "rms",
                 norm_eps: float = 1e-4, activation: str = "silu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.depth, self.stages, self.kernel = depth, stages, kernel
        self.norm_kind, self.norm_eps = norm, norm_eps
        activation_fn(activation)  # validates the name
        self.activation = activation
        channels = self.image_shape[-1]
        self.grid = cnn_grid(self.image_shape, depth, stages)
        self.linear = keras.layers.Dense(self.grid[0] * self.grid[1] * self.grid[2],
                                         name="linear", dtype=self.dtype_policy)
        widths = [depth * 2 ** i for i in reversed(range(stages - 1))] + [channels]
        self.convs = [keras.layers.Conv2DTranspose(
            units, kernel, strides=2, padding="same", use_bias=i == stages - 1,
            name=f"conv{i}", dtype=self.dtype_policy) for i, units in enumerate(widths)]
        self.norms = [make_norm(norm, norm_eps, name=f"norm{i}") for i in range(stages - 1)]

    def build(self, input_shape: tuple) -> None:
        self.linear.build(input_shape)
        height, width, channels = self.grid
        for i, conv in enumerate(self.convs):
            conv.build((None, height, width, channels))
            height, width, channels = height * 2, width * 2, conv.filters
            if i < len(self.norms):
                self.norms[i].build((None, height, width, channels))
        self.built = True

    def call(self, feat: tf.Tensor) -> tf.Tensor:
        x, lead = _merge_lead(self.linear(feat), 1)
        x = tf.reshape(x, (-1,) + self.grid)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.norms):
                x = tf.cast(norm_act(self.norms[i], tf.cast(x, "float32"),
                                     self.activation), self.compute_dtype)
        return tf.reshape(tf.cast(x, "float32"),
                          tf.concat([lead, self.image_shape], 0))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), depth=self.depth,
                      stages=self.stages, kernel=self.kernel, norm=self.norm_kind,
                      norm_eps=self.norm_eps, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package="rssm_tf")
class VectorEncoder(Mlp):
    """``embed = MLP(symlog(obs))``: obs [..., O] -> embed [..., units].

    ``layers`` hidden ``NormDense`` layers of ``units`` (DreamerV3: 3 of H). The last
    ``onehot`` inputs (the categorical keys, one-hot) go in as they are, unsquashed,
    as DreamerV3 concatenates them."""

    def __init__(self, *args: Any, onehot: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.onehot = int(onehot)

    def call(self, obs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(obs, self.compute_dtype)
        if self.onehot:
            x = tf.concat([symlog(x[..., :-self.onehot]), x[..., -self.onehot:]], -1)
        else:
            x = symlog(x)
        return super().call(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "onehot": self.onehot}


@keras.saving.register_keras_serializable(package="rssm_tf")
class ObsEncoder(keras.layers.Layer):
    """The encoder of ``config``'s observation space: ``vector`` (``encoder_layers``
    of H on the symlog of the vector keys and the one-hot categorical keys,
    concatenated) and ``image``
    (:class:`ImageEncoder` on the image keys stacked on channels), embeddings
    concatenated. Input: a dict with ``config.obs_keys`` -> embed [..., ``embed_size``].
    """

    def __init__(self, config: RssmConfig | dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config = RssmConfig.from_dict(config)
        self.vector = self.image = None
        space = c.space
        if space.mlp_keys:  # the vector keys, then the categorical keys one-hot
            onehot = sum(space[k].width for k in space.of_kind(CATEGORICAL))
            self.vector = VectorEncoder(c.encoder_layers, c.hidden_size, norm=c.norm,
                                        norm_eps=c.norm_eps, activation=c.activation,
                                        onehot=onehot, name="vector",
                                        dtype=self.dtype_policy)
        if c.image_keys:
            self.image = ImageEncoder(c.cnn_depth, c.cnn_stages, c.cnn_kernel, c.norm,
                                      c.norm_eps, c.activation, name="image",
                                      dtype=self.dtype_policy)
        self.embed_size = (c.hidden_size if self.vector else 0) + \
            (self.image.output_size(c.image_grid) if self.image else 0)

    def build(self, input_shape: Any = None) -> None:
        if self.vector:
            self.vector.build((None, self.config.vector_size))
        if self.image:
            self.image.build((None,) + self.config.image_grid)
        self.built = True

    def call(self, obs: dict[str, tf.Tensor]) -> tf.Tensor:
        c, parts = self.config, []
        if self.vector:
            parts.append(self.vector(_stack(
                [tf.cast(obs[k], self.compute_dtype) for k in c.vector_keys]
                + [c.space[k].encode(obs[k], self.compute_dtype)
                   for k in c.space.of_kind(CATEGORICAL)])))
        if self.image:
            parts.append(self.image(_stack([obs[k] for k in c.image_keys])))
        return parts[0] if len(parts) == 1 else tf.concat(parts, -1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict()}


def _stack(parts: list[tf.Tensor]) -> tf.Tensor:
    """``parts`` concatenated on the last axis."""
    return parts[0] if len(parts) == 1 else tf.concat(parts, -1)


@keras.saving.register_keras_serializable(package="rssm_tf")
class ObsDecoder(keras.layers.Layer):
    """The decoder of ``config``'s observation space: feat [..., D + S*K] -> a dict
    with every key of ``config.obs_keys``, float32: a vector key [..., O_k] as the
    predicted ``symlog``, a categorical key as logits [..., O_k, N_k] (one MLP of
    ``decoder_layers`` x H for these keys), an image key [..., H, W, C_k] as the
    predicted ``image / 255 - 0.5`` (one :class:`ImageDecoder` for all image keys'
    channels)."""

    def __init__(self, config: RssmConfig | dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config = RssmConfig.from_dict(config)
        self.vector = self.image = None
        if c.space.mlp_keys:
            self.vector = Mlp(c.decoder_layers, c.hidden_size, out_dim=c.vector_size,
                              norm=c.norm, norm_eps=c.norm_eps,
                              activation=c.activation, name="vector",
                              dtype=self.dtype_policy)
        if c.image_keys:
            self.image = ImageDecoder(c.image_grid, c.cnn_depth, c.cnn_stages,
                                      c.cnn_kernel, c.norm, c.norm_eps, c.activation,
                                      name="image",
                                      dtype=self.dtype_policy)

    def build(self, input_shape: Any = None) -> None:
        for part in (self.vector, self.image):
            if part:
                part.build((None, self.config.feat_size))
        self.built = True

    def call(self, feat: tf.Tensor) -> dict[str, tf.Tensor]:
        c, out = self.config, {}
        if self.vector:
            out.update(_split(tf.cast(self.vector(feat), "float32"), c, c.space.mlp_keys))
        if self.image:
            out.update(_split(self.image(feat), c, c.image_keys))
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict()}


def _split(x: tf.Tensor, config: RssmConfig, keys: tuple[str, ...]
           ) -> dict[str, tf.Tensor]:
    """The last axis of ``x`` split back into ``keys`` (their widths), each in its
    loss space's shape (:meth:`rssm_tf.spaces.ObsKey.from_flat`)."""
    space = config.space
    parts = [x] if len(keys) == 1 else tf.split(x, [space[k].width for k in keys], axis=-1)
    return {k: space[k].from_flat(part) for k, part in zip(keys, parts)}


def make_reward_head(config: RssmConfig, bins: int, **kwargs: Any) -> Mlp:
    """Reward head: feat -> ``bins`` twohot logits; the output layer starts at zero,
    so the first prediction is exactly 0."""
    return Mlp(config.head_layers, config.hidden_size, out_dim=bins, zero_init=True,
               norm=config.norm, norm_eps=config.norm_eps, activation=config.activation,
               name="reward_head", **kwargs)


def make_continue_head(config: RssmConfig, **kwargs: Any) -> Mlp:
    """Continue head: feat -> 1 Bernoulli logit (probability the episode goes on)."""
    return Mlp(config.head_layers, config.hidden_size, out_dim=1, norm=config.norm,
               norm_eps=config.norm_eps, activation=config.activation,
               name="continue_head", **kwargs)
