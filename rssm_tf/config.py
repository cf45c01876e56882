"""Configuration objects: the sizes of the world model and the KL balance.

Both are frozen dataclasses. They validate every field once, when built, and raise
``ValueError`` naming the field; they round-trip through ``to_dict``/``from_dict``,
JSON, and Keras' ``get_config``/``from_config`` (as plain dicts).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rssm_tf.validation import check_positive_int

_ACTIVATIONS = ("silu",)
_NORMS = ("rms", "layer")
_INITIAL = ("zeros",)


@dataclasses.dataclass(frozen=True)
class RssmConfig:
    """Sizes and options of the RSSM world model (SPEC section 1).

    ``RssmConfig(obs_dim, action_dim)`` alone gives the seed configuration:
    ``deterministic_size`` D=512, ``n_categories`` S=32 groups of ``n_classes`` K=32,
    ``hidden_size`` H=512, ``n_blocks`` G=8 (0 selects a dense GRU), ``unimix`` 0.01.

    Extra fields keep DreamerV3's values: ``activation`` "silu", ``norm`` "rms" (or
    "layer"), ``norm_eps`` 1e-4, ``head_layers`` 2 hidden layers in the reward and
    continue heads, ``encoder_layers`` / ``decoder_layers`` 3 hidden layers of H in the
    vector encoder and decoder, ``prior_layers`` 2, ``posterior_layers`` 1,
    ``reward_bins`` 255, ``initial`` "zeros" (the initial state).

    Shapes: the state is ``h`` [B, D] and ``z`` [B, S*K]; ``feat`` is [B, D + S*K].
    """

    obs_dim: int
    action_dim: int
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
    initial: str = "zeros"
    image_shape: tuple[int, int, int] | None = None
    cnn_depth: int = 32
    cnn_kernel: int = 4
    cnn_minres: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int) \
                or self.obs_dim < 0:
            raise ValueError(f"obs_dim must be a non-negative integer (0: no vector "
                             f"observation), got {self.obs_dim!r}")
        self._check_image()
        for name in ("action_dim", "deterministic_size", "n_categories",
                     "n_classes", "hidden_size", "head_layers", "encoder_layers",
                     "decoder_layers", "prior_layers", "posterior_layers"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.n_blocks, bool) or not isinstance(self.n_blocks, int) \
                or self.n_blocks < 0:
            raise ValueError(
                f"n_blocks must be a non-negative integer (0 = dense GRU), "
                f"got {self.n_blocks!r}")
        if self.n_blocks and self.deterministic_size % self.n_blocks:
            raise ValueError(
                f"deterministic_size ({self.deterministic_size}) must be divisible by "
                f"n_blocks ({self.n_blocks})")
        if not isinstance(self.unimix, (int, float)) or not 0.0 <= self.unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {self.unimix!r}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, "
                             f"got {self.activation!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.initial not in _INITIAL:
            raise ValueError(f"initial must be one of {_INITIAL}, got {self.initial!r}")

    def _check_image(self) -> None:
        for name in ("cnn_depth", "cnn_kernel", "cnn_minres"):
            check_positive_int(name, getattr(self, name))
        shape = self.image_shape
        if shape is None:
            if self.obs_dim == 0:
                raise ValueError("obs_dim is 0 and image_shape is None: the model needs "
                                 "a vector (obs_dim > 0) or an image (image_shape) input")
            return
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") \
                or len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int)
                                          or v <= 0 for v in shape):
            raise ValueError(f"image_shape must be (height, width, channels) of positive "
                             f"integers, got {shape!r}")
        object.__setattr__(self, "image_shape", tuple(shape))  # JSON gives a list
        height, width, _ = shape
        stages = self.cnn_stages
        if stages < 1:
            raise ValueError(f"image_shape {tuple(shape)}: the image must be taller than "
                             f"cnn_minres={self.cnn_minres}")
        step = 2 ** stages
        for side, size in (("height", height), ("width", width)):
            if size % step:
                below, above = max(step, size // step * step), (size // step + 1) * step
                raise ValueError(
                    f"image_shape {side} {size} must be a multiple of 2**{stages} = {step}: "
                    f"the encoder halves the image {stages} times (strided convolutions "
                    f"from height {height} down to cnn_minres={self.cnn_minres}); use "
                    f"e.g. {below} or {above}")

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """The observation keys of the model: ``"obs"`` (vector) and/or ``"image"``."""
        return (("obs",) if self.obs_dim else ()) + \
            (("image",) if self.image_shape else ())

    @property
    def cnn_stages(self) -> int:
        """Strided convolutions of the image encoder: halvings of the image height
        until it is at most ``cnn_minres`` (0 without images)."""
        if not self.image_shape:
            return 0
        stages, height = 0, self.image_shape[0]
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
    """KL balancing of DreamerV3 (SPEC section 5).

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


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(values)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {unknown}")
    return cls(**values)
