"""What the world model predicts: one :class:`Head` per predicted quantity
(docs/design.md section 4, "Heads").

A head owns everything about its quantity, so the world model, its export and its
client loop over heads instead of naming them:

- ``layers``: the networks it reads (their variables are what an export tracks);
- ``outputs(h, z)``: its raw outputs on states [..., D], [..., S*K] (logits, or the
  observation keys in their loss space), and :meth:`Head.predictions`, the decoded
  values a user reads;
- ``losses(raw, batch)``: its per-step loss terms [...], the first named ``loss_name``
  (the term the world model weighs and sums), any others its logged parts;
- ``signature``: the exported signature that serves its predictions (``"predict"``,
  ``"decode"``, ``"act"``; None: not exported);
- ``trained_on``: ``"replay"`` (the world model's loss on replayed batches) or
  ``"imagination"`` (the behavior losses of :mod:`rssm_tf.behavior`, on imagined
  trajectories; such a head has no replay loss terms).

The heads of a :class:`~rssm_tf.WorldModel` are its :class:`ObservationHead` (the
decoder; one loss term per key, ``rec/<key>``, by the rules of
:mod:`rssm_tf.spaces`), then the RSSM's :class:`RewardHead` and :class:`ContinueHead`;
a :class:`~rssm_tf.Dreamer` adds its :class:`ActorHead` and :class:`CriticHead`.
The layers stay where the model's saved files have them (the decoder in the world
model, the reward and continue MLPs in the RSSM, the actor and critic in the agent); a
head only refers to them.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from rssm_tf.losses import TwohotEncoder
from rssm_tf.spaces import ObsSpace


class Head:
    """The protocol (see the module docstring); subclasses fill it in. ``layer`` is
    the network the head reads, on ``feat(h, z)`` (default ``concat(h, z)``)."""

    #: the world model's name for this head's loss term (its scale: ``<loss_name>_scale``)
    loss_name: str = ""
    #: the exported signature that serves :meth:`predictions` (None: not exported)
    signature: str | None = "predict"
    #: whether that signature also serves the raw outputs (the logits) beside them
    serves_raw: bool = False
    #: "replay": trained by the world model's loss; "imagination": by the behavior losses
    trained_on: str = "replay"

    def __init__(self, layer: keras.layers.Layer, feat: Any = None) -> None:
        self.layer = layer
        self._feat = feat or (lambda h, z: tf.concat([h, z], -1))

    @property
    def layers(self) -> tuple[keras.layers.Layer, ...]:
        return (self.layer,)

    @property
    def variables(self) -> list:
        return [v for layer in self.layers for v in layer.variables]

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The names of :meth:`losses`' terms, in order (``loss_name`` first)."""
        return (self.loss_name,)

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        """The decoded values of ``raw`` (what :meth:`outputs` gave) a user reads."""
        raise NotImplementedError

    def served(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        """The outputs of this head in its exported ``signature``."""
        return {**self.predictions(raw), **raw} if self.serves_raw else self.predictions(raw)

    def losses(self, raw: dict[str, Any], batch: dict[str, tf.Tensor]
               ) -> dict[str, tf.Tensor]:
        raise NotImplementedError


class ObservationHead(Head):
    """The decoder: every observation key, ``recon`` (a dict, each key in its loss
    space) raw and decoded back (:meth:`rssm_tf.spaces.ObsKey.decode`); losses
    ``rec`` (summed over keys) and ``rec/<key>``."""

    loss_name = "rec"
    signature = "decode"

    def __init__(self, decoder: keras.layers.Layer, space: ObsSpace) -> None:
        super().__init__(decoder)
        self.space = space

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (self.loss_name,) + tuple(key.loss_name for key in self.space.values())

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        return {"recon": self.layer(self._feat(h, z))}

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        return {k: self.space[k].decode(v) for k, v in raw["recon"].items()}

    def losses(self, raw: dict[str, Any], batch: dict[str, tf.Tensor]
               ) -> dict[str, tf.Tensor]:
        terms = {key.loss_name: key.loss(raw["recon"][k], batch[k])
                 for k, key in self.space.items()}
        return {self.loss_name: tf.add_n(list(terms.values())), **terms}


class RewardHead(Head):
    """The reward: ``reward_logits`` [..., bins] over ``twohot``'s bins and ``reward``
    [...], their expectation; loss ``rew``, the twohot cross-entropy of the batch's
    ``reward``."""

    loss_name = "rew"
    serves_raw = True

    def __init__(self, mlp: keras.layers.Layer, twohot: TwohotEncoder,
                 feat: Any) -> None:
        super().__init__(mlp, feat)
        self.twohot = twohot

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        return {"reward_logits": tf.cast(self.layer(self._feat(h, z)), "float32")}

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        return {"reward": self.twohot.decode(raw["reward_logits"])}

    def losses(self, raw: dict[str, Any], batch: dict[str, tf.Tensor]
               ) -> dict[str, tf.Tensor]:
        return {self.loss_name: self.twohot.loss(raw["reward_logits"], batch["reward"])}


class ContinueHead(Head):
    """Whether the episode goes on: ``continue_logits`` [...] (one Bernoulli logit)
    and ``continue_prob``; loss ``con``, the cross-entropy against ``1 - is_terminal``."""

    loss_name = "con"
    serves_raw = True

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        return {"continue_logits": tf.cast(self.layer(self._feat(h, z)), "float32")[..., 0]}

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        return {"continue_prob": tf.sigmoid(raw["continue_logits"])}

    def losses(self, raw: dict[str, Any], batch: dict[str, tf.Tensor]
               ) -> dict[str, tf.Tensor]:
        return {self.loss_name: tf.nn.sigmoid_cross_entropy_with_logits(
            labels=1.0 - batch["is_terminal"], logits=raw["continue_logits"])}


class ActorHead(Head):
    """The policy (:class:`rssm_tf.behavior.Actor`): ``action_params`` raw (see
    ``Actor.call``) and ``action``, its mode in the environment's units (one-hot, or
    mapped onto [low, high]); trained in imagination (``actor_loss``), served by the
    ``act`` signatures."""

    loss_name = "actor_loss"
    signature = "act"
    trained_on = "imagination"

    def __init__(self, actor: keras.layers.Layer, feat: Any, to_env: Any) -> None:
        super().__init__(actor, feat)
        self._to_env = to_env

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        return {"action_params": self.layer(self._feat(h, z))}

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        return {"action": self._to_env(self.layer.mode(raw["action_params"]))}


class CriticHead(Head):
    """The value (:class:`rssm_tf.behavior.Critic`): ``value_logits`` over its twohot
    bins and ``value``; trained in imagination (``critic_loss``); not exported."""

    loss_name = "critic_loss"
    signature = None
    trained_on = "imagination"

    def outputs(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, Any]:
        return {"value_logits": self.layer(self._feat(h, z))}

    def predictions(self, raw: dict[str, Any]) -> dict[str, tf.Tensor]:
        return {"value": self.layer.twohot.decode(raw["value_logits"])}


def read_heads(heads: tuple[Head, ...], h: tf.Tensor, z: tf.Tensor,
               signature: str | None = None) -> dict[str, Any]:
    """Every head's raw outputs and predictions on ``h``, ``z`` (or, with
    ``signature``, only what the heads of that signature serve)."""
    out: dict[str, Any] = {}
    for head in heads:
        if signature is not None and head.signature != signature:
            continue
        raw = head.outputs(h, z)
        out.update(head.served(raw) if signature else {**raw, **head.predictions(raw)})
    return out
