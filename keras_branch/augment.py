"""Image augmentation for the tf.data training pipeline, configured by a plain dict.

`Augment({"shift": 0.1, "rotation": 10, "zoom": 0.1}, seed=0)` is a callable
that takes a batch of images [B, H, W, C] and returns the batch with every
image moved by its own random affine transform: a shift (a fraction of the
image size in each direction), a rotation (degrees), a zoom (a scale factor
in `1 +/- zoom`) and optionally a shear (degrees), composed into one
projective transform about the image centre (bilinear, empty pixels filled
with `fill`, 0 by default: Omniglot's background after `load_omniglot`).

The configuration is JSON-able, so a training recipe or a zoo entry can hold
it, and `keras_branch.training.train(..., augment={...})` accepts the dict.

Determinism: the random draws of a batch depend only on the seed and the
batch's content (a fingerprint of its pixels), not on when or in which
thread the batch is mapped. `MultiTaskData.epoch_dataset` makes epoch e's
batches depend only on `(seed, e)`, so a training run, and a run killed and
resumed from a checkpoint, see exactly the same augmented images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from keras_branch.checks import check_int
from keras_branch.errors import DataError

#: Keys of an augmentation config, with their largest allowed values
#: (exclusive for fractions and shear, inclusive for rotation).
LIMITS = {"shift": 1.0, "rotation": 180.0, "zoom": 1.0, "shear": 90.0}
OPTIONS = ("fill",)


def check_config(config: Any) -> dict[str, float]:
    """Validates an augmentation config and returns it as `{key: float}`.

    Args:
        config: a dict with any of `shift` (fraction of width/height, in
            [0, 1)), `rotation` (degrees, in [0, 180]), `zoom` (scale range
            `1 +/- zoom`, in [0, 1)), `shear` (degrees, in [0, 90)) and
            `fill` (value of pixels moved in from outside, any finite number).

    Returns:
        A new dict with every given key as a float.

    Raises:
        DataError: naming the key and the value, for an unknown key, a value
            that is not a finite number, or one outside its range.

    Example:
    >>> check_config({"shift": 0.1, "rotation": 10})
    {'shift': 0.1, 'rotation': 10.0}
    """
    if not isinstance(config, Mapping):
        raise DataError(
            "`augment` must be a dict such as {'shift': 0.1, 'rotation': 10, 'zoom': 0.1} "
            f"or a callable. Received: {config!r}"
        )
    result: dict[str, float] = {}
    for key, value in config.items():
        if key not in LIMITS and key not in OPTIONS:
            raise DataError(
                f"Unknown augmentation key {key!r} (value {value!r}); known keys are "
                f"{sorted((*LIMITS, *OPTIONS))}."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(
                f"`augment[{key!r}]` must be a finite number. Received: {key}={value!r}"
            )
        value = float(value)
        if key in LIMITS:
            limit = LIMITS[key]
            inclusive = key == "rotation"
            if value < 0 or value > limit or (value == limit and not inclusive):
                bound = f"<= {limit:g}" if inclusive else f"< {limit:g}"
                raise DataError(
                    f"`augment[{key!r}]` must be >= 0 and {bound}. Received: {key}={value!r}"
                )
        result[key] = value
    return result


class Augment:
    """Random shift, rotation, zoom and shear of image batches, deterministic per seed.

    Args:
        config: the augmentation dict (see `check_config`); a zero or absent
            key turns that transform off.
        seed: an int; the same seed and batch give the same output.

    Call it on a float batch [B, H, W, C] (inside `tf.data.Dataset.map` or
    eagerly); it returns a batch of the same shape and dtype.

    Example (`data.epoch_dataset("train", 32, seed=0, augment=aug)` applies it
    to every training batch):
    >>> aug = Augment({"shift": 0.1, "rotation": 10, "zoom": 0.1}, seed=0)
    >>> images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    >>> tuple(aug(images).shape)
    (4, 28, 28, 1)
    >>> aug.get_config()
    {'shift': 0.1, 'rotation': 10.0, 'zoom': 0.1}
    """

    def __init__(self, config: Mapping[str, Any], seed: int = 0):
        self.config = check_config(config)
        self.seed = check_int(seed, "seed", error=DataError)

    def get_config(self) -> dict[str, float]:
        """The (validated) config dict; `Augment(aug.get_config(), seed)` rebuilds it."""
        return dict(self.config)

    @property
    def active(self) -> bool:
        """Whether any transform is switched on."""
        return any(self.config.get(k, 0.0) > 0 for k in LIMITS)

    def __repr__(self) -> str:
        return f"Augment({self.config!r}, seed={self.seed})"

    def _batch_seed(self, images: tf.Tensor) -> tf.Tensor:
        """A stateless seed [2] from the augment seed and the batch's pixels."""
        flat = tf.reshape(tf.cast(images, tf.float32), [1, -1])
        digest = tf.bitcast(tf.fingerprint(flat)[0], tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64), digest])

    def transforms(self, images: tf.Tensor) -> tf.Tensor:
        """The projective transforms [B, 8] (output pixel -> input pixel) of a batch."""
        shape = tf.shape(images)
        batch = shape[0]
        height = tf.cast(shape[1], tf.float32)
        width = tf.cast(shape[2], tf.float32)
        seeds = tf.random.experimental.stateless_split(self._batch_seed(images), 5)

        def uniform(i: int, limit: float) -> tf.Tensor:
            if limit <= 0:
                return tf.zeros([batch], tf.float32)
            return tf.random.stateless_uniform([batch], seeds[i], -limit, limit, tf.float32)

        shift = self.config.get("shift", 0.0)
        tx = uniform(0, shift) * width
        ty = uniform(1, shift) * height
        angle = uniform(2, self.config.get("rotation", 0.0) * math.pi / 180.0)
        scale = 1.0 + uniform(3, self.config.get("zoom", 0.0))
        shear = uniform(4, self.config.get("shear", 0.0) * math.pi / 180.0)
        # Forward map (input -> output) about the centre c:
        #   out = c + scale * R(angle) @ Shear(shear) @ (in - c) + t.
        # The op wants the inverse: in = c + M @ (out - c - t), with
        #   M = Shear(shear)^-1 @ R(-angle) / scale.
        cos, sin = tf.cos(angle), tf.sin(angle)
        tan = tf.tan(shear)
        # R(-angle) = [[cos, sin], [-sin, cos]]; Shear^-1 = [[1, -tan], [0, 1]].
        m00 = (cos + tan * sin) / scale
        m01 = (sin - tan * cos) / scale
        m10 = -sin / scale
        m11 = cos / scale
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        ox, oy = cx + tx, cy + ty
        a2 = cx - (m00 * ox + m01 * oy)
        b2 = cy - (m10 * ox + m11 * oy)
        zeros = tf.zeros_like(m00)
        return tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.convert_to_tensor(images)
        if images.shape.rank is not None and images.shape.rank != 4:
            raise DataError(
                "Augmentation needs image batches [batch, height, width, channels]. "
                f"Received a tensor of shape {images.shape}"
            )
        if not self.active:
            return images
        dtype = images.dtype
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(images, tf.float32),
            transforms=self.transforms(images),
            output_shape=tf.shape(images)[1:3],
            fill_value=tf.constant(self.config.get("fill", 0.0), tf.float32),
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )
        return tf.cast(out, dtype)


def make_augment(augment: Any, seed: int = 0):
    """Turns a training `augment` argument into a batch callable (or None).

    Args:
        augment: None, a config dict (see `check_config`), an `Augment`, or
            any callable on image batches (returned as is).
        seed: the seed of an `Augment` built from a dict.

    Returns:
        None (no augmentation) or a callable on [B, H, W, C] batches.

    Raises:
        DataError: for a malformed dict or anything else.

    Example:
    >>> make_augment({"rotation": 10}, seed=1)
    Augment({'rotation': 10.0}, seed=1)
    """
    if augment is None:
        return None
    if isinstance(augment, Mapping):
        aug = Augment(augment, seed=seed)
        return aug if aug.active else None
    if callable(augment):
        return augment
    raise DataError(
        "`augment` must be None, a dict such as {'shift': 0.1, 'rotation': 10, 'zoom': 0.1}, "
        f"or a callable. Received: {augment!r}"
    )
