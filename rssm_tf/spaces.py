"""The observation space: what each observation key is, and every rule that follows
from it, in one place (docs/design.md section 1, "Observations").

A key's per-step shape decides its kind (:func:`kind_of`): rank 1 is a float
**vector** [O], rank 3 a uint8 **image** [H, W, C]. From the kind follow

==============  ==========================  ==================================
                vector                      image
==============  ==========================  ==================================
dtype           float32                     uint8 (pixels in [0, 255])
loss space      ``symlog(x)``               ``x / 255 - 0.5``
decoded back    ``symexp(y)``               ``clip(y + 0.5, 0, 1)``
loss term       summed squared error of the loss-space values over the step's axes
unit (errors)   raw values                  pixels scaled to [0, 1]
==============  ==========================  ==================================

The encoder takes each key in its loss space (the vector MLP on ``symlog``, the CNN on
``x / 255 - 0.5``) and the decoder predicts it there. :class:`ObsSpace` is built by
:attr:`rssm_tf.RssmConfig.space`; modules that need to know what a key is ask it
(``config.space[key].kind``) instead of looking at ranks or names. The exported
manifest carries :meth:`ObsSpace.manifest`, which is what the serving side reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from rssm_tf.math import symexp, symlog
from rssm_tf.validation import as_float_tensor, as_image_tensor

VECTOR = "vector"
IMAGE = "image"
#: the per-step rank of each kind
RANKS = {VECTOR: 1, IMAGE: 3}
DTYPES = {VECTOR: "float32", IMAGE: "uint8"}


def kind_of(shape: Sequence[int]) -> str | None:
    """The kind of a key with per-step ``shape``: ``"vector"`` (rank 1), ``"image"``
    (rank 3), or None for a shape that is neither."""
    return {1: VECTOR, 3: IMAGE}.get(len(shape))


def stored_dtype(shape: Sequence[int]) -> str:
    """The dtype an episode array with per-step ``shape`` is stored and batched in:
    uint8 for an image, float32 for everything else (vectors and the step keys)."""
    return DTYPES[IMAGE] if kind_of(shape) == IMAGE else "float32"


def image_to_float(image: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
    """uint8 pixels in [0, 255] -> floats in [-0.5, 0.5], the encoder's input and the
    decoder's target."""
    return tf.cast(tf.cast(image, "float32") / 255.0 - 0.5, dtype)


@dataclasses.dataclass(frozen=True)
class ObsKey:
    """One observation key: ``name``, per-step ``shape`` and the rules of its kind
    (the module's table)."""

    name: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if kind_of(self.shape) is None:
            raise ValueError(f"observation {self.name!r}: per-step shape {self.shape} is "
                             f"neither a vector (size,) nor an image (height, width, "
                             f"channels)")

    @property
    def kind(self) -> str:
        return kind_of(self.shape)  # type: ignore[return-value]

    @property
    def is_image(self) -> bool:
        return self.kind == IMAGE

    @property
    def dtype(self) -> str:
        """The stored and served dtype: ``"float32"`` or ``"uint8"``."""
        return DTYPES[self.kind]

    @property
    def loss_name(self) -> str:
        """The name of its reconstruction term in losses and metrics."""
        return f"rec/{self.name}"

    def to_unit(self, raw: Any) -> np.ndarray:
        """Stored values [..., *shape] in the space open-loop errors are measured in,
        the space :meth:`decode` predicts in: pixels scaled to [0, 1], vectors as
        they are (float64)."""
        values = np.asarray(raw, np.float64)
        return values / 255.0 if self.is_image else values

    def spec(self, lead: Sequence[int | None], name: str | None = None) -> tf.TensorSpec:
        """The ``tf.TensorSpec`` of ``[*lead, *shape]`` values of this key."""
        return tf.TensorSpec([*lead, *self.shape], self.dtype, name=name)

    def convert(self, value: Any) -> tf.Tensor:
        """``value`` as a tensor of this key's dtype; a wrong dtype raises a
        ``DtypeError`` naming the key (uint8 pixels are never cast silently)."""
        return as_image_tensor(self.name, value) if self.is_image \
            else as_float_tensor(self.name, value)

    def as_numpy(self, value: Any) -> np.ndarray:
        """A stored array of this key in its dtype (episodes, windows)."""
        return np.asarray(value, self.dtype)

    def encode(self, value: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
        """Raw values -> the loss space (the encoder's input, the decoder's target)."""
        if self.is_image:
            return image_to_float(value, dtype)
        return symlog(tf.cast(value, dtype))

    def decode(self, pred: tf.Tensor) -> tf.Tensor:
        """A prediction in the loss space -> an observation: raw values for a vector,
        floats in [0, 1] for an image."""
        return tf.clip_by_value(pred + 0.5, 0.0, 1.0) if self.is_image else symexp(pred)

    def loss(self, pred: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """The reconstruction term per step [...]: the squared error in the loss space,
        summed over the step's own axes."""
        axes = list(range(-len(self.shape), 0))
        return tf.reduce_sum(tf.square(pred - self.encode(value)), axes)


class ObsSpace(Mapping[str, ObsKey]):
    """The observation keys of a model, in order (``config.obs_keys``): a read-only
    mapping ``{name: ObsKey}`` with the groupings the networks use."""

    def __init__(self, shapes: Mapping[str, Sequence[int]]) -> None:
        self._keys = {k: ObsKey(k, tuple(int(n) for n in s)) for k, s in shapes.items()}

    def __getitem__(self, name: str) -> ObsKey:
        return self._keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ObsSpace({ {k: v.shape for k, v in self._keys.items()} })"

    def of_kind(self, kind: str) -> tuple[str, ...]:
        """The names of the keys of ``kind``, in order."""
        return tuple(k for k, v in self._keys.items() if v.kind == kind)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._keys.items()}

    def specs(self, lead: Sequence[int | None], named: bool = False
              ) -> dict[str, tf.TensorSpec]:
        """``{name: TensorSpec [*lead, *shape]}``, each spec named after its key when
        ``named`` (the exported signatures' inputs)."""
        return {k: v.spec(lead, k if named else None) for k, v in self._keys.items()}

    def manifest(self) -> dict[str, dict[str, Any]]:
        """``{name: {"shape": [...], "dtype": ...}}``: the export manifest's description,
        which the serving side reads (it does not import this library)."""
        return {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self._keys.items()}
