"""DreamerV3's behavior learning: an actor and a critic trained in imagination
(docs/design.md section 8; the constants are :class:`~rssm_tf.config.BehaviorConfig`).

From every posterior state of a replayed batch (N = B x T starts, gradients stopped),
:func:`imagine` rolls the prior forward ``horizon`` steps with actions the actor
samples. On that trajectory, time-major ``[H + 1, N]``:

    r_t, c_t = reward head, continue probability at s_t        (t = 0 .. H)
    v_t      = slow critic's value at s_t
    R_H = v_H,  R_t = r_{t+1} + g c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1})
    w_t      = prod_{i <= t} (g c_i) / g                         (trajectory weight)
    A_t      = (R_t - v_t) / max(limit, P95(R) - P5(R))          (EMA percentiles)
    actor    = mean_t w_t * -(log pi(a_t | s_t) sg(A_t) + eta H[pi(. | s_t)])
    critic   = mean_t w_t * (twohot(R_t) + slow_reg twohot(v_t)) cross-entropies

with ``g`` the discount and ``lam`` the return lambda. Nothing of these losses
reaches the world model: the trajectory is computed without gradients, and the
return targets carry none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from rssm_tf.config import BehaviorConfig, RssmConfig
from rssm_tf.latents import gumbel, mix_logits, mode_onehot, sample_latent
from rssm_tf.layers import Mlp
from rssm_tf.losses import TwohotEncoder

_PACKAGE = "rssm_tf"
_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def _behavior(config: BehaviorConfig | dict) -> BehaviorConfig:
    return BehaviorConfig.from_dict(config) if isinstance(config, dict) else config


def _mlp(rssm_config: RssmConfig, behavior: BehaviorConfig, out_dim: int, name: str,
         **kwargs: Any) -> Mlp:
    units = behavior.units or rssm_config.hidden_size
    return Mlp(behavior.layers, units, out_dim=out_dim, norm=rssm_config.norm,
               norm_eps=rssm_config.norm_eps, activation=rssm_config.activation,
               name=name, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Actor(keras.layers.Layer):
    """The policy on the model state ``feat = [h, z]`` [..., D + S*K].

    ``call(feat)`` gives the distribution's parameters ``params`` [..., A] (discrete:
    unimix-adjusted log-probabilities) or [..., 2A] (continuous: the normal's mean
    ``tanh(m)`` and std ``(max_std - min_std) sigmoid(s + 2) + min_std``, side by
    side); :meth:`sample`, :meth:`mode`, :meth:`log_prob` and :meth:`entropy` read
    them. Actions are one-hot [..., A] (discrete) or in [-1, 1]-ish [..., A]
    (continuous, an unclipped normal sample; :func:`to_env_action` clips and scales).
    """

    def __init__(self, config: RssmConfig | dict, behavior: BehaviorConfig | dict,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = RssmConfig.from_dict(config)
        self.behavior = _behavior(behavior)
        self.action_dim = self.config.action_dim
        out = self.action_dim if self.behavior.discrete else 2 * self.action_dim
        self.net = _mlp(self.config, self.behavior, out, "net", dtype=self.dtype_policy)
        self.build()

    def build(self, input_shape: Any = None) -> None:
        if not self.built:
            self.net.build((None, self.config.feat_size))
            # DreamerV3 scales the output layer's initial weights by 0.01
            self.net.out.kernel.assign(self.net.out.kernel * 0.01)
            self.built = True

    def call(self, feat: tf.Tensor) -> tf.Tensor:
        raw = tf.cast(self.net(tf.cast(feat, self.compute_dtype)), "float32")
        b = self.behavior
        if b.discrete:
            return mix_logits(raw, b.unimix)
        mean, std = tf.split(raw, 2, axis=-1)
        std = (b.max_std - b.min_std) * tf.sigmoid(std + 2.0) + b.min_std
        return tf.concat([tf.tanh(mean), std], -1)

    def _split(self, params: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return params[..., :self.action_dim], params[..., self.action_dim:]

    def sample(self, params: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """An action from ``noise`` [..., A]: uniform in (0, 1) for a discrete actor
        (Gumbel-max, as the latents), standard normal for a continuous one."""
        if self.behavior.discrete:
            return mode_onehot(params + gumbel(noise))
        mean, std = self._split(params)
        return mean + std * tf.cast(noise, "float32")

    def mode(self, params: tf.Tensor) -> tf.Tensor:
        """The most likely action: the one-hot argmax, or the mean."""
        return mode_onehot(params) if self.behavior.discrete else self._split(params)[0]

    def log_prob(self, params: tf.Tensor, action: tf.Tensor) -> tf.Tensor:
        """``log pi(action)`` [...] (summed over the action dimensions)."""
        action = tf.cast(action, "float32")
        if self.behavior.discrete:
            return tf.reduce_sum(action * params, -1)
        mean, std = self._split(params)
        return tf.reduce_sum(-0.5 * tf.square((action - mean) / std) - tf.math.log(std)
                             - _HALF_LOG_2PI, -1)

    def entropy(self, params: tf.Tensor) -> tf.Tensor:
        """The policy's entropy [...] (nats, summed over the action dimensions)."""
        if self.behavior.discrete:
            return -tf.reduce_sum(tf.exp(params) * params, -1)
        _, std = self._split(params)
        return tf.reduce_sum(0.5 + _HALF_LOG_2PI + tf.math.log(std), -1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict(),
                "behavior": self.behavior.to_dict()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Critic(keras.layers.Layer):
    """The value on ``feat = [h, z]``: ``call(feat)`` -> twohot logits [..., bins]
    (symlog bins, the output layer zero-initialised: the first value is exactly 0);
    :meth:`value` decodes them, :meth:`loss` is the twohot cross-entropy."""

    def __init__(self, config: RssmConfig | dict, behavior: BehaviorConfig | dict,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = RssmConfig.from_dict(config)
        self.behavior = _behavior(behavior)
        self.twohot = TwohotEncoder(self.behavior.critic_bins)
        self.net = _mlp(self.config, self.behavior, self.behavior.critic_bins, "net",
                        zero_init=True, dtype=self.dtype_policy)
        self.build()

    def build(self, input_shape: Any = None) -> None:
        if not self.built:
            self.net.build((None, self.config.feat_size))
            self.built = True

    def call(self, feat: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.net(tf.cast(feat, self.compute_dtype)), "float32")

    def value(self, feat: tf.Tensor) -> tf.Tensor:
        """The expected value [...] of the state."""
        return self.twohot.decode(self(feat))

    def loss(self, logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        return self.twohot.loss(logits, tf.stop_gradient(target))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict(),
                "behavior": self.behavior.to_dict()}


def percentile(x: tf.Tensor, q: float) -> tf.Tensor:
    """The ``q``-th percentile of all of ``x``, interpolated linearly between the
    order statistics (``numpy.percentile``'s default)."""
    flat = tf.sort(tf.reshape(tf.cast(x, "float32"), [-1]))
    n = tf.shape(flat)[0]
    pos = q / 100.0 * tf.cast(n - 1, "float32")
    low = tf.cast(tf.floor(pos), tf.int32)
    high = tf.minimum(low + 1, n - 1)
    frac = pos - tf.cast(low, "float32")
    return flat[low] + frac * (tf.gather(flat, high) - flat[low])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReturnNormalizer(keras.layers.Layer):
    """DreamerV3's return scale: EMAs (``rate``) of the ``low``-th and ``high``-th
    percentiles of the returns, debiased by the EMA of 1 (so the first update gives
    the batch's own percentiles); :meth:`stats` -> ``(offset, scale)`` with
    ``scale = max(limit, P_high - P_low)``."""

    def __init__(self, rate: float = 0.01, limit: float = 1.0, low: float = 5.0,
                 high: float = 95.0, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.rate, self.limit, self.low, self.high = (float(rate), float(limit),
                                                      float(low), float(high))
        self.build()

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        for name in ("lo", "hi", "corr"):
            setattr(self, name, self.add_weight(name=name, shape=(), initializer="zeros",
                                                trainable=False, aggregation="mean"))
        self.built = True

    def update(self, returns: tf.Tensor) -> None:
        returns = tf.stop_gradient(tf.cast(returns, "float32"))
        r = self.rate
        for var, value in ((self.lo, percentile(returns, self.low)),
                           (self.hi, percentile(returns, self.high)), (self.corr, 1.0)):
            var.assign((1.0 - r) * var + r * value)

    def stats(self) -> tuple[tf.Tensor, tf.Tensor]:
        corr = 1.0 / tf.maximum(self.rate, tf.convert_to_tensor(self.corr))
        lo, hi = self.lo * corr, self.hi * corr
        return lo, tf.maximum(self.limit, hi - lo)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "limit": self.limit,
                "low": self.low, "high": self.high}


def lambda_returns(reward: tf.Tensor, cont: tf.Tensor, value: tf.Tensor, discount: float,
                   lam: float) -> tf.Tensor:
    """TD(lambda) returns ``R_0 .. R_{H-1}`` [H, ...] of a time-major trajectory
    ``reward``, ``cont``, ``value`` [H + 1, ...] (the reward and continue flag on
    arriving at each state, the state's value): ``R_H = v_H`` and
    ``R_t = r_{t+1} + discount c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1})``."""
    reward, cont, value = (tf.cast(x, "float32") for x in (reward, cont, value))

    def step(after: tf.Tensor, inputs: tuple) -> tf.Tensor:
        r, c, v = inputs
        return r + discount * c * ((1.0 - lam) * v + lam * after)

    return tf.scan(step, (reward[1:], cont[1:], value[1:]), initializer=value[-1],
                   reverse=True)


def trajectory_weight(cont: tf.Tensor, discount: float) -> tf.Tensor:
    """``w_t = prod_{i <= t} (discount c_i) / discount`` [H + 1, ...]: how much of
    the trajectory is still alive (and discounted) at step t."""
    return tf.math.cumprod(discount * tf.cast(cont, "float32"), axis=0) / discount


class Trajectory(NamedTuple):
    """An imagined trajectory, time-major: ``h`` [H + 1, N, D], ``z`` [H + 1, N, S*K]
    (the start first) and ``action`` [H, N, A] (``action[t]`` taken in state t)."""

    h: tf.Tensor
    z: tf.Tensor
    action: tf.Tensor

    def feat(self) -> tf.Tensor:
        return tf.concat([self.h, self.z], -1)


def to_env_action(action: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """A continuous actor's action clipped to [-1, 1] and mapped onto [low, high]
    (what the world model and the environment receive)."""
    return low + (tf.clip_by_value(action, -1.0, 1.0) + 1.0) * (0.5 * (high - low))


def imagine(rssm: Any, actor: Actor, h: tf.Tensor, z: tf.Tensor, action_noise: tf.Tensor,
            latent_noise: tf.Tensor, action_low: float = -1.0,
            action_high: float = 1.0) -> Trajectory:
    """Rolls the prior forward from the starts ``h`` [N, D], ``z`` [N, S*K] with actions
    the actor samples, one ``tf.scan`` of H = ``action_noise.shape[0]`` steps.

    ``action_noise`` [H, N, A] (see :meth:`Actor.sample`), ``latent_noise`` uniform
    [H, N, S, K] samples the prior. Continuous actions reach the world model through
    :func:`to_env_action`. No gradient flows through the trajectory."""
    h, z = tf.stop_gradient(tf.cast(h, "float32")), tf.stop_gradient(tf.cast(z, "float32"))
    discrete = actor.behavior.discrete

    def step(carry: tuple, inputs: tuple) -> tuple:
        h, z, _ = carry
        a_noise, g_noise = inputs
        action = actor.sample(actor(tf.concat([h, z], -1)), a_noise)
        taken = action if discrete else to_env_action(action, action_low, action_high)
        h = rssm._core(h, z, rssm._action_proj(taken))
        z = sample_latent(rssm.prior_logits(h), gumbel_noise=g_noise)
        return h, z, action

    init = (h, z, tf.zeros_like(action_noise[0]))
    hs, zs, actions = tf.scan(step, (action_noise, gumbel(latent_noise)), initializer=init)
    return Trajectory(tf.stop_gradient(tf.concat([h[None], hs], 0)),
                      tf.stop_gradient(tf.concat([z[None], zs], 0)),
                      tf.stop_gradient(actions))


class BehaviorLosses(NamedTuple):
    actor: tf.Tensor
    critic: tf.Tensor
    logs: dict[str, tf.Tensor]


def behavior_losses(rssm: Any, actor: Actor, critic: Critic, slow_critic: Critic,
                    normalizer: ReturnNormalizer, traj: Trajectory,
                    behavior: BehaviorConfig, update_normalizer: bool = True
                    ) -> BehaviorLosses:
    """The actor's and the critic's losses on an imagined trajectory (the module
    docstring's equations); updates ``normalizer`` with this batch's returns first
    (as DreamerV3 does) unless ``update_normalizer`` is False."""
    b = behavior
    feat = tf.stop_gradient(traj.feat())
    reward = rssm.decode_reward(rssm.predict_reward(traj.h, traj.z))
    cont = tf.sigmoid(rssm.predict_continue(traj.h, traj.z)[..., 0])
    slow = slow_critic.value(feat)
    ret = tf.stop_gradient(lambda_returns(reward, cont, slow, b.discount, b.return_lambda))
    weight = tf.stop_gradient(trajectory_weight(cont, b.discount))[:-1]
    if update_normalizer:
        normalizer.update(ret)
    _, scale = normalizer.stats()
    adv = tf.stop_gradient((ret - slow[:-1]) / scale)
    params = actor(feat[:-1])
    logpi = actor.log_prob(params, traj.action)
    ent = actor.entropy(params)
    actor_loss = tf.reduce_mean(weight * -(logpi * adv + b.entropy_scale * ent))
    logits = critic(feat[:-1])
    critic_loss = tf.reduce_mean(weight * (critic.loss(logits, ret)
                                           + b.slow_reg * critic.loss(logits, slow[:-1])))
    logs = {"actor_loss": actor_loss, "critic_loss": critic_loss,
            "imag_return": tf.reduce_mean(ret), "imag_reward": tf.reduce_mean(reward[1:]),
            "advantage": tf.reduce_mean(adv), "entropy": tf.reduce_mean(ent),
            "value": tf.reduce_mean(critic.twohot.decode(logits)), "return_scale": scale}
    return BehaviorLosses(actor_loss, critic_loss, logs)


def update_slow(slow: Critic, critic: Critic, rate: float) -> None:
    """``slow <- (1 - rate) slow + rate critic``, weight by weight."""
    for s, c in zip(slow.weights, critic.weights):
        s.assign((1.0 - rate) * s + rate * c)
