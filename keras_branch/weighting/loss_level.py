"""Loss-level weightings: fixed weights, uncertainty (Kendall et al.), DWA (Liu et al.).

Each gives one weight per task per step; the step minimises the weighted sum
of the masked task losses (plus uncertainty's regulariser) with one backward
pass, as equal weighting does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from keras_branch.checks import check_number
from keras_branch.errors import WeightingError
from keras_branch.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_branch")
class Fixed(Weighting):
    """Fixed per-task weights; tasks not named keep weight 1.

    Args:
        weights: task key -> weight (finite, >= 0).

    Example:
    >>> Fixed({"a": 2.0}).fixed_weights
    {'a': 2.0}
    """

    method = "fixed"

    def __init__(self, weights: Mapping[str, float] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if weights is not None and not isinstance(weights, Mapping):
            raise WeightingError(
                f"fixed: `weights` must map task names to numbers. Received: weights={weights!r}")
        self.fixed_weights = {
            str(task): check_number(value, f"fixed weight of task {task!r}", minimum=0,
                                    inclusive=True, error=WeightingError)
            for task, value in (weights or {}).items()
        }

    def build_state(self, num_tasks: int) -> None:
        unknown = sorted(set(self.fixed_weights) - set(self.task_keys))
        if unknown:
            raise WeightingError(
                f"fixed: weights name tasks the model does not have (its tasks: "
                f"{self.task_keys}). Received: {', '.join(f'{k}={self.fixed_weights[k]}' for k in unknown)}"
            )
        self._values = tf.constant([self.fixed_weights.get(k, 1.0) for k in self.task_keys], "float32")

    def task_weights(self, losses, present):
        return self._values

    def get_config(self):
        return {**super().get_config(), "weights": dict(self.fixed_weights)}


@keras.saving.register_keras_serializable(package="keras_branch")
class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting: learned log-variances s_t.

    The loss is `sum_t exp(-s_t) L_t + s_t / 2` over the tasks present in
    the batch (the classification form of Kendall et al.; s_t = log sigma_t^2,
    so the weights start at 1 = equal weighting). s_t trains with the model's
    optimizer; at its optimum `exp(-s_t) = 1 / (2 L_t)`. A task absent from a
    batch gets no gradient, and its s_t is put back after the optimizer step
    (Adam's momentum would otherwise move it).

    Reference:
        Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
        Losses for Scene Geometry and Semantics", CVPR 2018.

    Example:
    >>> w = Uncertainty(); w.attach(["a", "b"]); w.current_weights()
    [1.0, 1.0]
    """

    method = "uncertainty"

    def build_state(self, num_tasks):
        self.log_variance = self.add_state("log_variance", (num_tasks,), 0.0, trainable=True)

    def task_weights(self, losses, present):
        return tf.exp(-tf.convert_to_tensor(self.log_variance))

    def regularizer(self, present):
        return 0.5 * tf.reduce_sum(present * self.log_variance)

    def update_state(self, losses, present, step):
        before = step["state_before"]
        self.log_variance.assign(tf.where(present > 0, self.log_variance, before))

    def state_before_update(self) -> tf.Tensor:
        return tf.identity(self.log_variance)


@keras.saving.register_keras_serializable(package="keras_branch")
class DWA(Weighting):
    """Dynamic Weight Average: weights from how fast each task's loss fell.

    `w_t = T * softmax(r / temperature)_t` with `r_t = L_t(e-1) / L_t(e-2)`,
    L_t(e) the mean of task t's loss over the batches of epoch e that label
    it; the first two epochs use weight 1. The epoch losses are variables:
    they checkpoint and resume with the model, and a task unlabelled during
    a whole epoch keeps its previous average.

    Args:
        temperature: the softmax temperature (the paper's T = 2).

    Reference:
        Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention",
        CVPR 2019.

    Example:
    >>> w = DWA(); w.attach(["a", "b"]); w.current_weights()
    [1.0, 1.0]
    """

    method = "dwa"
    has_epoch_state = True

    def __init__(self, temperature: float = 2.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.temperature = check_number(temperature, "dwa temperature", minimum=0,
                                        error=WeightingError)

    def build_state(self, num_tasks):
        self.loss_sum = self.add_state("loss_sum", (num_tasks,))
        self.loss_count = self.add_state("loss_count", (num_tasks,))
        # Row 0: the last finished epoch's mean losses, row 1: the one before.
        self.epoch_losses = self.add_state("epoch_losses", (2, num_tasks))
        self.epochs_seen = self.add_state("epochs_seen", (), 0.0)

    def task_weights(self, losses, present):
        last, before = self.epoch_losses[0], self.epoch_losses[1]
        ratio = last / tf.maximum(before, 1e-12)
        num_tasks = float(len(self.task_keys))
        weights = num_tasks * tf.nn.softmax(ratio / self.temperature)
        return tf.where(self.epochs_seen >= 2.0, weights, tf.ones_like(weights))

    def update_state(self, losses, present, step):
        self.loss_sum.assign_add(present * losses)
        self.loss_count.assign_add(present)

    def end_epoch(self):
        seen = self.loss_count > 0
        mean = tf.where(seen, self.loss_sum / tf.maximum(self.loss_count, 1.0), self.epoch_losses[0])
        # A task first seen now has no previous average: repeat this one (ratio 1).
        previous = tf.where(self.epochs_seen >= 1.0, self.epoch_losses[0], mean)
        self.epoch_losses.assign(tf.stack([mean, previous]))
        self.epochs_seen.assign_add(1.0)
        self.loss_sum.assign(tf.zeros_like(self.loss_sum))
        self.loss_count.assign(tf.zeros_like(self.loss_count))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}

