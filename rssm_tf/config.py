"""Configuration objects: the sizes of the world model, the KL balance and the
behavior learning.

All are frozen dataclasses. They validate every field once, when built, and raise
``ValueError`` naming the field; they round-trip through ``to_dict``/``from_dict``,
JSON, and Keras' ``get_config``/``from_config`` (as plain dicts).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

import numpy as np

from rssm_tf.spaces import IMAGE, RANKS, VECTOR, ObsSpace, kind_of
from rssm_tf.validation import check_non_negative_int, check_positive_int

# "silu": the DreamerV3 paper's choice (the default, fused backward); "gelu": the tanh
# approximation that DreamerV3's current code uses (jax.nn.gelu), plain autodiff.
ACTIVATIONS = ("silu", "gelu")
_NORMS = ("rms", "layer")
# Fields that configs written before they were removed may still hold, with the only
# value they could take: `initial` (the state starts at zeros, as in DreamerV3's code).
_REMOVED_FIELDS = {"initial": "zeros"}
# The keys of the short forms, the one place they are spelled: obs_dim is {"obs": (O,)},
# image_shape is {"image": (H, W, C)} (the collector names a plain observation so too).
VECTOR_KEY, IMAGE_KEY = "obs", "image"
# A key becomes a SavedModel/ONNX input name, a batch key and an output name: a
# letter, then letters, digits and underscores, none of the names these already use.
_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_KEYS = frozenset({
    "action", "actions", "reward", "is_first", "is_terminal", "h", "z", "noise",
    "batch_size", "top_k", "discount", "low", "high", "h_next", "z_next", "h_seq",
    "z_seq", "post_logits", "prior_logits", "reward_logits", "continue_prob",
    "continue_logits", "recon", "plan", "elite_return", "returns", "loss"})


@dataclasses.dataclass(frozen=True)
class RssmConfig:
    """Sizes and options of the RSSM world model (docs/design.md section 1).

    ``RssmConfig(obs_dim, action_dim)`` alone gives the seed configuration:
    ``deterministic_size`` D=512, ``n_categories`` S=32 groups of ``n_classes`` K=32,
    ``hidden_size`` H=512, ``n_blocks`` G=8 (0 selects a dense GRU), ``unimix`` 0.01.

    Extra fields keep DreamerV3's values: ``activation`` "silu" (or "gelu",
    DreamerV3's current code), ``norm`` "rms" (or
    "layer"), ``norm_eps`` 1e-4, ``head_layers`` 2 hidden layers in the reward and
    continue heads, ``encoder_layers`` / ``decoder_layers`` 3 hidden layers of H in the
    vector encoder and decoder, ``prior_layers`` 2, ``posterior_layers`` 1,
    ``reward_bins`` 255. The initial state is zeros, as in DreamerV3's code.

    Observations (DreamerV3's ``obs_space``): ``obs_space={"joints": (7,), "camera":
    (64, 64, 3)}`` names every observation key and its per-step shape: rank 1 is a
    float vector, rank 3 a uint8 image [H, W, C] (all image keys the same H and W);
    ``{"shape": (O,), "classes": N}`` a categorical key of O class indices in [0, N).
    ``obs_dim=O`` and ``image_shape=(H, W, C)`` are the short forms of one vector key
    ``"obs"`` and one image key ``"image"``; give either the short forms or
    ``obs_space``. :attr:`obs_shapes` is the resolved space either way, :attr:`space`
    what each key is (kind, dtype, loss; :mod:`rssm_tf.spaces`).

    Shapes: the state is ``h`` [B, D] and ``z`` [B, S*K]; ``feat`` is [B, D + S*K].
    """

    obs_dim: int = 0
    action_dim: int | None = None
    deterministic_size: int = 512
    n_categories: int = 32
    n_classes: int = 32
    hidden_size: int = 512
    n_blocks: int = 8
    unimix: float = 0.01
    activation: str = "silu"
    norm: str = "rms"
    norm_eps: float = 1e-4
    head_layers: int = 2
    encoder_layers: int = 3
    decoder_layers: int = 3
    prior_layers: int = 2
    posterior_layers: int = 1
    image_shape: tuple[int, int, int] | None = None
    cnn_depth: int = 32
    cnn_kernel: int = 4
    cnn_minres: int = 4
    obs_space: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.action_dim is None:
            raise ValueError("action_dim is required: the width of the action vector")
        check_non_negative_int("obs_dim", self.obs_dim, "no vector observation")
        self._check_space()
        self._check_image()
        for name in ("action_dim", "deterministic_size", "n_categories",
                     "n_classes", "hidden_size", "head_layers", "encoder_layers",
                     "decoder_layers", "prior_layers", "posterior_layers"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("n_blocks", self.n_blocks, "a dense GRU")
        if self.n_blocks and self.deterministic_size % self.n_blocks:
            raise ValueError(
                f"deterministic_size ({self.deterministic_size}) must be divisible by "
                f"n_blocks ({self.n_blocks})")
        if not isinstance(self.unimix, (int, float)) or not 0.0 <= self.unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {self.unimix!r}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, "
                             f"got {self.activation!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")

    def _check_space(self) -> None:
        space = self.obs_space
        if space is None:
            return
        if self.obs_dim or self.image_shape is not None:
            raise ValueError(
                f"give obs_space or its short forms obs_dim/image_shape, not both; got "
                f"obs_space={space!r}, obs_dim={self.obs_dim!r}, "
                f"image_shape={self.image_shape!r}")
        if not isinstance(space, dict) or not space:
            raise ValueError(f"obs_space must be a non-empty dict {{key: shape}}, got "
                             f"{space!r}")
        resolved = {}
        for key in sorted(space, key=str):
            shape = space[key]
            if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
                raise ValueError(
                    f"obs_space key {key!r} is not a valid input name: expected a letter "
                    f"followed by letters, digits or underscores")
            if key in RESERVED_KEYS:
                raise ValueError(f"obs_space key {key!r} is a name the model already uses "
                                 f"for another input or output; reserved: "
                                 f"{sorted(RESERVED_KEYS)}")
            classes = 0
            if isinstance(shape, dict):  # a categorical key
                classes = shape.get("classes")
                if set(shape) - {"shape", "classes"} or isinstance(classes, bool) \
                        or not isinstance(classes, int) or classes < 2:
                    raise ValueError(
                        f"obs_space[{key!r}] as a dict is a categorical key, "
                        f"{{'shape': (size,), 'classes': N}} with an integer N >= 2; got "
                        f"{shape!r}")
                shape = shape.get("shape")
            if isinstance(shape, int) and not isinstance(shape, bool):
                shape = (shape,)
            if not _is_shape(shape, (1,) if classes else tuple(RANKS.values())):
                raise ValueError(
                    f"obs_space[{key!r}] must be (size,) for a vector or (height, width, "
                    f"channels) for an image, of positive integers (a categorical key: "
                    f"{{'shape': (size,), 'classes': N}}); got {shape!r}")
            resolved[key] = {"shape": tuple(shape), "classes": classes} if classes \
                else tuple(shape)
        sides = {k: s[:2] for k, s in resolved.items()
                 if not isinstance(s, dict) and kind_of(s) == IMAGE}
        if len(set(sides.values())) > 1:
            raise ValueError(f"obs_space image keys must share height and width (their "
                             f"channels are stacked for one CNN); got {sides}")
        object.__setattr__(self, "obs_space", resolved)  # sorted, tuples (JSON: lists)

    def _check_image(self) -> None:
        for name in ("cnn_depth", "cnn_kernel", "cnn_minres"):
            check_positive_int(name, getattr(self, name))
        shape = self.image_shape
        if self.obs_space is None and shape is None:
            if self.obs_dim == 0:
                raise ValueError("obs_dim is 0 and image_shape is None: the model needs "
                                 "a vector (obs_dim > 0) or an image (image_shape) input, "
                                 "or an obs_space")
            return
        if shape is not None:
            if not _is_shape(shape, (3,)):
                raise ValueError(f"image_shape must be (height, width, channels) of "
                                 f"positive integers, got {shape!r}")
            object.__setattr__(self, "image_shape", tuple(shape))  # JSON gives a list
        grid = self.image_grid
        if grid is None:
            return
        height, width, _ = grid
        name = "image_shape" if shape is not None else f"obs_space[{self.image_keys[0]!r}]"
        stages = self.cnn_stages
        if stages < 1:
            raise ValueError(f"{name} {grid[:2]}: the image must be taller than "
                             f"cnn_minres={self.cnn_minres}")
        step = 2 ** stages
        for side, size in (("height", height), ("width", width)):
            if size % step:
                below, above = max(step, size // step * step), (size // step + 1) * step
                raise ValueError(
                    f"{name} {side} {size} must be a multiple of 2**{stages} = {step}: "
                    f"the encoder halves the image {stages} times (strided convolutions "
                    f"from height {height} down to cnn_minres={self.cnn_minres}); use "
                    f"e.g. {below} or {above}")

    @classmethod
    def for_space(cls, obs_space: dict[str, tuple[int, ...]], action_dim: int,
                  **fields: Any) -> RssmConfig:
        """A config for ``obs_space``, written with the short forms when the space is
        one ``"obs"`` vector and/or one ``"image"`` image (so it equals
        ``RssmConfig(obs_dim, action_dim, image_shape=...)``)."""
        shapes = {k: v if isinstance(v, dict) else tuple(v) for k, v in obs_space.items()}
        short = set(shapes) <= {VECTOR_KEY, IMAGE_KEY} \
            and not any(isinstance(v, dict) for v in shapes.values()) \
            and kind_of(shapes.get(VECTOR_KEY, (0,))) == VECTOR \
            and kind_of(shapes.get(IMAGE_KEY, (0,) * 3)) == IMAGE
        if short:
            return cls(obs_dim=shapes[VECTOR_KEY][0] if VECTOR_KEY in shapes else 0,
                       action_dim=action_dim, image_shape=shapes.get(IMAGE_KEY), **fields)
        return cls(action_dim=action_dim, obs_space=shapes, **fields)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """The observation space, short forms resolved: ``{key: per-step shape}`` in
        :attr:`obs_keys` order."""
        if self.obs_space is not None:
            return {k: v["shape"] if isinstance(v, dict) else v
                    for k, v in self.obs_space.items()}
        shapes: dict[str, tuple[int, ...]] = {}
        if self.obs_dim:
            shapes[VECTOR_KEY] = (self.obs_dim,)
        if self.image_shape:
            shapes[IMAGE_KEY] = tuple(self.image_shape)
        return shapes

    @functools.cached_property
    def space(self) -> ObsSpace:
        """The observation space (:class:`~rssm_tf.spaces.ObsSpace`): what each key
        is, its dtype, loss space, loss term and names."""
        classes = {k: v["classes"] for k, v in (self.obs_space or {}).items()
                   if isinstance(v, dict)}
        return ObsSpace(self.obs_shapes, classes)

    @property
    def vector_keys(self) -> tuple[str, ...]:
        """The vector keys, concatenated for the vector encoder."""
        return self.space.of_kind(VECTOR)

    @property
    def image_keys(self) -> tuple[str, ...]:
        """The image keys, stacked on channels for the CNN."""
        return self.space.of_kind(IMAGE)

    @property
    def vector_size(self) -> int:
        """The vector encoder's input width: the vector keys and the categorical keys
        one-hot (:attr:`rssm_tf.spaces.ObsSpace.mlp_width`)."""
        return self.space.mlp_width

    @property
    def image_grid(self) -> tuple[int, int, int] | None:
        """(H, W, summed channels) of the image keys (the CNN's input), or None."""
        keys = self.image_keys
        if not keys:
            return None
        height, width, _ = self.obs_shapes[keys[0]]
        return (height, width, sum(self.obs_shapes[k][2] for k in keys))

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """The observation keys of the model, in the order of :attr:`obs_shapes`."""
        return tuple(self.obs_shapes)

    @property
    def cnn_stages(self) -> int:
        """Strided convolutions of the image encoder: halvings of the image height
        until it is at most ``cnn_minres`` (0 without images)."""
        grid = self.image_grid
        if grid is None:
            return 0
        stages, height = 0, grid[0]
        while height > self.cnn_minres:
            height, stages = height / 2, stages + 1
        return stages

    @property
    def stoch_size(self) -> int:
        """S*K, the width of the flattened latent ``z``."""
        return self.n_categories * self.n_classes

    @property
    def feat_size(self) -> int:
        """D + S*K, the width of ``feat = concat(h, z)``."""
        return self.deterministic_size + self.stoch_size

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serialisable)."""
        values = dataclasses.asdict(self)
        if self.image_shape is not None:
            values["image_shape"] = list(self.image_shape)
        if self.obs_space is None:
            del values["obs_space"]  # configs without it read as before
        else:
            values["obs_space"] = {k: {"shape": list(v["shape"]), "classes": v["classes"]}
                                   if isinstance(v, dict) else list(v)
                                   for k, v in self.obs_space.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RssmConfig:
        """Builds a config from ``to_dict`` output; unknown keys raise ``ValueError``."""
        return _from_dict(cls, values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RssmConfig:
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class KlBalanceConfig:
    """KL balancing of DreamerV3 (docs/design.md section 5).

    ``dyn_scale`` 0.5 weighs ``max(free_nats, KL(sg(post) || prior))`` (trains the
    prior), ``rep_scale`` 0.1 weighs ``max(free_nats, KL(post || sg(prior)))`` (trains
    the posterior); ``free_nats`` 1.0 clips the KL summed over the S groups.
    """

    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    free_nats: float = 1.0

    def __post_init__(self) -> None:
        for name in ("dyn_scale", "rep_scale", "free_nats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KlBalanceConfig:
        return _from_dict(cls, values)


@dataclasses.dataclass(frozen=True)
class BehaviorConfig:
    """DreamerV3's behavior learning: an actor and a critic trained in imagination
    (docs/design.md section 8). Every default is DreamerV3's.

    Imagination: ``horizon`` 15 steps from every posterior state of the batch
    (``imag_last`` 0), or from the last ``imag_last`` steps of each sequence (DreamerV3's
    option of the same name: fewer starts, a cheaper update);
    returns: ``discount`` 1 - 1/333, ``return_lambda`` 0.95, weighted by the predicted
    continue flags. ``actor`` (``discrete``: a categorical with ``unimix`` 0.01;
    otherwise a normal with mean ``tanh`` and std in [``min_std`` 0.1, ``max_std`` 1],
    DreamerV3's current bounded normal) and ``critic`` (symlog twohot over
    ``critic_bins`` 255) are MLPs of ``layers`` 3 x ``units`` (0: the world model's
    ``hidden_size``) on ``[h, z]``. The policy gradient is REINFORCE for both action
    kinds (DreamerV3's current choice) with advantages ``(R - v_slow) / max(limit,
    P95 - P5)``, the percentiles' EMAs (``return_rate`` 0.01, ``return_limit`` 1,
    ``return_low``/``return_high`` 5/95, debiased), and an ``entropy_scale`` 3e-4
    bonus. The slow critic follows the critic by ``slow_rate`` 0.02 every
    ``slow_every`` 1 updates; its values are the return targets' bootstrap and, with
    weight ``slow_reg`` 1, a regulariser of the critic. Optimisers: Adam with
    ``actor_lr``/``critic_lr`` 3e-5, ``adam_eps`` 1e-5, gradients clipped to a global
    norm of ``clip_norm`` 100 (the paper's values).
    """

    discrete: bool = True
    horizon: int = 15
    imag_last: int = 0
    discount: float = 1.0 - 1.0 / 333.0
    return_lambda: float = 0.95
    entropy_scale: float = 3e-4
    unimix: float = 0.01
    min_std: float = 0.1
    max_std: float = 1.0
    layers: int = 3
    units: int = 0
    critic_bins: int = 255
    slow_rate: float = 0.02
    slow_every: int = 1
    slow_reg: float = 1.0
    return_rate: float = 0.01
    return_limit: float = 1.0
    return_low: float = 5.0
    return_high: float = 95.0
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    adam_eps: float = 1e-5
    clip_norm: float = 100.0

    def __post_init__(self) -> None:
        if not isinstance(self.discrete, bool):
            raise ValueError(f"discrete must be True or False, got {self.discrete!r}")
        for name in ("horizon", "layers", "critic_bins", "slow_every"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("units", self.units, "the world model's hidden_size")
        check_non_negative_int("imag_last", self.imag_last, "every step of the sequence")
        if self.critic_bins < 2:
            raise ValueError(f"critic_bins must be >= 2, got {self.critic_bins}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        for name, low, high, closed in (
                ("discount", 0.0, 1.0, True), ("return_lambda", 0.0, 1.0, True),
                ("unimix", 0.0, 1.0, False), ("slow_rate", 0.0, 1.0, True),
                ("return_rate", 0.0, 1.0, True)):
            value = number(name)
            if not (low <= value <= high if closed else low <= value < high):
                raise ValueError(f"{name} must be in [{low}, {high}{']' if closed else ')'}"
                                 f", got {value!r}")
        for name in ("entropy_scale", "slow_reg"):
            if number(name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("min_std", "return_limit", "actor_lr", "critic_lr", "adam_eps",
                     "clip_norm"):
            if not number(name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not number("max_std") >= self.min_std:
            raise ValueError(f"max_std must be >= min_std ({self.min_std}), got "
                             f"{self.max_std!r}")
        if not 0.0 <= number("return_low") < number("return_high") <= 100.0:
            raise ValueError(f"return_low and return_high must satisfy 0 <= low < high "
                             f"<= 100, got {self.return_low!r}, {self.return_high!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BehaviorConfig:
        return _from_dict(cls, values)


def _is_shape(value: Any, ranks: tuple[int, ...]) -> bool:
    """Whether ``value`` is a sequence of ``ranks`` positive integers (not bools)."""
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__") \
        and len(value) in ranks and all(not isinstance(v, bool) and isinstance(v, int)
                                        and v > 0 for v in value)


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(values)}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(values)
    for name, only in _REMOVED_FIELDS.items():
        if name in values and name not in names:
            if values[name] != only:
                raise ValueError(f"{cls.__name__} field {name!r} was removed; it could "
                                 f"only be {only!r}, got {values[name]!r}")
            del values[name]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {unknown}")
    return cls(**values)
