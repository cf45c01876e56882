"""The observation space: what each observation key is, and every rule that follows
from it, in one place (docs/design.md section 1, "Observations").

A key's per-step shape decides its kind (:func:`kind_of`): rank 1 is a float
**vector** [O], rank 3 a uint8 **image** [H, W, C]; a rank-1 key given a number of
``classes`` N is **categorical**: O discrete values, each a class in [0, N)
(DreamerV3's discrete observations). From the kind follow

==============  ===================  ====================  ============================
                vector               image                 categorical
==============  ===================  ====================  ============================
dtype           float32              uint8 (0..255)        int32 (episodes: any number)
loss space      ``symlog(x)``        ``x / 255 - 0.5``     one-hot [O * N]; logits [O, N]
decoded back    ``symexp(y)``        ``clip(y + .5, 0, 1)``  class probabilities [O, N]
loss term       squared error, summed over the step's axes   cross-entropy, summed over O
unit (errors)   raw values           pixels in [0, 1]      one-hot [O, N]
==============  ===================  ====================  ============================

The encoder takes each key in its loss space (one MLP on the vector and categorical
keys, the CNN on the images) and the decoder predicts it there. :class:`ObsSpace` is built by
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
from rssm_tf.validation import DtypeError, as_float_tensor, as_image_tensor

VECTOR = "vector"
IMAGE = "image"
CATEGORICAL = "categorical"
#: the per-step rank of each kind
RANKS = {VECTOR: 1, IMAGE: 3}
DTYPES = {VECTOR: "float32", IMAGE: "uint8", CATEGORICAL: "int32"}


def kind_of(shape: Sequence[int], classes: int = 0) -> str | None:
    """The kind of a key with per-step ``shape``: ``"vector"`` (rank 1), ``"image"``
    (rank 3), ``"categorical"`` (rank 1 with ``classes``), or None for neither."""
    if classes:
        return CATEGORICAL if len(shape) == 1 else None
    return {1: VECTOR, 3: IMAGE}.get(len(shape))


def stored_dtype(shape: Sequence[int]) -> str:
    """The dtype an episode array with per-step ``shape`` is stored and batched in:
    uint8 for an image, float32 for everything else (vectors and the step keys)."""
    return DTYPES[IMAGE] if kind_of(shape) == IMAGE else "float32"


def image_to_float(image: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
    """uint8 pixels in [0, 255] -> floats in [-0.5, 0.5], the encoder's input and the
    decoder's target."""
    return tf.cast(tf.cast(image, "float32") / 255.0 - 0.5, dtype)


def _as_classes(name: str, value: Any, classes: int) -> tf.Tensor:
    """Class indices as int32: integer values, or floats holding integers (episodes
    store every non-image array as float32). Outside a graph, a value that is not a
    class in [0, classes) raises ``ValueError`` naming the key."""
    if not isinstance(value, (tf.Tensor, tf.Variable)):
        value = np.asarray(value)
        if value.dtype.kind not in "fiu":
            raise DtypeError(f"{name} must be class indices (integers), got dtype "
                             f"{value.dtype}")
    tensor = tf.convert_to_tensor(value)
    if not (tensor.dtype.is_integer or tensor.dtype.is_floating):
        raise DtypeError(f"{name} must be class indices (integers), got dtype "
                         f"{tensor.dtype.name}")
    if tf.executing_eagerly():
        values = tensor.numpy()
        if values.size and np.any((values != np.round(values)) | (values < 0)
                                  | (values >= classes)):
            raise ValueError(f"{name} must hold class indices in [0, {classes}), got "
                             f"values from {values.min()} to {values.max()}")
    return tf.cast(tensor, "int32")


