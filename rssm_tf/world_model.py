"""``WorldModel``: the RSSM, decoder and heads as a ``keras.Model`` trained by ``fit``.

Batches are dicts of windows (see :mod:`rssm_tf.data`)::

    <key> [B, T, ...]   action [B, T, A]   reward [B, T]   is_first [B, T]   is_terminal [B, T]

with one entry per observation key of the model (``RssmConfig.obs_shapes``: a vector
key float [B, T, O_k], an image key uint8 [B, T, H, W, C_k]); other keys are ignored.

Loss per step (docs/design.md section 5), averaged over B and T::

    rec * sum_k rec_k + rew * twohot(reward)
        + con * bce(continue_logit, 1 - is_terminal) + kl_balanced_loss

with ``rec_k = sum((decoder_k(feat) - symlog(x_k))^2)`` for a vector key and
``sum((decoder_k(feat) - (x_k / 255 - 0.5))^2)`` over pixels and channels for an image
key, as in DreamerV3. ``fit`` logs ``rec`` (the sum) and ``rec/<key>`` per key.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rssm_tf.config import KlBalanceConfig, RssmConfig
from rssm_tf.cpu import onednn_enabled
from rssm_tf.episodes import STEP_KEYS
from rssm_tf.heads import ObsDecoder
from rssm_tf.latents import uniform_at
from rssm_tf.losses import TwohotEncoder, categorical_entropy, kl_balanced_loss
from rssm_tf.predictions import Head, ObservationHead, read_heads
from rssm_tf.rssm import Rssm, RssmState, _Untracked, swap_bt
from rssm_tf.validation import as_float_tensor, check_finite, check_same, check_shape

METRIC_NAMES = ("loss", "rec", "rew", "con", "dyn", "rep", "kl", "prior_ent",
                "post_ent", "grad_norm")


def op_determinism_enabled() -> bool:
    """Whether ``tf.config.experimental.enable_op_determinism()`` is on. TensorFlow
    2.21 has no public getter; Keras reads the same private function for the same
    purpose (turning XLA off). tests/test_keras_conventions.py pins it."""
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans several workers: a MultiWorkerMirroredStrategy whose
    public ``cluster_resolver`` names more than one chief or worker task."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in ("chief", "worker")) > 1


def default_optimizer() -> keras.optimizers.Optimizer:
    """DreamerV3's world-model optimiser: Adam, learning rate 1e-4, epsilon 1e-8,
    gradients clipped to a global norm of 1000."""
    return keras.optimizers.Adam(learning_rate=1e-4, epsilon=1e-8, global_clipnorm=1000.0)


@keras.saving.register_keras_serializable(package="rssm_tf")
class WorldModel(keras.Model):
    """DreamerV3's world model: encoder, :class:`Rssm`, decoder, reward and continue
    heads, with the world-model loss in ``train_step``/``test_step``.

    Args:
        config: :class:`RssmConfig` (or its dict).
        kl: :class:`KlBalanceConfig` (dyn 0.5, rep 0.1, free nats 1).
        twohot: the reward's :class:`TwohotEncoder` (255 symlog bins in [-20, 20]).
        rec_scale, rew_scale, con_scale: loss weights (1, 1, 1).
        seed: seeds the latent sampling noise of training (derived from the optimiser's
            step, so an interrupted run resumed from a checkpoint draws the same noise).
        check_numerics: reject NaN/Inf in a batch with an error naming the tensor
            (``tf.debugging`` checks in the compiled step; off for a little speed).
    """

    def __init__(self, config: RssmConfig | dict, kl: KlBalanceConfig | dict | None = None,
                 twohot: TwohotEncoder | dict | None = None, rec_scale: float = 1.0,
                 rew_scale: float = 1.0, con_scale: float = 1.0, seed: int = 0,
                 check_numerics: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = RssmConfig.from_dict(config)
        if isinstance(kl, dict):
            kl = KlBalanceConfig.from_dict(kl)
        for name, value in (("rec_scale", rec_scale), ("rew_scale", rew_scale),
                            ("con_scale", con_scale)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.config = config
        self.kl = kl or KlBalanceConfig()
        self.rec_scale, self.rew_scale, self.con_scale = rec_scale, rew_scale, con_scale
        self.seed = seed
        self.check_numerics = check_numerics
        self.rssm = Rssm(config, twohot=twohot, seed=seed, name="rssm",
                         dtype=self.dtype_policy)
        self.decoder = ObsDecoder(config, name="decoder", dtype=self.dtype_policy)
        self.decoder.build()
        self._heads = _Untracked((ObservationHead(self.decoder, config.space),
                                  *self.rssm.heads))
        self.batch_keys = config.obs_keys + STEP_KEYS
        #: the logged terms: ``loss``, every head's terms (``rec``, ``rec/<key>`` per
        #: observation key, ``rew``, ``con``), the KL terms and ``grad_norm``
        self.metric_names = METRIC_NAMES[:1] + tuple(
            name for head in self.replay_heads for name in head.metric_names) \
            + METRIC_NAMES[4:]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.built = True

    @property
    def heads(self) -> tuple[Head, ...]:
        """What the model predicts (:mod:`rssm_tf.predictions`): the observations, the
        reward and the continue flag; losses, metrics, ``open_loop`` and the export
        loop over them."""
        return self._heads.value

    @property
    def replay_heads(self) -> tuple[Head, ...]:
        """The heads the world-model loss trains on replayed batches (every head but
        an agent's actor and critic)."""
        return tuple(head for head in self.heads if head.trained_on == "replay")

    @property
    def twohot(self) -> TwohotEncoder:
        return self.rssm.twohot

    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def compile(self, optimizer: keras.optimizers.Optimizer | str | None = None,
                jit_compile: bool | None = None, **kwargs: Any) -> None:
        """``compile()`` alone: :func:`default_optimizer` and XLA.

        The update (loss, gradients, optimiser) is one ``tf.function(jit_compile=True)``
        (``model.xla``); on one device the step around it stays a plain graph that
        checks the batch, so NaN/Inf inputs are named even though XLA drops
        ``tf.debugging`` checks (with several replicas Keras compiles the whole step).
        ``jit_compile=None`` means XLA, except on CPU devices for an image model
        (XLA's CPU convolutions ran 1.5-1.85x slower than TensorFlow's oneDNN kernels in
        ``benchmarks/train_speed.py``; on GPUs XLA stays on; on one CPU only the
        observe loop runs under XLA, ``model.xla_loop``), under a strategy with
        several replicas on CPU devices (XLA cannot reach one logical CPU's variables
        from another) and while TF op determinism is on (as Keras does). An image model
        on CPUs warns when TensorFlow's oneDNN kernels are off (:mod:`rssm_tf.cpu`).
        ``model.jit_compile`` then says whether the update runs under XLA.

        The loss and the logged metrics are built in: ``loss=``, ``metrics=`` and
        ``weighted_metrics=`` are refused (the model has no ``y`` to compare with; the
        logged terms are :data:`METRIC_NAMES` and ``rec/<key>``). The optimiser is built
        here, so a model saved before its first step holds the optimiser's full state.
        """
        for name in ("loss", "metrics", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(f"WorldModel computes its own loss and logs its own "
                                 f"metrics {list(self.metric_names)}; compile({name}=...) is "
                                 "not supported (use a callback to compute more)")
        strategy = self.distribute_strategy
        single = strategy.num_replicas_in_sync == 1
        on_cpu = not tf.config.list_logical_devices("GPU") if single else all(
            "CPU" in d.upper() for d in strategy.extended.worker_devices)
        auto = jit_compile is None
        images_on_cpu = on_cpu and bool(self.config.image_keys)
        if auto:
            jit_compile = not on_cpu or (single and not self.config.image_keys)
            if images_on_cpu and not onednn_enabled():
                warnings.warn(
                    "WorldModel.compile: TensorFlow runs Eigen's CPU convolutions, not "
                    "oneDNN's (TensorFlow was imported before rssm_tf on a CPU without "
                    "AVX512_VNNI/AMX, or TF_ENABLE_ONEDNN_OPTS=0); an image update takes "
                    "about 1.8x as long. Set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is "
                    "imported (rssm_tf/cpu.py)", stacklevel=2)
            if not jit_compile and not single:
                warnings.warn("WorldModel.compile: several replicas on CPU devices; XLA "
                              "is off for this strategy", stacklevel=2)
        deterministic = op_determinism_enabled()
        self.xla = bool(jit_compile) and not deterministic
        # an image model on one CPU: its convolutions on TensorFlow's kernels, its
        # observe loop (hundreds of small ops a step) under XLA
        self.xla_loop = auto and not self.xla and single and images_on_cpu and not deterministic
        self._compiled = _Untracked({})  # name -> the cached tf.function
        # Several replicas: no nested function may hold the optimiser's all-reduce, so
        # Keras compiles the whole step (under XLA the batch checks are then dropped).
        replicated = self.distribute_strategy.num_replicas_in_sync > 1
        super().compile(optimizer=optimizer or default_optimizer(),
                        jit_compile=self.xla and replicated, **kwargs)
        with self.distribute_strategy.scope():
            self.optimizer.build(self._world_variables())

    # Keras wraps the whole train/test/predict step in tf.function(jit_compile=
    # model.jit_compile). Here the XLA part is the update inside the step (``xla``),
    # so the property answers that, and the whole-step setting is what Keras passes to
    # compile() and reads while it builds the step functions.
    @property
    def jit_compile(self) -> bool:
        """Whether the training update runs under XLA (see :meth:`compile`)."""
        if getattr(self, "_building_step", False):
            return getattr(self, "_step_jit", False)
        return bool(getattr(self, "xla", False))

    @jit_compile.setter
    def jit_compile(self, value: bool) -> None:
        self._step_jit = bool(value)

    @contextlib.contextmanager
    def _whole_step(self):
        self._building_step = True
        try:
            yield
        finally:
            self._building_step = False

    def fit(self, x: Any = None, y: Any = None, *args: Any, shuffle: bool | None = None,
            **kwargs: Any) -> keras.callbacks.History:
        """Keras' ``fit``, with ``shuffle`` defaulting to False for a ``tf.data.Dataset``.

        ``make_dataset`` and ``Replay.dataset`` shuffle their windows themselves, and
        Keras ignores ``shuffle`` for a dataset (plain or distributed), warning on every
        call when it is True (its default). Other inputs keep Keras' default (True).
        """
        if shuffle is None:
            shuffle = not isinstance(x, (tf.data.Dataset, tf.distribute.DistributedDataset))
        return super().fit(x, y, *args, shuffle=shuffle, **kwargs)

    def make_train_function(self, force: bool = False) -> Any:
        with self._whole_step():
            return super().make_train_function(force)

    def make_test_function(self, force: bool = False) -> Any:
        with self._whole_step():
            return super().make_test_function(force)

    def make_predict_function(self, force: bool = False) -> Any:
        with self._whole_step():
            return super().make_predict_function(force)

    def _run_compiled(self, name: str, fn: Any, batch: dict[str, tf.Tensor]) -> Any:
        """``fn(batch)`` as a cached ``tf.function`` (with XLA when ``self.xla``), or
        directly when running eagerly."""
        if (self.run_eagerly or self.distribute_strategy.num_replicas_in_sync > 1
                or (tf.executing_eagerly() and not self.xla)):
            return fn(batch)
        cache = self._compiled.value
        if name not in cache:
            cache[name] = tf.function(fn, jit_compile=self.xla)
        return cache[name](batch)

    # Private Keras API, the one place this library overrides one (Keras 3.15, TF
    # backend: keras/src/backend/tensorflow/trainer.py). Before the first step Keras
    # averages one batch across replicas with strategy.reduce to build the model
    # symbolically; that reduce fails for a dict batch under MultiWorkerMirroredStrategy.
    # Every layer and the optimiser are built already, so nothing needs that batch.
    # tests/test_keras_conventions.py fails if a Keras upgrade renames the hook.
    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Builds the optimiser if it is not built yet; never touches the data."""
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self._world_variables())

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Re-compiles a loaded model with its saved optimiser (``.keras`` loading)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    # ------------------------------------------------------------- inputs
    def validate_batch(self, data: Any) -> dict[str, tf.Tensor]:
        """The batch dict, checked: keys, shapes [B, T, ...], dtypes, finiteness."""
        if isinstance(data, (tuple, list)) and len(data) >= 1:
            data = data[0]
        keys = self.batch_keys
        if not isinstance(data, dict):
            raise TypeError(f"a batch must be a dict with keys {list(keys)}, "
                            f"got {type(data).__name__}")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"batch is missing key(s) {missing}; expected {list(keys)}")
        c = self.config
        batch = self.rssm.check_obs({k: data[k] for k in c.obs_keys}, ["B", "T"],
                                    finite=False)  # checked below, if check_numerics
        batch.update({k: as_float_tensor(k, data[k]) for k in STEP_KEYS})
        check_shape("action", batch["action"], ["B", "T", c.action_dim])
        for key in ("reward", "is_first", "is_terminal"):
            check_shape(key, batch[key], ["B", "T"])
        for axis, what in ((0, "batch size"), (1, "sequence length")):
            check_same(list(keys), [batch[k].shape[axis] for k in keys], what)
        if self.check_numerics:
            batch = {k: check_finite(k, v) for k, v in batch.items()}
        return batch

    # --------------------------------------------------------------- loss
    def call(self, inputs: dict, training: bool = False) -> dict[str, tf.Tensor]:
        """Posterior pass over a batch: each observation key decoded (a vector [B, T,
        O_k] in raw space, an image [B, T, H, W, C_k] as floats in [0, 1]), ``reward``
        [B, T], ``continue_prob`` [B, T] and the logits (mode latents)."""
        batch = self.validate_batch(inputs)
        states, post, prior = self.rssm.observe(self._obs(batch), batch["action"],
                                                batch["is_first"], sample=False)
        return {**read_heads(self.replay_heads, states.h, states.z), "post_logits": post,
                "prior_logits": prior}

    def loss_scale(self, head: Head) -> float:
        """The weight of ``head``'s loss term: ``<loss_name>_scale`` (``rec_scale``,
        ``rew_scale``, ``con_scale``), 1 for a head the model has no scale for."""
        return getattr(self, f"{head.loss_name}_scale", 1.0)

    def _obs(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {k: batch[k] for k in self.config.obs_keys}

    def compute_losses(self, batch: dict[str, tf.Tensor], noise: tf.Tensor | None = None
                       ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Scalar loss and the mean of each term, for a validated batch.

        ``noise`` [B, T, S, K] uniform samples the posterior; ``None`` uses the mode.
        """
        return self._time_major_losses({k: swap_bt(v) for k, v in batch.items()},
                                       None if noise is None else swap_bt(noise))

    def _time_major_losses(self, batch: dict[str, tf.Tensor], noise: tf.Tensor | None
                           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """:meth:`compute_losses` on a time-major batch ([T, B, ...] each, ``noise``
        [T, B, S, K]): the RSSM's loop runs time-major and every loss term is a mean,
        so no activation is transposed."""
        return self._time_major_pass(batch, noise)[:2]

    def _time_major_pass(self, batch: dict[str, tf.Tensor], noise: tf.Tensor | None
                         ) -> tuple[tf.Tensor, dict[str, tf.Tensor], RssmState]:
        """:meth:`_time_major_losses` and the posterior states [T, B, ...]."""
        state = self.rssm.initial_state(tf.shape(batch["action"])[1])
        states, post, prior = self.rssm.observe_time_major(
            self._obs(batch), batch["action"], batch["is_first"], state, noise,
            xla_loop=getattr(self, "xla_loop", False))
        heads = self.replay_heads
        out: dict[str, Any] = {}  # the raw outputs, all the losses read (not decoded)
        for head in heads:
            out.update(head.outputs(states.h, states.z))
        terms: dict[str, tf.Tensor] = {}
        for head in heads:
            terms.update(head.losses(out, batch))
        kl = kl_balanced_loss(post, prior, self.kl)
        loss = tf.reduce_mean(tf.add_n([self.loss_scale(head) * terms[head.loss_name]
                                        for head in heads])) + kl.loss
        logs = {"loss": loss, **{k: tf.reduce_mean(v) for k, v in terms.items()},
                "dyn": tf.reduce_mean(kl.dyn),
                "rep": tf.reduce_mean(kl.rep), "kl": tf.reduce_mean(kl.kl),
                "prior_ent": tf.reduce_mean(categorical_entropy(prior)),
                "post_ent": tf.reduce_mean(categorical_entropy(post))}
        return loss, logs, states

    def _training_noise(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        """Uniform noise for the posterior samples of this step, time-major
        [T, B, S, K] for a time-major ``batch``.

        A stateless function of (seed, optimiser step): runs and resumed runs repeat
        exactly. Element (t, b) is element (b, t) of ``uniform_noise([B, T, S, K],
        seed)`` for the global batch, computed in place; each replica computes its own
        rows of it, so a distributed step samples what one device would for the same
        global batch.
        """
        c = self.config
        steps, local = tf.shape(batch["action"])[0], tf.shape(batch["action"])[1]
        replica = tf.distribute.get_replica_context()
        index = 0 if replica is None else replica.replica_id_in_sync_group
        seed = tf.stack([tf.constant(self.seed, tf.int32),
                         tf.cast(self.optimizer.iterations, tf.int32)])
        rows = tf.range(local, dtype=tf.int64) + tf.cast(local * index, tf.int64)
        size = c.n_categories * c.n_classes
        flat = ((rows[None, :, None] * tf.cast(steps, tf.int64)
                 + tf.range(steps, dtype=tf.int64)[:, None, None]) * size
                + tf.range(size, dtype=tf.int64))
        return tf.reshape(uniform_at(flat, seed),
                          [steps, local, c.n_categories, c.n_classes])

    def _update_trackers(self, logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {name: self.trackers[name].result() for name in logs}

    def _step_outputs(self, logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The step's logs as ``fit`` can reduce them. With several workers Keras 3
        averages step outputs by ``strategy.reduce("MEAN", v, axis=0)``, which fails on
        scalars (tensorflow/tensorflow#72388); there each gets a leading axis of 1, and
        the reduction gives scalars back."""
        multi = _multi_worker(self.distribute_strategy)
        return {k: tf.reshape(v, [1]) for k, v in logs.items()} if multi else logs

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.validate_batch(data)  # outside XLA, so the checks really run
        return self._step_outputs(self._run_compiled("train", self._update, batch))

    def _update(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Loss, gradients, optimiser step and metrics for a checked batch."""
        return self._world_update({k: swap_bt(v) for k, v in batch.items()})[0]

    def _world_variables(self) -> list:
        """The variables the world-model optimiser trains."""
        return self.trainable_variables

    def _world_update(self, batch: dict[str, tf.Tensor]
                      ) -> tuple[dict[str, tf.Tensor], RssmState]:
        """:meth:`_update` on a time-major batch; also returns the posterior states
        [T, B, ...] (for a subclass that imagines from them)."""
        noise = self._training_noise(batch)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, logs, states = self._time_major_pass(batch, noise)
            # Gradients are summed over replicas: scale as Keras' own losses do.
            scaled = self.optimizer.scale_loss(loss / replicas)
        variables = self._world_variables()
        grads = tape.gradient(scaled, variables)
        # The norm of this replica's gradient of the (unscaled) loss.
        grad_norm = tf.linalg.global_norm(grads) * replicas
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is not None:
            grad_norm = grad_norm / tf.cast(scale, grad_norm.dtype)
        self.optimizer.apply(grads, variables)
        # A step that loss scaling skips (non-finite gradients) leaves the metric alone.
        finite = tf.math.is_finite(grad_norm)
        self.trackers["grad_norm"].update_state(tf.where(finite, grad_norm, 0.0),
                                                sample_weight=tf.cast(finite, tf.float32))
        logs = self._update_trackers(logs)
        logs["grad_norm"] = self.trackers["grad_norm"].result()
        return logs, states

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.validate_batch(data)
        return self._step_outputs(self._run_compiled("test", self._evaluate, batch))

    def _evaluate(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        _, logs = self.compute_losses(batch, None)
        return self._update_trackers(logs)

    # ---------------------------------------------------------- open loop
    def open_loop(self, obs: Any, action: Any, is_first: Any, context: int,
                  horizon: int) -> dict[str, tf.Tensor]:
        """Observe ``context`` steps with the posterior, then imagine ``horizon`` steps
        with the recorded actions and the prior's mode (no sampling).

        ``obs`` a dict of the observation keys, [B, >= context + horizon, *shape] each
        (one tensor for a one-key model), ``action`` [B, ..., A], ``is_first`` [B, ...].
        Returns, per observation key ``k``, the imagined ``k`` [B, horizon, *shape] (a
        vector in raw space, an image in [0, 1]) and the context's reconstructions
        ``context_k`` [B, context, *shape]; and ``reward`` [B, horizon],
        ``continue_prob`` [B, horizon].
        """
        if not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be an integer >= 1, got {context!r}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        obs = self.rssm.check_obs(obs, None)
        action = as_float_tensor("action", action)
        is_first = as_float_tensor("is_first", is_first)
        length = action.shape[1]
        if length is not None and length < context + horizon:
            raise ValueError(f"action and obs must have at least context + horizon = "
                             f"{context + horizon} steps, got {length}")
        states, _, _ = self.rssm.observe({k: v[:, :context] for k, v in obs.items()},
                                         action[:, :context], is_first[:, :context],
                                         sample=False)
        last = type(states)(states.h[:, -1], states.z[:, -1])
        imagined, _ = self.rssm.imagine(last, action[:, context:context + horizon],
                                        sample=False)
        out: dict[str, tf.Tensor] = {}
        for head in self.replay_heads:
            out.update(head.predictions(head.outputs(imagined.h, imagined.z)))
            if isinstance(head, ObservationHead):  # and what the context looked like
                seen = head.predictions(head.outputs(states.h, states.z))
                out.update({f"context_{k}": v for k, v in seen.items()})
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(config=self.config.to_dict(), kl=self.kl.to_dict(),
                      twohot=self.twohot.get_config(), rec_scale=self.rec_scale,
                      rew_scale=self.rew_scale, con_scale=self.con_scale, seed=self.seed,
                      check_numerics=self.check_numerics)
        return config


def decode_observation(config: RssmConfig, recon: dict[str, tf.Tensor]
                       ) -> dict[str, tf.Tensor]:
    """The decoder's outputs (loss space) as observations: a vector key through
    ``symexp`` (raw space), an image key as floats in [0, 1]."""
    return {k: config.space[k].decode(v) for k, v in recon.items()}


def reconstruction_losses(config: RssmConfig, recon: dict[str, tf.Tensor],
                          batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Each key's reconstruction term per step [...]: the summed squared error of
    ``symlog(x)`` for a vector key, of ``x / 255 - 0.5`` over pixels and channels for
    an image key."""
    return {k: space.loss(recon[k], batch[k]) for k, space in config.space.items()}


def evaluate_open_loop(model: WorldModel, episodes: list[dict[str, np.ndarray]],
                       context: int = 5, horizon: int = 15,
                       batch_size: int = 64) -> dict[str, Any]:
    """Open-loop prediction error on ``episodes`` (dicts in the episode format).

    Every episode with at least ``context + horizon`` steps gives its non-overlapping
    windows. Returns per-horizon-step lists: for each observation key ``k`` of the
    model ``k_mse`` (a vector in raw space, mean over its dimensions; an image with
    pixels scaled to [0, 1], mean over pixels and channels), and ``reward_mse``; the
    same for a mean predictor (``mean_k_mse``, ``mean_reward_mse``: the per-dimension
    or per-pixel mean over the evaluated episodes' steps); and ``windows``, the number
    of windows.
    """
    span = context + horizon
    keys = model.batch_keys
    windows = [{k: ep[k][s:s + span] for k in keys}
               for ep in episodes
               for s in range(0, len(ep["action"]) - span + 1, span)]
    if not windows:
        raise ValueError(f"no episode has context + horizon = {span} steps")
    space = model.config.space

    def unit(key: str, raw: np.ndarray) -> np.ndarray:
        return space[key].to_unit(raw) if key in space else raw.astype("float64")

    targets = model.config.obs_keys + ("reward",)
    means = {k: unit(k, np.concatenate([ep[k] for ep in episodes])).mean(0) for k in targets}
    errors: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        b = {k: np.stack([w[k] for w in chunk]) for k in keys}
        b["is_first"] = b["is_first"].astype("float32")
        b["is_first"][:, 0] = 1.0
        obs = {k: b[k] for k in model.config.obs_keys}
        pred = model.open_loop(obs, b["action"], b["is_first"], context, horizon)
        for key in targets:
            true = unit(key, b[key][:, context:])
            axes = tuple(range(2, true.ndim))
            errors.setdefault(f"{key}_mse", []).append(
                ((pred[key].numpy() - true) ** 2).mean(axes))
            errors.setdefault(f"mean_{key}_mse", []).append(
                ((means[key] - true) ** 2).mean(axes))
    result = {name: np.concatenate(parts).mean(0).astype(float).tolist()
              for name, parts in errors.items()}
    return {**result, "windows": len(windows), "context": context, "horizon": horizon}
