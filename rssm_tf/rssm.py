"""The Recurrent State-Space Model of DreamerV3 (docs/design.md sections 2-4).

State ``(h, z)``: ``h`` [B, D] the GRU memory, ``z`` [B, S*K] S one-hot latents.
One step::

    a  = action / sg(max(1, |action|))
    h' = BlockGRU(concat(L(h), L(z), L(a)), h)
    prior_logits = mix(Dense(L(L(h'))))                     # imagination
    post_logits  = mix(Dense(L(concat(h', encoder(obs)))))  # observation

``obs`` is a dict with the keys of ``config.obs_shapes`` (float vectors [..., O_k],
uint8 images [..., H, W, C_k]); a model with one key also takes its bare tensor.
    z' = straight_through(sample(logits))

Only the chain ``z -> GRU -> posterior -> z`` is sequential. ``observe`` computes the
encoder, the action projection, the posterior's embed term and the prior for all T at
once, outside the loop; the loop carries ``(h, z)`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from rssm_tf.config import RssmConfig
from rssm_tf.heads import ObsEncoder, make_continue_head, make_reward_head
from rssm_tf.latents import gumbel, mix_logits, sample_latent, sample_log_probs, uniform_noise
from rssm_tf.layers import BlockGRU, Mlp, NormDense, matmul
from rssm_tf.losses import TwohotEncoder
from rssm_tf.predictions import ContinueHead, RewardHead, read_heads
from rssm_tf.scan import observe_scan
from rssm_tf.validation import (
    as_float_tensor,
    check_keys,
    check_positive_int,
    check_same,
    check_shape,
    eager_finite,
)


class KernelView(NamedTuple):
    """Rows ``[start, stop)`` of a kernel, the part one multiplication of the step uses
    (``rows=None``: all of it)."""

    kernel: Any
    rows: tuple[int, int] | None


class _Untracked:
    """Holds a value (compiled functions) where neither Keras nor ``tf.saved_model``
    looks: a layer's attributes and their dicts are tracked, so a SavedModel of the
    layer would carry an XLA-compiled loop TF Serving does not run by default, and one
    of a trained model would try to save its cached training update."""

    def __init__(self, value: Any = None) -> None:
        self.value = value


class RssmState(NamedTuple):
    """The recurrent state: ``h`` float32 [B, D] (or [B, T, D] for sequences) and
    ``z`` float32 [B, S*K] (or [B, T, S*K]), S one-hot vectors of K classes."""

    h: tf.Tensor
    z: tf.Tensor

    def feat(self) -> tf.Tensor:
        """``concat(h, z)`` on the last axis: [..., D + S*K]."""
        return tf.concat([self.h, self.z], -1)


def swap_bt(x: tf.Tensor) -> tf.Tensor:
    """Swap the first two axes: [B, T, ...] <-> [T, B, ...]."""
    return tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))


@keras.saving.register_keras_serializable(package="rssm_tf")
class Rssm(keras.layers.Layer):
    """DreamerV3's RSSM as a Keras layer: encoder, recurrent core, prior and posterior,
    reward and continue heads.

    Args:
        config: an :class:`RssmConfig` (or its dict).
        twohot: the :class:`TwohotEncoder` of the reward head (255 symlog bins).
        seed: seed of the layer's sampling noise (a ``keras.random.SeedGenerator``).
        manual_gradient: differentiate ``observe``'s loop with the hand-written
            backward of :mod:`rssm_tf.scan` (True) or TensorFlow's autodiff (False);
            the gradients are the same.

    Sampling: every step takes ``sample`` (True: draw from the layer's seeded noise;
    False: the mode) and ``noise`` (uniform (0, 1) of the logits' shape; overrides
    ``sample`` and gives reproducible Gumbel-max samples).
    """

    def __init__(self, config: RssmConfig | dict, twohot: TwohotEncoder | dict | None = None,
                 seed: int | None = None, manual_gradient: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = RssmConfig.from_dict(config)
        if not isinstance(config, RssmConfig):
            raise TypeError(f"config must be an RssmConfig, got {type(config).__name__}")
        if isinstance(twohot, dict):
            twohot = TwohotEncoder.from_config(twohot)
        self.config = config
        self.twohot = twohot or TwohotEncoder()
        self.seed = seed
        self.manual_gradient = bool(manual_gradient)
        self._xla_loop = _Untracked()  # observe_time_major's loop under XLA, once built
        c = config
        H, D, policy = c.hidden_size, c.deterministic_size, self.dtype_policy
        norm = dict(norm=c.norm, norm_eps=c.norm_eps, activation=c.activation, dtype=policy)
        self.encoder = ObsEncoder(c, name="encoder", dtype=policy)
        self.inp_h = NormDense(H, name="inp_h", **norm)
        self.inp_z = NormDense(H, name="inp_z", **norm)
        self.inp_a = NormDense(H, name="inp_a", **norm)
        self.gru = BlockGRU(D, c.n_blocks, name="gru", **norm)
        self.prior_net = Mlp(c.prior_layers, H, out_dim=c.stoch_size, name="prior",
                             **norm)
        self.post_net = Mlp(c.posterior_layers, H, out_dim=c.stoch_size, name="post",
                            **norm)
        self.reward_head = make_reward_head(c, self.twohot.num_bins, dtype=policy)
        self.continue_head = make_continue_head(c, dtype=policy)
        self._heads = _Untracked((RewardHead(self.reward_head, self.twohot, self._feat),
                                  ContinueHead(self.continue_head, self._feat)))
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.build()

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        c = self.config
        H, D, F = c.hidden_size, c.deterministic_size, c.feat_size
        self.encoder.build()
        self.inp_h.build((None, D))
        self.inp_z.build((None, c.stoch_size))
        self.inp_a.build((None, c.action_dim))
        self.gru.build((None, 3 * H))
        self.prior_net.build((None, D))
        self.post_net.build((None, D + self.encoder.embed_size))
        self.reward_head.build((None, F))
        self.continue_head.build((None, F))
        self.built = True

    @property
    def views(self) -> dict[str, KernelView]:
        """The row layout of the two kernels the step uses in parts, named once here
        (a property, so Keras does not track the variables a second time).

        The GRU's input kernel takes ``x = [L(h) | L(z) | L(a)]``, H rows each: the loop
        multiplies ``[L(h) | L(z)]`` (built in :meth:`_core`, in that order); the
        action's term is computed for all T at once. The posterior's first kernel takes
        ``[h | embed]``: D rows for ``h`` inside the loop, the encoder's width for the
        embedding outside it."""
        H, D = self.config.hidden_size, self.config.deterministic_size
        E, post0 = self.encoder.embed_size, self.post_net.hidden[0].dense.kernel
        return {"gru/input": KernelView(self.gru.input_kernel, (0, 2 * H)),
                "gru/input_a": KernelView(self.gru.input_kernel, (2 * H, 3 * H)),
                "post/0": KernelView(post0, (0, D)),
                "post/embed": KernelView(post0, (D, D + E))}

    # ----------------------------------------------------------------- state
    def initial_state(self, batch: int | tf.Tensor) -> RssmState:
        """Zeros: ``h`` [batch, D], ``z`` [batch, S*K], float32."""
        if isinstance(batch, int) and batch <= 0:
            raise ValueError(f"batch must be a positive integer, got {batch}")
        c = self.config
        return RssmState(tf.zeros([batch, c.deterministic_size]),
                         tf.zeros([batch, c.stoch_size]))

    # ------------------------------------------------ pieces of one step
    def _action_proj(self, action: tf.Tensor) -> tf.Tensor:
        """GRU input term of the action: ``L(a) @ K_a``, [..., A] -> [..., P]."""
        action = tf.cast(action, "float32")
        a = action / tf.stop_gradient(tf.maximum(1.0, tf.abs(action)))
        a_feat = self.inp_a(tf.cast(a, self.compute_dtype))
        return matmul("gru/input_a", a_feat, *self.views["gru/input_a"])

    def _embed_proj(self, obs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Posterior's first-layer term of the observation dict -> [..., H]."""
        return matmul("post/embed", self.encoder(obs), *self.views["post/embed"])

    def _core(self, h: tf.Tensor, z: tf.Tensor, a_proj: tf.Tensor,
              mm: Any = matmul) -> tf.Tensor:
        """``h' = GRU(concat(L(h), L(z), L(a)), h)`` given the action's term."""
        dtype = self.compute_dtype
        # a non-negative axis: tf2onnx cannot resolve -1 where it loses the shapes (the
        # planner's rollout runs this inside two nested loops)
        x = tf.concat([self.inp_h.activate(mm("inp_h", tf.cast(h, dtype),
                                                self.inp_h.dense.kernel)),
                       self.inp_z.activate(mm("inp_z", tf.cast(z, dtype),
                                                self.inp_z.dense.kernel))], h.shape.rank - 1)
        x_proj = mm("gru/input", x, *self.views["gru/input"]) + tf.cast(a_proj, dtype)
        return self.gru.step(h, x_proj, mm)

    def _to_logits(self, flat: tf.Tensor) -> tf.Tensor:
        c = self.config
        shape = tf.concat([tf.shape(flat)[:-1], [c.n_categories, c.n_classes]], 0)
        return mix_logits(tf.reshape(tf.cast(flat, "float32"), shape), c.unimix)

    def _post_logits(self, h: tf.Tensor, e_proj: tf.Tensor, mm: Any = matmul) -> tf.Tensor:
        dtype = self.compute_dtype
        first = self.post_net.hidden[0]
        x = first.activate(mm("post/0", tf.cast(h, dtype), *self.views["post/0"])
                           + tf.cast(e_proj, dtype))
        for i, layer in enumerate(self.post_net.hidden[1:]):
            x = layer.activate(mm(f"post/{i + 1}", x, layer.dense.kernel))
        out = self.post_net.out
        return self._to_logits(mm("post/out", x, out.kernel, None, out.bias))

    def _observe_step(self, h: tf.Tensor, z: tf.Tensor, first: tf.Tensor, a_proj: tf.Tensor,
                      e_proj: tf.Tensor, gumbel_noise: tf.Tensor | None, mm: Any = matmul
                      ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One step of the observe loop: reset where ``first`` [B, 1] is 1, then
        ``h'``, the posterior logits and ``z'`` (from ``noise``, Gumbel noise already
        transformed by :func:`~rssm_tf.latents.gumbel`, or the mode)."""
        keep = 1.0 - first
        h = self._core(h * keep, z * keep, a_proj, mm)  # the initial state is zeros
        post = self._post_logits(h, e_proj, mm)
        return h, sample_log_probs(post, gumbel_noise), post

    def _observe_loop(self, h0: tf.Tensor, z0: tf.Tensor, first: tf.Tensor, a_proj: tf.Tensor,
                      e_proj: tf.Tensor, gumbel_noise: tf.Tensor | None
                      ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """:meth:`_observe_step` over time-major inputs ([T, B, ...]), by ``tf.scan``."""
        c = self.config
        sampled = gumbel_noise is not None
        elems = (first, a_proj, e_proj) + ((gumbel_noise,) if sampled else ())

        def step(carry, inputs):
            return self._observe_step(carry[0], carry[1], *inputs[:3],
                                      inputs[3] if sampled else None)

        init = (h0, z0, tf.zeros(tf.concat([tf.shape(h0)[:1],
                                            [c.n_categories, c.n_classes]], 0)))
        return tf.scan(step, elems, initializer=init)

    def prior_logits(self, h: tf.Tensor) -> tf.Tensor:
        """Unimix-adjusted prior logits from ``h`` [..., D] -> [..., S, K]."""
        return self._to_logits(self.prior_net(tf.cast(h, self.compute_dtype)))

    def posterior_logits(self, h: tf.Tensor, obs: tf.Tensor | dict) -> tf.Tensor:
        """Unimix-adjusted posterior logits from ``h`` [..., D] and the observation
        (a dict of the config's observation keys, [..., *shape] each)."""
        return self._post_logits(h, self._embed_proj(self.check_obs(obs, None)))

    def _noise(self, shape: Any, lead: list[str], sample: bool,
               noise: tf.Tensor | None) -> tf.Tensor | None:
        """Uniform noise of ``shape`` (lead dims + [S, K]): the given ``noise``
        (checked), fresh seeded noise if ``sample``, else None (the mode)."""
        if noise is not None:
            noise = as_float_tensor("noise", noise)
            check_shape("noise", noise,
                        lead + [self.config.n_categories, self.config.n_classes])
            return eager_finite("noise", noise)
        if not sample:
            return None
        return uniform_noise(shape, self.seed_generator.next())

    # ----------------------------------------------------------- validation
    def _check_state(self, state: RssmState) -> RssmState:
        if not isinstance(state, (RssmState, tuple, list)) or len(state) != 2:
            raise TypeError("state must be an RssmState(h, z)")
        c = self.config
        h = as_float_tensor("state.h", state[0])
        z = as_float_tensor("state.z", state[1])
        check_shape("state.h", h, ["B", c.deterministic_size])
        check_shape("state.z", z, ["B", c.stoch_size])
        check_same(["state.h", "state.z"], [h.shape[0], z.shape[0]], "batch size")
        return RssmState(eager_finite("state.h", h), eager_finite("state.z", z))

    def check_obs(self, obs: Any, lead: list[str | None] | None, finite: bool = True
                  ) -> dict[str, tf.Tensor]:
        """The observation as a dict of checked tensors, one per ``config.obs_keys``:
        float32 [*lead, O_k] for a vector key, uint8 [*lead, H, W, C_k] for an image
        key (``lead=None``: any leading axes). A bare tensor is taken as the single key
        of a one-key config. ``finite``: refuse NaN/Inf in eager calls (see
        :func:`eager_finite`). Errors name the key, what was expected and what came."""
        c = self.config
        keys = c.obs_keys
        if not isinstance(obs, dict):
            if len(keys) != 1:
                raise TypeError(f"obs must be a dict with keys {list(keys)} (this model "
                                f"has several observation keys), got {type(obs).__name__}")
            obs = {keys[0]: obs}
        check_keys("obs", obs, keys)
        out = {}
        for key, space in c.space.items():
            value = space.convert(obs[key])
            if finite and space.dtype == "float32":
                value = eager_finite(key, value)
            rank = value.shape.rank
            axes = lead if lead is not None else \
                [None] * max(1, (rank or 0) - len(space.shape))
            check_shape(key, value, list(axes) + list(space.shape))
            out[key] = value
        return out

    def _check_step(self, state: RssmState, action: Any, obs: Any = None):
        c = self.config
        state = self._check_state(state)
        action = eager_finite("action", as_float_tensor("action", action))
        check_shape("action", action, ["B", c.action_dim])
        names, sizes = ["state.h", "action"], [state.h.shape[0], action.shape[0]]
        if obs is not None:
            obs = self.check_obs(obs, ["B"])
            names += list(obs)
            sizes += [v.shape[0] for v in obs.values()]
        check_same(names, sizes, "batch size")
        return state, action, obs

    # ------------------------------------------------------------- steps
    def obs_step(self, state: RssmState, action: tf.Tensor, obs: tf.Tensor,
                 sample: bool = True, noise: tf.Tensor | None = None
                 ) -> tuple[RssmState, tf.Tensor, tf.Tensor]:
        """One observation step.

        ``state`` (h [B, D], z [B, S*K]), ``action`` [B, A] (the action that led to
        ``obs``), ``obs`` a dict of the observation keys, [B, *shape] each (a bare
        tensor for a one-key model) -> (new state, ``post_logits`` [B, S, K],
        ``prior_logits`` [B, S, K]); the new ``z`` is drawn from the posterior.
        """
        state, action, obs = self._check_step(state, action, obs)
        h = self._core(state.h, state.z, self._action_proj(action))
        post = self._post_logits(h, self._embed_proj(obs))
        prior = self.prior_logits(h)
        z = sample_latent(post, self._noise(tf.shape(post), ["B"], sample, noise))
        return RssmState(h, z), post, prior

    def imagine_step(self, state: RssmState, action: tf.Tensor, sample: bool = True,
                     noise: tf.Tensor | None = None, return_logits: bool = False
                     ) -> RssmState | tuple[RssmState, tf.Tensor]:
        """One imagination step: (h [B, D], z [B, S*K]), ``action`` [B, A] -> new
        state with ``z`` drawn from the prior; with ``return_logits`` also the
        ``prior_logits`` [B, S, K]."""
        state, action, _ = self._check_step(state, action)
        h = self._core(state.h, state.z, self._action_proj(action))
        prior = self.prior_logits(h)
        z = sample_latent(prior, self._noise(tf.shape(prior), ["B"], sample, noise))
        return (RssmState(h, z), prior) if return_logits else RssmState(h, z)

    @property
    def heads(self) -> tuple[RewardHead, ContinueHead]:
        """The reward and continue heads (:mod:`rssm_tf.predictions`)."""
        return self._heads.value

    def predict_reward(self, h: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """Reward twohot logits [..., bins] from ``h`` [..., D] and ``z`` [..., S*K]."""
        return self.heads[0].outputs(h, z)["reward_logits"]

    def predict_continue(self, h: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """Continue Bernoulli logit [..., 1] from ``h`` [..., D] and ``z`` [..., S*K]."""
        return self.heads[1].outputs(h, z)["continue_logits"][..., None]

    def predict(self, h: tf.Tensor, z: tf.Tensor) -> dict[str, tf.Tensor]:
        """Both heads read out for ``h`` [..., D], ``z`` [..., S*K]: ``reward`` [...]
        (decoded), ``reward_logits`` [..., bins], ``continue_prob`` [...] and
        ``continue_logits`` [...]."""
        return read_heads(self.heads, h, z, "predict")

    def decode_reward(self, reward_logits: tf.Tensor) -> tf.Tensor:
        """Expected reward [...] from twohot logits [..., bins]."""
        return self.twohot.decode(reward_logits)

    def _feat(self, h: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        c = self.config
        h = as_float_tensor("h", h)
        z = as_float_tensor("z", z)
        if h.shape.rank is not None:
            check_shape("h", h, [None] * (h.shape.rank - 1) + [c.deterministic_size])
        if z.shape.rank is not None:
            check_shape("z", z, [None] * (z.shape.rank - 1) + [c.stoch_size])
        return tf.cast(tf.concat([h, z], -1), self.compute_dtype)

    # ------------------------------------------------------ sequence forms
    def observe(self, obs: tf.Tensor | dict, actions: tf.Tensor, is_first: tf.Tensor,
                state: RssmState | None = None, sample: bool = True,
                noise: tf.Tensor | None = None
                ) -> tuple[RssmState, tf.Tensor, tf.Tensor]:
        """Observe a batch of sequences.

        ``obs`` a dict of the observation keys, [B, T, *shape] each (or one tensor),
        ``actions`` [B, T, A] (``actions[:, t]`` led to
        ``obs[:, t]``), ``is_first`` [B, T] (1 resets the state and the previous
        action before step t), ``state`` (h [B, D], z [B, S*K]; default zeros),
        ``noise`` [B, T, S, K] optional.
        Returns (states with h [B, T, D] and z [B, T, S*K], ``post_logits``
        [B, T, S, K], ``prior_logits`` [B, T, S, K]).
        """
        c = self.config
        obs = self.check_obs(obs, ["B", "T"])
        actions = eager_finite("actions", as_float_tensor("actions", actions))
        is_first = as_float_tensor("is_first", is_first)
        check_shape("actions", actions, ["B", "T", c.action_dim])
        check_shape("is_first", is_first, ["B", "T"])
        inputs = {**obs, "actions": actions, "is_first": is_first}
        for i, what in ((0, "batch size"), (1, "sequence length")):
            check_same(list(inputs), [v.shape[i] for v in inputs.values()], what)
        if state is None:
            state = self.initial_state(tf.shape(actions)[0])
        else:
            state = self._check_state(state)
        shape = tf.concat([tf.shape(actions)[:2], [c.n_categories, c.n_classes]], 0)
        noise = self._noise(shape, ["B", "T"], sample, noise)
        # The loop runs time-major: swap the (small) inputs, not the activations.
        states, post, prior = self.observe_time_major(
            {k: swap_bt(v) for k, v in obs.items()}, swap_bt(actions), swap_bt(is_first),
            state, None if noise is None else swap_bt(noise))
        return (RssmState(swap_bt(states.h), swap_bt(states.z)), swap_bt(post),
                swap_bt(prior))

    def observe_time_major(self, obs: dict[str, tf.Tensor], actions: tf.Tensor,
                           is_first: tf.Tensor, state: RssmState,
                           noise: tf.Tensor | None, xla_loop: bool = False
                           ) -> tuple[RssmState, tf.Tensor, tf.Tensor]:
        """:meth:`observe` on checked, time-major inputs ([T, B, ...] each; ``noise``
        uniform [T, B, S, K] or None for the mode) -> time-major results. The world
        model trains through this form: its losses do not care about the layout, so
        nothing of size [B, T, ...] is ever transposed.

        ``xla_loop``: run the sequential loop (forward and backward) as a nested
        ``tf.function(jit_compile=True)`` while the rest runs on TensorFlow's kernels:
        ``WorldModel.compile`` asks for it for image models on CPUs, whose
        convolutions stay outside XLA but whose loop is hundreds of small ops a step.
        Only with the hand-written backward (``manual_gradient``, the default):
        autodiff's loop keeps TensorLists for its backward, which cannot leave an XLA
        function, so without it the loop runs on TensorFlow's kernels."""
        first = is_first[..., None]
        a_proj = self._action_proj(actions * (1.0 - first))
        e_proj = self._embed_proj(obs)
        gumbel_noise = None if noise is None else gumbel(noise)  # all steps at once
        loop = partial(observe_scan, self) if self.manual_gradient else self._observe_loop
        if xla_loop and self.manual_gradient:
            if self._xla_loop.value is None:
                self._xla_loop.value = tf.function(loop, jit_compile=True,
                                                      autograph=False)
            loop = self._xla_loop.value
        hs, zs, posts = loop(state.h, state.z, first, a_proj, e_proj, gumbel_noise)
        return RssmState(hs, zs), posts, self.prior_logits(hs)

    def imagine(self, state: RssmState,
                policy_or_actions: tf.Tensor | Callable[[RssmState], tf.Tensor],
                horizon: int | None = None, sample: bool = True,
                noise: tf.Tensor | None = None) -> tuple[RssmState, tf.Tensor]:
        """Roll the prior forward from ``state`` (h [B, D], z [B, S*K]).

        ``policy_or_actions``: actions [B, T, A] (then ``horizon`` defaults to T and
        must not exceed it) or a callable ``policy(state) -> action [B, A]`` (then
        ``horizon`` is required). ``noise`` [B, horizon, S, K] optional.
        Returns (states with h [B, horizon, D], z [B, horizon, S*K], ``prior_logits``
        [B, horizon, S, K]); the start state is not included.
        """
        c = self.config
        state = self._check_state(state)
        policy = policy_or_actions if callable(policy_or_actions) else None
        if policy is None:
            actions = eager_finite("actions", as_float_tensor("actions", policy_or_actions))
            check_shape("actions", actions, ["B", "T", c.action_dim])
            check_same(["state.h", "actions"], [state.h.shape[0], actions.shape[0]],
                       "batch size")
            steps = actions.shape[1]
            if horizon is not None:
                if steps is not None and not 0 < horizon <= steps:
                    raise ValueError(f"horizon must be in [1, {steps}] (the length of "
                                     f"actions), got {horizon}")
                actions = actions[:, :horizon]
        elif not isinstance(horizon, int) or horizon <= 0:
            raise ValueError(f"horizon must be a positive integer with a policy, "
                             f"got {horizon!r}")
        length = tf.shape(actions)[1] if policy is None else horizon
        shape = tf.stack([tf.shape(state.h)[0], length, c.n_categories, c.n_classes])
        noise = self._noise(shape, ["B", "T"], sample, noise)

        elems = [tf.zeros([length])] if policy else \
            [tf.transpose(self._action_proj(actions), [1, 0, 2])]
        if noise is not None:
            elems.append(tf.transpose(gumbel(noise), [1, 0, 2, 3]))

        def step(carry, inputs):
            h, z, _ = carry
            if policy is None:
                a_proj = inputs[0]
            else:
                a_proj = self._action_proj(policy(RssmState(h, z)))
            h = self._core(h, z, a_proj)
            prior = self.prior_logits(h)
            z = sample_latent(prior, gumbel_noise=inputs[1] if len(inputs) > 1 else None)
            return h, z, prior

        init = (state.h, state.z,
                tf.zeros(tf.stack([tf.shape(state.h)[0], c.n_categories, c.n_classes])))
        hs, zs, priors = tf.scan(step, tuple(elems), initializer=init)
        return (RssmState(tf.transpose(hs, [1, 0, 2]), tf.transpose(zs, [1, 0, 2])),
                tf.transpose(priors, [1, 0, 2, 3]))

    def call(self, obs: tf.Tensor | dict, actions: tf.Tensor, is_first: tf.Tensor,
             sample: bool | None = None, training: bool | None = None
             ) -> tuple[RssmState, tf.Tensor, tf.Tensor]:
        """:meth:`observe` from the initial state, as a Keras layer call (so an ``Rssm``
        can sit in a functional or subclassed model). ``sample=None`` follows Keras'
        ``training`` flag: posterior samples while training, the mode in inference."""
        if sample is None:
            sample = bool(training)
        return self.observe(obs, actions, is_first, sample=sample)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(config=self.config.to_dict(), twohot=self.twohot.get_config(),
                      seed=self.seed, manual_gradient=self.manual_gradient)
        return config


class PosteriorTracker:
    """The posterior state (h, z) of a batch of environments, moved on by one compiled
    :meth:`Rssm.obs_step` (the posterior's mode) per observation: the state a planner
    or an actor acts from.

    ``reset(batch_size)`` starts every environment at the initial state;
    ``observe(action [B, A], obs)`` takes the action that led to ``obs`` (zeros at an
    episode's first step) and the observation (a dict per key, [B, ...], or one array).
    """

    def __init__(self, rssm: Rssm, jit_compile: bool = True) -> None:
        self.rssm = rssm

        def observe(h, z, action, obs):
            state, _, _ = rssm.obs_step(RssmState(h, z), action, obs, sample=False)
            return state.h, state.z

        self._observe = tf.function(observe, jit_compile=jit_compile, autograph=False)
        self.h: tf.Tensor | None = None
        self.z: tf.Tensor | None = None

    def reset(self, batch_size: int = 1) -> None:
        """Starts every environment afresh (the initial state)."""
        check_positive_int("batch_size", batch_size)
        state = self.rssm.initial_state(batch_size)
        self.h, self.z = state.h, state.z

    def observe(self, action: Any, obs: Any) -> None:
        """One posterior step: ``action`` [B, A] led to ``obs``."""
        self._require_state()
        state, action, obs = self.rssm._check_step(RssmState(self.h, self.z), action, obs)
        self.h, self.z = self._observe(state.h, state.z, action, obs)

    def _require_state(self) -> None:
        if self.h is None:
            raise RuntimeError("no state yet: call reset(batch_size) first")