@dataclasses.dataclass(frozen=True)
class ObsKey:
    """One observation key: ``name``, per-step ``shape`` and the rules of its kind
    (the module's table)."""

    name: str
    shape: tuple[int, ...]
    #: the number of classes of a categorical key (0: not categorical)
    classes: int = 0

    def __post_init__(self) -> None:
        if kind_of(self.shape, self.classes) is None:
            raise ValueError(f"observation {self.name!r}: per-step shape {self.shape} is "
                             f"neither a vector (size,) nor an image (height, width, "
                             f"channels)" + (" (a categorical key is (size,))"
                                             if self.classes else ""))

    @property
    def kind(self) -> str:
        return kind_of(self.shape, self.classes)  # type: ignore[return-value]

    @property
    def is_categorical(self) -> bool:
        return self.kind == CATEGORICAL

    @property
    def width(self) -> int:
        """Its width in the loss space, for the MLP keys: O, or O * N one-hot."""
        return self.shape[-1] * (self.classes or 1)

    @property
    def is_image(self) -> bool:
        return self.kind == IMAGE

    @property
    def dtype(self) -> str:
        """The served dtype: ``"float32"``, ``"uint8"`` (pixels) or ``"int32"`` (class
        indices)."""
        return DTYPES[self.kind]

    @property
    def loss_name(self) -> str:
        """The name of its reconstruction term in losses and metrics."""
        return f"rec/{self.name}"

    def to_unit(self, raw: Any) -> np.ndarray:
        """Stored values [..., *shape] in the space open-loop errors are measured in,
        the space :meth:`decode` predicts in: pixels scaled to [0, 1], classes one-hot
        [..., O, N], vectors as they are (float64)."""
        if self.is_categorical:
            return np.eye(self.classes)[np.asarray(raw).astype(np.int64)]
        values = np.asarray(raw, np.float64)
        return values / 255.0 if self.is_image else values

    def spec(self, lead: Sequence[int | None], name: str | None = None) -> tf.TensorSpec:
        """The ``tf.TensorSpec`` of ``[*lead, *shape]`` values of this key."""
        return tf.TensorSpec([*lead, *self.shape], self.dtype, name=name)

    def convert(self, value: Any) -> tf.Tensor:
        """``value`` as a tensor of this key's dtype; a wrong dtype raises a
        ``DtypeError`` naming the key (uint8 pixels are never cast silently)."""
        if self.is_categorical:
            return _as_classes(self.name, value, self.classes)
        return as_image_tensor(self.name, value) if self.is_image \
            else as_float_tensor(self.name, value)

    def as_numpy(self, value: Any) -> np.ndarray:
        """A stored array of this key in its dtype (episodes, windows)."""
        return np.asarray(value, self.dtype)

    def encode(self, value: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
        """Raw values -> the loss space (the encoder's input, the decoder's target)."""
        if self.is_image:
            return image_to_float(value, dtype)
        if self.is_categorical:
            onehot = tf.one_hot(tf.cast(value, "int32"), self.classes, dtype=dtype)
            return tf.reshape(onehot, tf.concat([tf.shape(value)[:-1], [self.width]], 0))
        return symlog(tf.cast(value, dtype))

    def from_flat(self, pred: tf.Tensor) -> tf.Tensor:
        """The MLP decoder's [..., width] slice of this key in its loss space (a
        categorical key's logits [..., O, N])."""
        if not self.is_categorical:
            return pred
        return tf.reshape(pred, tf.concat([tf.shape(pred)[:-1], [*self.shape,
                                                                  self.classes]], 0))

    def decode(self, pred: tf.Tensor) -> tf.Tensor:
        """A prediction in the loss space -> an observation: raw values for a vector,
        floats in [0, 1] for an image."""
        if self.is_categorical:
            return tf.nn.softmax(pred, -1)
        return tf.clip_by_value(pred + 0.5, 0.0, 1.0) if self.is_image else symexp(pred)

    def loss(self, pred: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """The reconstruction term per step [...]: the squared error in the loss space,
        summed over the step's own axes."""
        if self.is_categorical:  # -log p(class), summed over the O values
            onehot = tf.one_hot(tf.cast(value, "int32"), self.classes)
            return -tf.reduce_sum(onehot * tf.nn.log_softmax(pred, -1), [-2, -1])
        axes = list(range(-len(self.shape), 0))
        return tf.reduce_sum(tf.square(pred - self.encode(value)), axes)


class ObsSpace(Mapping[str, ObsKey]):
    """The observation keys of a model, in order (``config.obs_keys``): a read-only
    mapping ``{name: ObsKey}`` with the groupings the networks use."""

    def __init__(self, shapes: Mapping[str, Sequence[int]],
                 classes: Mapping[str, int] | None = None) -> None:
        classes = classes or {}
        self._keys = {k: ObsKey(k, tuple(int(n) for n in s), int(classes.get(k, 0)))
                      for k, s in shapes.items()}

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

    @property
    def mlp_keys(self) -> tuple[str, ...]:
        """The keys the MLP encoder and decoder take, concatenated: the vector keys,
        then the categorical keys (one-hot), each group in key order."""
        return self.of_kind(VECTOR) + self.of_kind(CATEGORICAL)

    @property
    def mlp_width(self) -> int:
        return sum(self._keys[k].width for k in self.mlp_keys)

    def specs(self, lead: Sequence[int | None], named: bool = False
              ) -> dict[str, tf.TensorSpec]:
        """``{name: TensorSpec [*lead, *shape]}``, each spec named after its key when
        ``named`` (the exported signatures' inputs)."""
        return {k: v.spec(lead, k if named else None) for k, v in self._keys.items()}

    def manifest(self) -> dict[str, dict[str, Any]]:
        """``{name: {"shape": [...], "dtype": ...}}``: the export manifest's description,
        which the serving side reads (it does not import this library)."""
        return {k: {"shape": list(v.shape), "dtype": v.dtype,
                    **({"classes": v.classes} if v.classes else {})}
                for k, v in self._keys.items()}
