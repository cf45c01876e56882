"""The networks around the recurrent core: vector encoder, decoder, reward and
continue heads. Each is an :class:`~rssm_tf.layers.Mlp` of ``Dense -> Norm -> SiLU``
layers with DreamerV3's sizes (``RssmConfig``)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from rssm_tf.config import RssmConfig
from rssm_tf.layers import Mlp
from rssm_tf.math import symlog


@keras.saving.register_keras_serializable(package="rssm_tf")
class VectorEncoder(Mlp):
    """``embed = MLP(symlog(obs))``: obs [..., O] -> embed [..., units].

    ``layers`` hidden ``NormDense`` layers of ``units`` (DreamerV3: 3 of H)."""

    def call(self, obs: tf.Tensor) -> tf.Tensor:
        return super().call(symlog(tf.cast(obs, self.compute_dtype)))


def make_encoder(config: RssmConfig, **kwargs: Any) -> VectorEncoder:
    """The vector encoder of ``config``: ``encoder_layers`` layers of H."""
    return VectorEncoder(config.encoder_layers, config.hidden_size, norm=config.norm,
                         norm_eps=config.norm_eps, name="encoder", **kwargs)


def make_decoder(config: RssmConfig, **kwargs: Any) -> Mlp:
    """The vector decoder: feat [..., D+S*K] -> predicted ``symlog(obs)`` [..., O]."""
    return Mlp(config.decoder_layers, config.hidden_size, out_dim=config.obs_dim,
               norm=config.norm, norm_eps=config.norm_eps, name="decoder", **kwargs)


def make_reward_head(config: RssmConfig, bins: int, **kwargs: Any) -> Mlp:
    """Reward head: feat -> ``bins`` twohot logits; the output layer starts at zero,
    so the first prediction is exactly 0."""
    return Mlp(config.head_layers, config.hidden_size, out_dim=bins, zero_init=True,
               norm=config.norm, norm_eps=config.norm_eps, name="reward_head", **kwargs)


def make_continue_head(config: RssmConfig, **kwargs: Any) -> Mlp:
    """Continue head: feat -> 1 Bernoulli logit (probability the episode goes on)."""
    return Mlp(config.head_layers, config.hidden_size, out_dim=1, norm=config.norm,
               norm_eps=config.norm_eps, name="continue_head", **kwargs)
