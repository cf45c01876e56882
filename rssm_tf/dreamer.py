"""The DreamerV3 agent as one Keras model: the world model, an actor and a critic
trained together, one compiled update per batch (docs/design.md section 8).

:class:`Dreamer` is a :class:`~rssm_tf.WorldModel` whose ``train_step`` also imagines
``horizon`` steps from every posterior state of the batch and trains the actor and
the critic there (:mod:`rssm_tf.behavior`); ``fit``, callbacks, ``.keras`` files and
``tf.data`` work as for the world model. :class:`ActorPolicy` acts with it in
environments (the planner interface of :func:`rssm_tf.agent.run_episodes`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rssm_tf.behavior import (
    Actor,
    Critic,
    ReturnNormalizer,
    behavior_losses,
    imagine,
    to_env_action,
    update_slow,
)
from rssm_tf.config import BehaviorConfig, RssmConfig
from rssm_tf.latents import uniform_noise
from rssm_tf.predictions import ActorHead, CriticHead
from rssm_tf.rssm import PosteriorTracker, RssmState, _Untracked, swap_bt
from rssm_tf.world_model import WorldModel

#: what the behavior part logs, beside the world model's metrics
BEHAVIOR_METRICS = ("actor_loss", "critic_loss", "imag_return", "imag_reward", "advantage",
                    "entropy", "value", "return_scale", "actor_grad_norm",
                    "critic_grad_norm")


def behavior_optimizer(lr: float, behavior: BehaviorConfig) -> keras.optimizers.Optimizer:
    """Adam with the behavior config's epsilon and global-norm clipping."""
    return keras.optimizers.Adam(learning_rate=lr, epsilon=behavior.adam_eps,
                                 global_clipnorm=behavior.clip_norm)


