"""The serving graph: a ``tf.Module`` with the fixed signatures of docs/design.md section 6.

=================  ====================================  ==========================================
signature          inputs                                outputs
=================  ====================================  ==========================================
initial_state      batch_size int32 []                   h, z
obs_step           h, z, action, one input per           h_next, z_next, post_logits, prior_logits
                   observation key
imagine_step       h, z, action                          h_next, z_next, prior_logits
predict            h, z                                  reward, reward_logits, continue_prob,
                                                         continue_logits
imagine            h, z, actions [B, T, A]               h_seq, z_seq, reward, continue_prob
plan_continuous    h, z, noise [I, B, N, H, A], top_k,   action [B, A], plan [B, H, A],
                   discount, low [A], high [A]           elite_return [B], returns [B, N]
plan_discrete      h, z, noise [I, B, N, H, A], top_k,   action [B, A] (one-hot), plan [B, H, A]
                   discount                              (probabilities), elite_return,
                                                         returns
decode             h, z                                  one output per observation key: a
                                                         vector [B, O_k] (raw space), an image
                                                         [B, H, W, C_k] (floats in [0, 1])
act                h, z, action, one input per           h_next, z_next, action_next
(a Dreamer's)      observation key
=================  ====================================  ==========================================

``act`` is one environment step of a deployed agent (:class:`rssm_tf.Dreamer`): the
posterior's mode after ``action`` led to the observation (as ``obs_step_mode``, and as
the Keras ``ActorPolicy`` follows it), then the actor's action ``action_next`` in that
state, in the environment's units (continuous: clipped and mapped onto the action
bounds; discrete: one-hot), which is the next call's ``action``. ``act_mode`` takes
the actor's mode; ``act_noise``'s ``noise`` [B, A] samples it: uniform in (0, 1) for a
discrete actor (Gumbel-max), standard normal for a continuous one.

The ``plan_*`` signatures are the cross-entropy planner of :mod:`rssm_tf.planning` (the
same function the Keras ``Planner`` compiles): ``noise`` standard normal (continuous)
or uniform in (0, 1) (discrete) sets I iterations of N candidates of horizon H;
``top_k`` int32 [], ``discount`` float32 [].

Each stochastic signature ``X`` has ``X_mode`` (argmax) and ``X_noise`` (extra input
``noise`` uniform in (0, 1), [B, S, K] or [B, T, S, K] for ``imagine``; Gumbel-max).
``serving_default`` is ``obs_step``. All tensors float32, batch dimension dynamic,
except the images: ``obs_step`` takes one input per observation key of the model,
named after it (``RssmConfig.obs_shapes``): float32 [B, O_k] for a vector key, uint8
[B, H, W, C_k] for an image key (pixels in [0, 255], as a camera gives them; the graph
scales them).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from rssm_tf import RssmState
from rssm_tf.planning import cem, rssm_rollout
from rssm_tf.predictions import read_heads
from rssm_tf.world_model import WorldModel

STOCHASTIC = ("obs_step", "imagine_step", "imagine")
#: a Dreamer's signatures, beside the world model's
ACTOR_SIGNATURES = ("act", "act_mode", "act_noise")
PLAN_SIGNATURES = ("plan_continuous", "plan_discrete")
SIGNATURES = ("initial_state", "predict") + tuple(
    f"{name}{suffix}" for name in STOCHASTIC for suffix in ("", "_mode", "_noise")) \
    + PLAN_SIGNATURES + ("decode",)


class InferenceModule(tf.Module):
    """Wraps a :class:`WorldModel`'s RSSM in the serving signatures.

    The functions are plain Python methods (``obs_step(h, z, action, obs, noise=None,
    mode=False)`` and so on) so that the same code can be run eagerly, as a
    ``tf.function`` or under XLA for the parity report; :meth:`signatures` binds them
    to fixed input specs for ``tf.saved_model.save``.
    """

    def __init__(self, model: WorldModel) -> None:
        super().__init__(name="rssm_world_model")
        self.model = model
        self.rssm = model.rssm
        # TF Serving (and saved_model_cli, TFLiteConverter) restore variables through
        # the MetaGraph's restore op, from the checkpoint of the objects the module
        # tracks. A tf.Module does not see the tf.Variables inside Keras 3 layers, so
        # they are listed here, as keras.export.ExportArchive.track does; without this
        # only tf.saved_model.load (which follows the functions' captures) works.
        # (the RSSM's, and those of every head a signature serves: the decoder, the
        # reward and continue heads, a Dreamer's actor)
        #: the actor of a :class:`rssm_tf.Dreamer` (``act*`` signatures), else None
        self.actor = getattr(model, "actor", None)
        variables = model.rssm.variables + [v for head in model.heads if head.signature
                                             for v in head.variables]
        unique = {id(v): v for v in variables}  # the RSSM's own heads are in both
        self.tracked_variables = [v.value for v in unique.values()]
        c = model.config
        self.config = c
        f32 = tf.float32
        self.specs = {
            "h": tf.TensorSpec([None, c.deterministic_size], f32, name="h"),
            "z": tf.TensorSpec([None, c.stoch_size], f32, name="z"),
            "action": tf.TensorSpec([None, c.action_dim], f32, name="action"),
            "actions": tf.TensorSpec([None, None, c.action_dim], f32, name="actions"),
            "noise": tf.TensorSpec([None, c.n_categories, c.n_classes], f32, name="noise"),
            "noise_seq": tf.TensorSpec([None, None, c.n_categories, c.n_classes], f32,
                                       name="noise"),
            "plan_noise": tf.TensorSpec([None, None, None, None, c.action_dim], f32,
                                        name="noise"),
            "action_noise": tf.TensorSpec([None, c.action_dim], f32, name="noise"),
            "top_k": tf.TensorSpec([], tf.int32, name="top_k"),
            "discount": tf.TensorSpec([], f32, name="discount"),
            "low": tf.TensorSpec([c.action_dim], f32, name="low"),
            "high": tf.TensorSpec([c.action_dim], f32, name="high"),
        }
        #: one input per observation key, named after it
        self.obs_specs = c.space.specs([None], named=True)

    @property
    def signature_names(self) -> tuple[str, ...]:
        """The signatures this model exports: :data:`SIGNATURES`, and
        :data:`ACTOR_SIGNATURES` for a Dreamer."""
        return SIGNATURES + (ACTOR_SIGNATURES if self.actor is not None else ())

    # ------------------------------------------------------------ functions
    def _noise(self, noise: tf.Tensor | None, mode: bool, like: tf.Tensor) -> Any:
        """The noise a sampling step uses: given, none (mode), or fresh uniform."""
        if noise is not None or mode:
            return noise
        c = self.config
        shape = tf.concat([tf.shape(like)[:-1], [c.n_categories, c.n_classes]], 0)
        return tf.random.uniform(shape, 1e-6, 1.0 - 1e-6)

    def initial_state(self, batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
        state = self.rssm.initial_state(batch_size)
        return {"h": state.h, "z": state.z}

    def obs_step(self, h, z, action, obs, noise=None, mode=False) -> dict[str, tf.Tensor]:
        """``obs``: a dict with the model's observation keys."""
        state, post, prior = self.rssm.obs_step(RssmState(h, z), action, obs,
                                                sample=False, noise=self._noise(noise, mode, h))
        return {"h_next": state.h, "z_next": state.z, "post_logits": post,
                "prior_logits": prior}

    def imagine_step(self, h, z, action, noise=None, mode=False) -> dict[str, tf.Tensor]:
        state, prior = self.rssm.imagine_step(RssmState(h, z), action, sample=False,
                                              noise=self._noise(noise, mode, h),
                                              return_logits=True)
        return {"h_next": state.h, "z_next": state.z, "prior_logits": prior}

    def predict(self, h, z) -> dict[str, tf.Tensor]:
        """What the heads of the ``predict`` signature serve (the reward's and the
        continue flag's predictions and logits)."""
        return read_heads(self.model.heads, h, z, "predict")

    def imagine(self, h, z, actions, noise=None, mode=False) -> dict[str, tf.Tensor]:
        states, _ = self.rssm.imagine(RssmState(h, z), actions, sample=False,
                                      noise=self._noise(noise, mode, actions[..., :1]))
        out = self.predict(states.h, states.z)
        return {"h_seq": states.h, "z_seq": states.z, "reward": out["reward"],
                "continue_prob": out["continue_prob"]}

    def plan_continuous(self, h, z, noise, top_k, discount, low, high
                        ) -> dict[str, tf.Tensor]:
        return cem(rssm_rollout(self.rssm), h, z, noise, top_k, discount, "continuous",
                   low, high)

    def plan_discrete(self, h, z, noise, top_k, discount) -> dict[str, tf.Tensor]:
        return cem(rssm_rollout(self.rssm), h, z, noise, top_k, discount, "discrete")

    def act(self, h, z, action, obs, noise=None, mode=False) -> dict[str, tf.Tensor]:
        """The posterior's mode after ``obs``, and the actor's action there: its mode,
        or sampled from ``noise`` (drawn here when None)."""
        state, _, _ = self.rssm.obs_step(RssmState(h, z), action, obs, sample=False)
        if noise is None and not mode:
            shape = tf.stack([tf.shape(h)[0], self.config.action_dim])
            noise = tf.random.uniform(shape, 1e-6, 1.0 - 1e-6) \
                if self.actor.behavior.discrete else tf.random.normal(shape)
        chosen = self.model.act(state.h, state.z, None if mode else noise)
        return {"h_next": state.h, "z_next": state.z, "action_next": chosen}

    def decode(self, h, z) -> dict[str, tf.Tensor]:
        """What the heads of the ``decode`` signature serve: the prediction of every
        observation key from the state."""
        return read_heads(self.model.heads, h, z, "decode")

    # ----------------------------------------------------------- signatures
    def function(self, name: str) -> tuple[Any, list[tf.TensorSpec]]:
        """``(fn, specs)`` of a signature: ``fn(**inputs) -> outputs`` (plain Python,
        so it runs eagerly, in a ``tf.function`` or under XLA) and its input specs."""
        s = self.specs
        if name == "initial_state":
            return self.initial_state, [tf.TensorSpec([], tf.int32, name="batch_size")]
        if name in ("predict", "decode"):
            return getattr(self, name), [s["h"], s["z"]]
        if name in PLAN_SIGNATURES:
            specs = [s["h"], s["z"], s["plan_noise"], s["top_k"], s["discount"]]
            if name == "plan_continuous":
                specs += [s["low"], s["high"]]
            return getattr(self, name), specs
        base = name.removesuffix("_mode").removesuffix("_noise")
        if name not in self.signature_names:
            raise ValueError(f"unknown signature {name!r}; expected one of "
                             f"{self.signature_names}")
        observed = [s["h"], s["z"], s["action"], *self.obs_specs.values()]
        specs = {"obs_step": observed, "act": observed,
                 "imagine_step": [s["h"], s["z"], s["action"]],
                 "imagine": [s["h"], s["z"], s["actions"]]}[base]
        method = getattr(self, base)
        if base in ("obs_step", "act"):  # the observation keys, flat inputs, as one dict
            keys, observe = tuple(self.obs_specs), method

            def method(**kw: Any) -> dict[str, tf.Tensor]:
                return observe(obs={k: kw.pop(k) for k in keys}, **kw)
        if name.endswith("_mode"):
            return (lambda **kw: method(**kw, mode=True)), specs
        if name.endswith("_noise"):
            extra = {"imagine": "noise_seq", "act": "action_noise"}.get(base, "noise")
            return method, specs + [s[extra]]
        return method, specs

    def signatures(self) -> dict[str, Any]:
        """Concrete functions keyed by signature name (``serving_default`` included)."""
        concrete = {}
        for name in self.signature_names:
            fn, specs = self.function(name)
            names = [spec.name for spec in specs]

            def positional(*args, fn=fn, names=names):
                return fn(**dict(zip(names, args)))

            # Input keys of the signature are the specs' names (h, z, action, ...).
            concrete[name] = tf.function(positional, input_signature=specs,
                                         autograph=False).get_concrete_function()
        concrete["serving_default"] = concrete["obs_step"]
        return concrete
