"""Losses of the world model: balanced KL with free nats, and twohot regression.

All of it runs in float32, whatever the model's compute dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from rssm_tf.config import KlBalanceConfig
from rssm_tf.math import symexp, symlog


def categorical_kl(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """KL(p || q) of S independent categoricals, summed over K then over the S groups:
    ``sum p * (log p - log q)`` with ``log p = log_softmax(p_logits)``.

    ``p_logits``, ``q_logits``: [..., S, K] (unimix-adjusted) -> [...]. Equal to the
    KL of :func:`~rssm_tf.latents.latent_distribution`'s distributions, written out
    so the dyn and rep terms share their forward pass under XLA.
    """
    log_p = tf.nn.log_softmax(tf.cast(p_logits, "float32"), axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(q_logits, "float32"), axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=[-2, -1])


def categorical_entropy(logits: tf.Tensor) -> tf.Tensor:
    """Entropy of S independent categoricals summed over the groups, [..., S, K] -> [...]."""
    log_p = tf.nn.log_softmax(tf.cast(logits, "float32"), axis=-1)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=[-2, -1])


class KlLoss(NamedTuple):
    """Result of :func:`kl_balanced_loss`: ``loss`` scalar; ``dyn``, ``rep`` the
    free-nats-clipped terms and ``kl`` the raw KL, each [...] (e.g. [B, T])."""

    loss: tf.Tensor
    dyn: tf.Tensor
    rep: tf.Tensor
    kl: tf.Tensor


def kl_balanced_loss(post_logits: tf.Tensor, prior_logits: tf.Tensor,
                     config: KlBalanceConfig | None = None) -> KlLoss:
    """DreamerV3's balanced KL.

    ``dyn = max(free_nats, KL(sg(post) || prior))`` trains only the prior,
    ``rep = max(free_nats, KL(post || sg(prior)))`` trains only the posterior;
    ``loss = mean(dyn_scale * dyn + rep_scale * rep)``. Free nats clip the KL summed
    over the groups. ``post_logits``, ``prior_logits``: [..., S, K], unimix-adjusted.
    """
    config = config or KlBalanceConfig()
    post = tf.cast(post_logits, "float32")
    prior = tf.cast(prior_logits, "float32")
    if post.shape.rank is not None and post.shape.rank < 2:
        raise ValueError(f"post_logits must have shape [..., S, K], got {post.shape}")
    if post.shape != prior.shape and post.shape.is_fully_defined() \
            and prior.shape.is_fully_defined():
        raise ValueError(f"post_logits {post.shape} and prior_logits {prior.shape} "
                         "must have the same shape")
    kl_dyn = categorical_kl(tf.stop_gradient(post), prior)
    kl_rep = categorical_kl(post, tf.stop_gradient(prior))
    dyn = tf.maximum(kl_dyn, config.free_nats)
    rep = tf.maximum(kl_rep, config.free_nats)
    loss = tf.reduce_mean(config.dyn_scale * dyn + config.rep_scale * rep)
    return KlLoss(loss, dyn, rep, kl_dyn)


class TwohotEncoder:
    """Twohot encoding of scalars over ``num_bins`` bins (docs/design.md section 5).

    ``space="symlog"`` (default): bins ``g = linspace(low, high, n)`` in symlog space,
    targets go through ``symlog`` and decodes through ``symexp``. ``space="raw"``: bins
    ``symexp(g)`` in raw value space (DreamerV3's current ``symexp_twohot``). With
    ``low == -high`` the grid is exactly antisymmetric with an exact 0 in the middle,
    so uniform logits decode to exactly 0.

    ``encode(y)`` [...] -> weights [..., n]; ``loss(logits, y)`` -> [...];
    ``decode(logits)`` [..., n] -> [...].
    """

    def __init__(self, num_bins: int = 255, low: float = -20.0, high: float = 20.0,
                 space: str = "symlog") -> None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"low must be < high and both finite, got low={low!r}, "
                             f"high={high!r}")
        if space not in ("symlog", "raw"):
            raise ValueError(f"space must be 'symlog' or 'raw', got {space!r}")
        if space == "raw" and max(abs(low), abs(high)) > 80:
            raise ValueError(f"with space='raw' |low|, |high| must be <= 80 (symexp "
                             f"overflows float32), got low={low}, high={high}")
        self.num_bins = num_bins
        self.low = float(low)
        self.high = float(high)
        self.space = space
        grid = np.linspace(self.low, self.high, num_bins, dtype=np.float64)
        if self.low == -self.high:
            grid = (grid - grid[::-1]) / 2.0  # exactly antisymmetric, middle exactly 0
        if space == "raw":
            grid = np.sign(grid) * np.expm1(np.abs(grid))
        self.bins_np = grid.astype(np.float32)

    @property
    def bins(self) -> tf.Tensor:
        """The bin centres ``c`` [n], float32, in the space the targets are clipped in."""
        return tf.constant(self.bins_np)

    def transform(self, y: tf.Tensor) -> tf.Tensor:
        """Target value -> the space of the bins (symlog or identity)."""
        y = tf.cast(y, "float32")
        return symlog(y) if self.space == "symlog" else y

    def encode(self, y: tf.Tensor) -> tf.Tensor:
        """Twohot weights of targets ``y`` [...] -> [..., n]; clipped to the ends."""
        c = self.bins
        n = self.num_bins
        x = tf.clip_by_value(self.transform(y), c[0], c[-1])
        below = tf.reduce_sum(tf.cast(c <= x[..., None], tf.int32), axis=-1) - 1
        k = tf.clip_by_value(below, 0, n - 2)
        lo = tf.gather(c, k)
        hi = tf.gather(c, k + 1)
        w_hi = tf.clip_by_value((x - lo) / (hi - lo), 0.0, 1.0)
        return (tf.one_hot(k, n) * (1.0 - w_hi)[..., None]
                + tf.one_hot(k + 1, n) * w_hi[..., None])

    def loss(self, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """``-sum(twohot(y) * log_softmax(logits))``: logits [..., n], y [...] -> [...]."""
        target = tf.stop_gradient(self.encode(y))
        logp = tf.nn.log_softmax(tf.cast(logits, "float32"), axis=-1)
        return -tf.reduce_sum(target * logp, axis=-1)

    def decode(self, logits: tf.Tensor) -> tf.Tensor:
        """Expected value: logits [..., n] -> [...] in raw value space.

        The weighted sum pairs bins from the middle outwards, so symmetric
        probabilities give exactly 0.
        """
        probs = tf.nn.softmax(tf.cast(logits, "float32"), axis=-1)
        weighted = probs * self.bins
        n = self.num_bins
        m = n // 2
        left = tf.reverse(weighted[..., :m], axis=[-1])
        right = weighted[..., n - m:]
        total = tf.reduce_sum(left + right, axis=-1)
        if n % 2:
            total = total + weighted[..., m]
        return symexp(total) if self.space == "symlog" else total

    def get_config(self) -> dict[str, Any]:
        return dict(num_bins=self.num_bins, low=self.low, high=self.high,
                    space=self.space)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwohotEncoder:
        return cls(**config)

    def __repr__(self) -> str:
        return (f"TwohotEncoder(num_bins={self.num_bins}, low={self.low}, "
                f"high={self.high}, space={self.space!r})")