@keras.saving.register_keras_serializable(package="rssm_tf")
class Dreamer(WorldModel):
    """World model, actor, critic, slow critic and return normaliser.

    Args:
        config: the world model's :class:`RssmConfig` (or dict).
        behavior: :class:`BehaviorConfig` (or dict); ``discrete`` must match the
            action space (one-hot actions for ``Discrete``).
        action_low, action_high: the bounds of a continuous action space (every
            dimension); the actor's actions in [-1, 1] are mapped onto them.
        Other keywords: as :class:`WorldModel`.

    ``compile()`` sets the world model's optimiser (:func:`default_optimizer`) and the
    actor's and critic's (:func:`behavior_optimizer` with ``actor_lr``/``critic_lr``).
    """

    def __init__(self, config: RssmConfig | dict, behavior: BehaviorConfig | dict | None = None,
                 action_low: float = -1.0, action_high: float = 1.0, **kwargs: Any) -> None:
        behavior = BehaviorConfig.from_dict(behavior) if isinstance(behavior, dict) \
            else behavior or BehaviorConfig()
        if not isinstance(behavior, BehaviorConfig):
            raise TypeError(f"behavior must be a BehaviorConfig, got {type(behavior).__name__}")
        for name, value in (("action_low", action_low), ("action_high", action_high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not action_low < action_high:
            raise ValueError(f"action_low must be < action_high, got {action_low}, "
                             f"{action_high}")
        super().__init__(config, **kwargs)
        self.behavior = behavior
        self.action_low, self.action_high = float(action_low), float(action_high)
        policy = self.dtype_policy
        self.actor = Actor(self.config, behavior, name="actor", dtype=policy)
        self.critic = Critic(self.config, behavior, name="critic", dtype=policy)
        self.slow_critic = Critic(self.config, behavior, name="slow_critic", dtype=policy,
                                  trainable=False)
        for slow, value in zip(self.slow_critic.weights, self.critic.weights):
            slow.assign(value)
        self.return_norm = ReturnNormalizer(behavior.return_rate, behavior.return_limit,
                                            behavior.return_low, behavior.return_high,
                                            name="return_norm")
        self.slow_updates = self.add_weight(name="slow_updates", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False)
        self._heads = _Untracked((*self.heads, ActorHead(self.actor, self.rssm._feat,
                                                         self._to_env),
                                  CriticHead(self.critic, self.rssm._feat)))
        self.metric_names = self.metric_names + BEHAVIOR_METRICS
        self.trackers.update({n: keras.metrics.Mean(name=n) for n in BEHAVIOR_METRICS})

    def _world_variables(self) -> list:
        """The RSSM's and the replay heads' variables (not the actor's or critic's)."""
        variables = self.rssm.trainable_variables + [
            v for head in self.replay_heads for layer in head.layers
            for v in layer.trainable_variables]
        return list({id(v): v for v in variables}.values())

    def compile(self, optimizer: keras.optimizers.Optimizer | str | None = None,
                actor_optimizer: keras.optimizers.Optimizer | None = None,
                critic_optimizer: keras.optimizers.Optimizer | None = None,
                **kwargs: Any) -> None:
        """:meth:`WorldModel.compile`, plus the actor's and the critic's optimisers."""
        b = self.behavior
        self.actor_optimizer = actor_optimizer or behavior_optimizer(b.actor_lr, b)
        self.critic_optimizer = critic_optimizer or behavior_optimizer(b.critic_lr, b)
        super().compile(optimizer, **kwargs)
        with self.distribute_strategy.scope():
            self.actor_optimizer.build(self.actor.trainable_variables)
            self.critic_optimizer.build(self.critic.trainable_variables)

    # ------------------------------------------------------------- update
    def _update(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The world model's update, then imagination from its posterior states and
        the actor's and critic's updates, all in one compiled function."""
        batch = {k: swap_bt(v) for k, v in batch.items()}
        logs, states = self._world_update(batch)
        if self.behavior.imag_last:  # states are time-major [T, B, ...]
            states = RssmState(*(s[-self.behavior.imag_last:] for s in states))
        starts = RssmState(*(tf.reshape(s, [-1, s.shape[-1]]) for s in states))
        logs.update(self._behavior_update(starts))
        return logs

    def _behavior_noise(self, starts: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(action noise [H, N, A], latent noise [H, N, S, K]) for this step: a
        stateless function of (seed, optimiser step), as the world model's noise."""
        c, b = self.config, self.behavior
        step = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.constant(self.seed, tf.int32)
        replica = tf.distribute.get_replica_context()
        index = 0 if replica is None else replica.replica_id_in_sync_group
        action = uniform_noise(tf.stack([b.horizon, starts, c.action_dim]),
                               tf.stack([seed + 7919 * (1 + index), step]))
        if not b.discrete:
            action = tf.math.ndtri(action)
        latent = uniform_noise(tf.stack([b.horizon, starts, c.n_categories, c.n_classes]),
                               tf.stack([seed + 104729 * (1 + index), step]))
        return action, latent

    def _behavior_update(self, starts: RssmState) -> dict[str, tf.Tensor]:
        b = self.behavior
        action_noise, latent_noise = self._behavior_noise(tf.shape(starts.h)[0])
        traj = imagine(self.rssm, self.actor, starts.h, starts.z, action_noise,
                       latent_noise, self.action_low, self.action_high)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=True) as tape:
            losses = behavior_losses(self.rssm, self.actor, self.critic, self.slow_critic,
                                     self.return_norm, traj, b)
            # gradients are summed over replicas
            scaled = {"actor": losses.actor / replicas, "critic": losses.critic / replicas}
        logs = dict(losses.logs)
        for name, layer, opt in (("actor", self.actor, self.actor_optimizer),
                                 ("critic", self.critic, self.critic_optimizer)):
            variables = layer.trainable_variables
            grads = tape.gradient(scaled[name], variables)
            logs[f"{name}_grad_norm"] = tf.linalg.global_norm(grads) * replicas
            opt.apply(grads, variables)
        del tape
        rate = tf.where(self.slow_updates % b.slow_every == 0, b.slow_rate, 0.0)
        update_slow(self.slow_critic, self.critic, rate)
        self.slow_updates.assign_add(1)
        return self._update_trackers(logs)

    # -------------------------------------------------------------- acting
    def act(self, h: tf.Tensor, z: tf.Tensor, noise: tf.Tensor | None = None) -> tf.Tensor:
        """The actor's action [B, A] in state (h [B, D], z [B, S*K]): sampled from
        ``noise`` (see :meth:`Actor.sample`), or the mode without it. Continuous
        actions come mapped onto [action_low, action_high] (what the environment
        takes); discrete ones one-hot."""
        actor = next(head for head in self.heads if isinstance(head, ActorHead))
        raw = actor.outputs(h, z)
        if noise is None:
            return actor.predictions(raw)["action"]
        return self._to_env(self.actor.sample(raw["action_params"], noise))

    def _to_env(self, action: tf.Tensor) -> tf.Tensor:
        """The actor's action as the environment takes it: one-hot, or mapped onto
        [action_low, action_high] (:func:`to_env_action`)."""
        if self.behavior.discrete:
            return action
        return to_env_action(action, self.action_low, self.action_high)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "behavior": self.behavior.to_dict(),
                "action_low": self.action_low, "action_high": self.action_high}


class ActorPolicy(PosteriorTracker):
    """Acts with a :class:`Dreamer` in a batch of environments: the planner interface
    of :func:`rssm_tf.agent.run_episodes` (``reset``, ``observe``, ``plan``,
    ``obs_keys``). The posterior follows the observations (its mode; continuous actions
    in the environment's units); ``plan`` samples the actor (``sample=True``, seeded by
    ``seed``) or takes its mode. One compiled call per step each."""

    def __init__(self, model: Dreamer, sample: bool = True, seed: int = 0,
                 jit_compile: bool = True) -> None:
        if not isinstance(model, Dreamer):
            raise TypeError(f"model must be a Dreamer, got {type(model).__name__}")
        super().__init__(model.rssm, jit_compile)
        self.model, self.sample = model, bool(sample)
        c = model.config
        self.action_dim, self.obs_keys = c.action_dim, c.obs_keys
        self.rng = np.random.default_rng(seed)
        self._act = tf.function(model.act, jit_compile=jit_compile, autograph=False)
        self._mode = tf.function(lambda h, z: model.act(h, z), jit_compile=jit_compile,
                                 autograph=False)

    def plan(self) -> np.ndarray:
        """The action [B, A] for the current state."""
        self._require_state()
        if not self.sample:
            return self._mode(self.h, self.z).numpy()
        shape = (int(self.h.shape[0]), self.action_dim)
        # the draws of rssm_tf_serving.planner.ClientActor: same seed, same actions
        noise = self.rng.uniform(1e-6, 1.0 - 1e-6, shape) if self.model.behavior.discrete \
            else self.rng.standard_normal(shape)
        return self._act(self.h, self.z, tf.constant(noise, tf.float32)).numpy()
