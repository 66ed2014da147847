"""Losses and metrics that skip missing labels.

Convention (one for the whole library): a sample that is not labelled for a
task carries the label -1 for classification tasks (multiclass, binary) and
NaN for regression tasks. Such a (sample, task) pair

* adds exactly zero to that task's loss and to every gradient, because its
  per-sample loss is multiplied by a 0/1 mask before reduction, and
* is skipped by the metrics, which see it with sample weight 0.

Labels a task cannot take (a binary label of 2, a class index past the
head's width, an infinite regression target, a negative label other than
-1) stop training: `MaskedLoss` checks every batch with a TensorFlow
assertion naming the task, which runs inside `tf.function` and under a
`tf.distribute` strategy and raises `InvalidArgumentError`. XLA drops
assertions (`jit_compile=True`, which `compile_model` never sets): such a
batch then gets a NaN loss instead, which `keras.callbacks.TerminateOnNaN`
(and `keras_branch.training.train`) stop on.

A task's loss on a batch is the sum of its labelled samples' losses divided by
the batch size (Keras' `sum_over_batch_size`). With one task labelled per
sample (Omniglot), the total loss is then the mean over samples of each
sample's own loss, and the division by the global batch size stays correct
under a `tf.distribute` strategy.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from keras_branch.checks import check_choice

_KINDS = ("multiclass", "binary", "regression")


def label_mask(y_true: Any, kind: str) -> Any:
    """1.0 where a label is present, 0.0 where it is missing, shape [batch]."""
    y = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
    if kind == "regression":
        present = ops.logical_not(ops.isnan(ops.cast(y, "float32")))
    else:
        present = ops.greater_equal(ops.cast(y, "float32"), 0.0)
    return ops.cast(present, "float32")


def label_validity(y: Any, kind: str, classes: int | None = None) -> tuple[Any, str]:
    """Which labels a task can take (missing ones included), and the rule in words.

    Multiclass: -1 or an integer below `classes`; binary: -1, 0 or 1;
    regression: anything but infinity (NaN is missing).

    Args:
        y: float labels, shape [batch].
        kind: the task kind.
        classes: the head's width (multiclass): an int, or a scalar tensor.

    Returns:
        A boolean tensor [batch] and the rule, for an error message.
    """
    if kind == "regression":
        return ops.logical_not(ops.isinf(y)), "finite numbers (NaN for a missing label)"
    if kind == "binary":
        top, rule = 1.0, "0 or 1"
    elif isinstance(classes, int):
        top, rule = float(classes - 1), f"class indices 0 to {classes - 1}"
    else:  # a width known only when the graph runs
        top, rule = ops.cast(classes, "float32") - 1.0, "class indices below the width of the head"
    # y is an integer from -1 to `top` exactly when rounding and clipping leave it as it is.
    return ops.equal(y, ops.clip(ops.round(y), -1.0, top)), f"{rule} (-1 for a missing label)"


def _safe_labels(y_true: Any, kind: str) -> tuple[Any, Any]:
    """Labels with missing entries replaced by a valid value, and the mask."""
    mask = label_mask(y_true, kind)
    y = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
    if kind == "multiclass":
        safe = ops.where(mask > 0, ops.cast(y, "int32"), 0)
    else:
        safe = ops.where(mask > 0, ops.cast(y, "float32"), 0.0)
        safe = ops.reshape(safe, (-1, 1))
    return safe, mask


@keras.saving.register_keras_serializable(package="keras_branch")
class MaskedLoss(keras.losses.Loss):
    """Per-task loss that ignores missing labels (-1, or NaN for regression).

    Labels the task cannot take raise `tf.errors.InvalidArgumentError`
    naming the task (see the module doc); missing labels never do.

    Args:
        kind: `"multiclass"` (sparse categorical cross-entropy on
            probabilities), `"binary"` (binary cross-entropy on a sigmoid
            output) or `"regression"` (squared error).
        name: loss name.
        reduction: Keras reduction; the default divides by the batch size.
        dtype: the loss's dtype (Keras' `Loss` argument).
        task: the task's name, for the error on a bad label (default: `name`).

    Example:
    >>> loss = MaskedLoss("multiclass")
    >>> y_true, y_pred = np.array([1, -1]), np.array([[0.5, 0.5], [0.9, 0.1]])
    >>> float(loss(y_true, y_pred))   # -log(0.5) over the batch of 2  # doctest: +ELLIPSIS
    0.34657...
    """

    def __init__(
        self,
        kind: str,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
        task: str | None = None,
    ):
        check_choice(kind, "kind", _KINDS)
        super().__init__(name=name or f"masked_{kind}", reduction=reduction, dtype=dtype)
        self.kind = kind
        self.task = task

    def call(self, y_true, y_pred):
        y = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        if self.kind == "regression":
            present = ops.logical_not(ops.isnan(y))
        else:
            present = ops.greater_equal(y, 0.0)
        classes = y_pred.shape[-1] if y_pred.shape[-1] is not None else ops.shape(y_pred)[-1]
        valid, rule = label_validity(y, self.kind, classes)
        smallest_bad = ops.min(ops.where(valid, float("inf"), y))
        tf.debugging.Assert(
            ops.all(valid),
            [f"Task `{self.task or self.name}` ({self.kind}): labels must be {rule}. Received "
             f"the label", smallest_bad],
            name="check_labels",
        )
        # Missing and bad labels get a placeholder (a bad index never reaches the
        # cross-entropy, whose own error names no task); missing ones then weigh 0.
        kept = ops.logical_and(present, valid)
        if self.kind == "multiclass":
            safe = ops.where(kept, ops.cast(y, "int32"), 0)
            per_sample = keras.losses.sparse_categorical_crossentropy(safe, y_pred)
        else:
            safe = ops.reshape(ops.where(kept, y, 0.0), (-1, 1))
            if self.kind == "binary":
                per_sample = keras.losses.binary_crossentropy(safe, ops.reshape(y_pred, (-1, 1)))
            else:
                per_sample = ops.mean(ops.square(ops.reshape(y_pred, (-1, 1)) - safe), axis=-1)
        per_sample = ops.reshape(per_sample, (-1,)) * ops.cast(present, per_sample.dtype)
        # Where assertions are dropped (XLA), a bad label makes the loss NaN, which stops
        # training, with no gradient through it (the weights stay finite).
        return ops.where(valid, per_sample, ops.cast(float("nan"), per_sample.dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["kind"] = self.kind
        config["task"] = self.task
        return config


@keras.saving.register_keras_serializable(package="keras_branch")
class MaskedMetric(keras.metrics.Metric):
    """Wraps a Keras metric so that unlabelled samples are skipped.

    Missing pairs reach the wrapped metric with sample weight 0 (and a valid
    placeholder label), so they change neither its total nor its count.

    Args:
        metric: the Keras metric to wrap (an instance or an identifier).
        kind: the task kind, which decides how a missing label is written.
        name: defaults to the wrapped metric's name.

    Example:
    >>> m = MaskedMetric(keras.metrics.SparseCategoricalAccuracy(), "multiclass")
    >>> m.update_state([0, -1], [[0.9, 0.1], [0.9, 0.1]])
    >>> float(m.result())
    1.0
    """

    def __init__(self, metric: Any, kind: str, name: str | None = None, dtype=None):
        check_choice(kind, "kind", _KINDS)
        metric = keras.metrics.get(metric)
        super().__init__(name=name or metric.name, dtype=dtype)
        self.metric = metric
        self.kind = kind

    def update_state(self, y_true, y_pred, sample_weight=None):
        safe, mask = _safe_labels(y_true, self.kind)
        if sample_weight is not None:
            mask = mask * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        if self.kind != "multiclass":
            y_pred = ops.reshape(y_pred, (-1, 1))
        self.metric.update_state(safe, y_pred, sample_weight=mask)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self) -> dict[str, Any]:
        return {
            "metric": keras.saving.serialize_keras_object(self.metric),
            "kind": self.kind,
            "name": self.name,
            "dtype": self.dtype,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskedMetric:
        config = dict(config)
        config["metric"] = keras.saving.deserialize_keras_object(config["metric"])
        return cls(**config)
