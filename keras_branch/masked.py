"""Losses and metrics that skip missing labels.

Convention (one for the whole library): a sample that is not labelled for a
task carries the label -1 for classification tasks (multiclass, binary) and
NaN for regression tasks. Such a (sample, task) pair

* adds exactly zero to that task's loss and to every gradient, because its
  per-sample loss is multiplied by a 0/1 mask before reduction, and
* is skipped by the metrics, which see it with sample weight 0.

A task's loss on a batch is the sum of its labelled samples' losses divided by
the batch size (Keras' `sum_over_batch_size`). With one task labelled per
sample (Omniglot), the total loss is then the mean over samples of each
sample's own loss, and the division by the global batch size stays correct
under a `tf.distribute` strategy.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_KINDS = ("multiclass", "binary", "regression")


def label_mask(y_true: Any, kind: str) -> Any:
    """1.0 where a label is present, 0.0 where it is missing, shape [batch]."""
    y = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
    if kind == "regression":
        present = ops.logical_not(ops.isnan(ops.cast(y, "float32")))
    else:
        present = ops.greater_equal(ops.cast(y, "float32"), 0.0)
    return ops.cast(present, "float32")


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

    Args:
        kind: `"multiclass"` (sparse categorical cross-entropy on
            probabilities), `"binary"` (binary cross-entropy on a sigmoid
            output) or `"regression"` (squared error).
        name: loss name.
        reduction: Keras reduction; the default divides by the batch size.

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
    ):
        if kind not in _KINDS:
            raise ValueError(
                f"`kind` must be one of {list(_KINDS)}. Received: kind={kind!r}"
            )
        super().__init__(name=name or f"masked_{kind}", reduction=reduction, dtype=dtype)
        self.kind = kind

    def call(self, y_true, y_pred):
        safe, mask = _safe_labels(y_true, self.kind)
        if self.kind == "multiclass":
            per_sample = keras.losses.sparse_categorical_crossentropy(safe, y_pred)
        elif self.kind == "binary":
            per_sample = keras.losses.binary_crossentropy(
                safe, ops.reshape(y_pred, (-1, 1))
            )
        else:
            diff = ops.reshape(y_pred, (-1, 1)) - safe
            per_sample = ops.mean(ops.square(diff), axis=-1)
        per_sample = ops.reshape(per_sample, (-1,))
        return per_sample * ops.cast(mask, per_sample.dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["kind"] = self.kind
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
        if kind not in _KINDS:
            raise ValueError(
                f"`kind` must be one of {list(_KINDS)}. Received: kind={kind!r}"
            )
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
