"""Model-predictive control over imagination: the cross-entropy method (CEM).

From the current posterior state, :func:`cem` samples N candidate action sequences of
horizon H, imagines all of them in one batched rollout of the prior (its mode), scores
each by its predicted rewards weighted by the predicted continue probabilities::

    return = sum_t discount^t * (c_1 * ... * c_t) * r_{t+1}     (t = 0 .. H-1)

(``r_{t+1}``, ``c_{t+1}``: the heads read at the state the t-th action leads to; the
reward of the step that ends an episode still counts, the ones after it do not), and
refits the sampling distribution to the ``top_k`` best for a number of iterations. The
first action of the final distribution is the plan. Random shooting is one iteration.

- ``continuous`` actions: a Gaussian per step and action dimension, starting at the
  middle of ``[low, high]`` with half its width as standard deviation; candidates are
  ``clip(mean + std * eps, low, high)``; the plan is the final mean's first step.
- ``discrete`` actions (one-hot): a categorical per step, starting uniform; candidates
  are Gumbel-max draws; the plan is the one-hot of the most probable first action.

The randomness comes in as an input, ``noise`` [I, B, N, H, A] (standard normal for
continuous, uniform in (0, 1) for discrete actions), so the same function runs in a
compiled Keras call, in the exported SavedModel's ``plan_continuous`` /
``plan_discrete`` signatures and in ONNX Runtime, and a seed reproduces a plan on any
of them. :class:`Planner` runs it on a Keras model; ``WorldModelClient.plan`` (in
``rssm_tf_serving``) on the exported files or TF Serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from rssm_tf.latents import gumbel
from rssm_tf.rssm import PosteriorTracker, Rssm, RssmState
from rssm_tf.validation import check_positive_int

KINDS = ("continuous", "discrete")

# rollout(h [M, D], z [M, S*K], actions [M, H, A]) -> (reward [M, H], continue_prob [M, H])
Rollout = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """The planner's settings, validated once.

    ``horizon`` H steps, ``candidates`` N sequences, ``top_k`` elites (<= N),
    ``iterations`` I refits (1: random shooting), ``kind`` "continuous" or "discrete",
    ``low`` / ``high`` the action bounds (a number or one per action dimension; finite;
    continuous actions only), ``discount`` in (0, 1], ``seed`` for the candidates.
    """

    horizon: int = 12
    candidates: int = 500
    top_k: int = 50
    iterations: int = 4
    kind: str = "continuous"
    low: float | tuple[float, ...] = -1.0
    high: float | tuple[float, ...] = 1.0
    discount: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("horizon", "candidates", "top_k", "iterations"):
            check_positive_int(name, getattr(self, name))
        if self.top_k > self.candidates:
            raise ValueError(f"top_k must be <= candidates ({self.candidates}), "
                             f"got {self.top_k}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.discount, (int, float)) or not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.kind == "continuous":
            low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
            for name, value in (("low", low), ("high", high)):
                if value.ndim > 1 or not np.all(np.isfinite(value)):
                    raise ValueError(f"{name} must be a finite number or a 1-D list of "
                                     f"finite numbers for continuous actions, "
                                     f"got {getattr(self, name)!r}")
            if np.any(np.greater_equal(low, high)):
                raise ValueError(f"low must be below high everywhere, got low={self.low!r}, "
                                 f"high={self.high!r}")

    def bounds(self, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` float32 [A]; a per-dimension bound must have A entries."""
        out = []
        for name in ("low", "high"):
            value = np.asarray(getattr(self, name), np.float32)
            if value.ndim == 1 and value.shape[0] != action_dim:
                raise ValueError(f"{name} must have {action_dim} entries (action_dim), "
                                 f"got {value.shape[0]}")
            out.append(np.broadcast_to(value, (action_dim,)).copy())
        return out[0], out[1]

    def noise(self, rng: np.random.Generator, batch: int, action_dim: int) -> np.ndarray:
        """The candidates' noise [I, B, N, H, A] float32 drawn from ``rng``."""
        shape = (self.iterations, batch, self.candidates, self.horizon, action_dim)
        if self.kind == "continuous":
            return rng.standard_normal(shape, dtype=np.float32)
        return rng.uniform(1e-6, 1.0 - 1e-6, shape).astype(np.float32)


def discounted_returns(reward: tf.Tensor, cont: tf.Tensor, discount: tf.Tensor
                       ) -> tf.Tensor:
    """``sum_t discount^t * prod_{j<t} c_j * r_t`` over the last axis ([M, H] -> [M]).

    The products are sums of logs through a strictly triangular matmul (no cumprod:
    ONNX has none)."""
    steps = tf.shape(reward)[-1]
    log_step = tf.math.log(tf.maximum(cont * discount, 1e-30))
    index = tf.range(steps)
    before = tf.cast(index[:, None] < index[None, :], reward.dtype)  # [j, t]: j < t
    weight = tf.exp(tf.matmul(log_step, before))
    return tf.reduce_sum(weight * reward, -1)


def cem(rollout: Rollout, h: tf.Tensor, z: tf.Tensor, noise: tf.Tensor,
        top_k: int | tf.Tensor, discount: float | tf.Tensor, kind: str,
        low: Any = None, high: Any = None) -> dict[str, tf.Tensor]:
    """The cross-entropy method from states ``h`` [B, D], ``z`` [B, S*K].

    ``noise`` [I, B, N, H, A] (see the module docstring), ``top_k`` elites, ``low`` /
    ``high`` [A] (continuous only). Returns ``action`` [B, A] (the plan's first action),
    ``plan`` [B, H, A] (the final mean, or the final probabilities for discrete
    actions), ``elite_return`` [B] (the mean predicted return of the last elites) and
    ``returns`` [B, N] (every candidate's predicted return in the last iteration).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    dynamic = tf.shape(noise)
    # static sizes where known (XLA needs a constant one-hot depth), tensors otherwise
    iterations, batch, count, horizon, dim = (
        size if size is not None else dynamic[i]
        for i, size in enumerate(noise.shape.as_list()))
    # [B * N, ...] with the static sizes kept (the exported graph's converters need them)
    flat_h = tf.reshape(tf.tile(h[:, None], [1, count, 1]), [-1, h.shape[-1]])
    flat_z = tf.reshape(tf.tile(z[:, None], [1, count, 1]), [-1, z.shape[-1]])
    offsets = tf.range(batch)[:, None] * count  # rows of each batch entry

    def sample(dist: tf.Tensor, eps: tf.Tensor, spread: tf.Tensor) -> tf.Tensor:
        if kind == "continuous":
            return tf.clip_by_value(dist[:, None] + spread[:, None] * eps, low, high)
        pick = tf.argmax(tf.math.log(dist[:, None] + 1e-8) + gumbel(eps), -1)
        return tf.one_hot(pick, dim, dtype=noise.dtype)

    def body(i, dist, spread, _, __):
        actions = sample(dist, noise[i], spread)  # [B, N, H, A]
        flat = tf.reshape(actions, [-1, horizon, dim])
        reward, cont = rollout(flat_h, flat_z, flat)
        returns = tf.reshape(discounted_returns(reward, cont, discount), [batch, count])
        best, index = tf.math.top_k(returns, top_k)  # [B, k]
        rows = tf.reshape(index + offsets, [-1])
        elite = tf.reshape(tf.gather(flat, rows), [batch, -1, horizon, dim])
        dist = tf.reduce_mean(elite, 1)
        if kind == "continuous":
            spread = tf.sqrt(tf.reduce_mean(tf.square(elite - dist[:, None]), 1))
        return i + 1, dist, spread, tf.reduce_mean(best, -1), returns

    dims = tf.stack([batch, horizon, dim])
    if kind == "continuous":
        dist = tf.broadcast_to((low + high) / 2.0, dims)
        spread = tf.broadcast_to((high - low) / 2.0, dims)
    else:
        dist = tf.fill(dims, 1.0 / tf.cast(dim, noise.dtype))
        spread = tf.zeros(dims, noise.dtype)  # unused
    _, dist, _, elite_return, returns = tf.while_loop(
        lambda i, *_: i < iterations, body,
        (tf.constant(0), dist, spread, tf.zeros([batch], noise.dtype),
         tf.zeros([batch, count], noise.dtype)))
    if kind == "continuous":
        action = dist[:, 0]
    else:
        action = tf.one_hot(tf.argmax(dist[:, 0], -1), dim, dtype=noise.dtype)
    return {"action": action, "plan": dist, "elite_return": elite_return,
            "returns": returns}


def rssm_rollout(rssm: Rssm) -> Rollout:
    """The planner's rollout on an :class:`Rssm`: the prior's mode through ``actions``,
    then the reward and continue heads at every imagined state."""

    def rollout(h: tf.Tensor, z: tf.Tensor, actions: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor]:
        states, _ = rssm.imagine(RssmState(h, z), actions, sample=False)
        out = rssm.predict(states.h, states.z)
        return out["reward"], out["continue_prob"]

    return rollout


class Planner(PosteriorTracker):
    """CEM on a Keras world model, one compiled call per planning step.

    ``model``: a :class:`~rssm_tf.WorldModel` (or its :class:`Rssm`); ``config``: a
    :class:`PlannerConfig` (or its fields as keywords). Keeps the posterior state of a
    batch of environments, like ``WorldModelClient``::

        planner = Planner(model, PlannerConfig(kind="discrete", candidates=100, top_k=10))
        planner.reset(batch_size=1)
        planner.observe(np.zeros([1, A]), {"obs": obs[None]})   # first step: no action
        action = planner.plan()                                 # [1, A]
        ... env.step(...); planner.observe(action, {"obs": next_obs[None]}) ...

    ``jit_compile``: XLA for the planning call (default); ``observe`` uses the
    posterior's mode.
    """

    def __init__(self, model: Any, config: PlannerConfig | None = None,
                 jit_compile: bool = True, **fields: Any) -> None:
        if config is not None and fields:
            raise TypeError("pass either config or its fields as keywords, not both")
        self.config = config if config is not None else PlannerConfig(**fields)
        self.rssm: Rssm = getattr(model, "rssm", model)
        if not isinstance(self.rssm, Rssm):
            raise TypeError(f"model must be a WorldModel or an Rssm, got "
                            f"{type(model).__name__}")
        c = self.rssm.config
        self.action_dim, self.obs_keys = c.action_dim, c.obs_keys
        self.low, self.high = self.config.bounds(c.action_dim)
        self.rng = np.random.default_rng(self.config.seed)
        cfg = self.config
        rollout = rssm_rollout(self.rssm)

        def plan(h, z, noise):
            return cem(rollout, h, z, noise, cfg.top_k, cfg.discount, cfg.kind,
                       tf.constant(self.low), tf.constant(self.high))

        self._plan = tf.function(plan, jit_compile=jit_compile, autograph=False)
        super().__init__(self.rssm, jit_compile)

    def plan(self, noise: np.ndarray | None = None) -> np.ndarray:
        """The planned first action [B, A] from the current state (which does not
        change). ``noise`` [I, B, N, H, A] overrides the planner's own seeded draw."""
        return self.plan_details(noise)["action"]

    def plan_details(self, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`plan` with the final ``plan`` [B, H, A], ``elite_return`` [B] and the
        last iteration's ``returns`` [B, N]."""
        self._require_state()
        batch = int(self.h.shape[0])
        if noise is None:
            noise = self.config.noise(self.rng, batch, self.action_dim)
        c = self.config
        want = (c.iterations, batch, c.candidates, c.horizon, self.action_dim)
        noise = np.asarray(noise, np.float32)
        if noise.shape != want:
            raise ValueError(f"noise must have shape {list(want)}, got {list(noise.shape)}")
        out = self._plan(self.h, self.z, tf.constant(noise))
        return {k: v.numpy() for k, v in out.items()}

