"""The training step of a weighted multi-task model, shared by `model.fit` and
the multi-worker loop, and the callback that closes a weighting's epochs.

The step runs in a replica context (`model.fit`'s, or `strategy.run`'s in
`keras_branch.custom_loop`). Each replica computes its per-task losses as
contributions to a global sum (the local mean divided by the number of
replicas); their all-reduced sum is the global loss the weighting sees.
Loss-level methods then take one backward pass of the weighted sum.
Gradient-level methods take one per task, all-reduce the per-task gradients
of the shared parameters, combine them (identically on every replica) and
hand the optimizer the result divided by the number of replicas, since it
sums what the replicas give it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from keras_branch.masked import label_mask
from keras_branch.tasks import Task
from keras_branch.weighting.base import Weighting, num_replicas, replica_sum


@dataclass
class StepResult:
    """What one weighted step computed (tensors of this replica).

    Attributes:
        y_pred: the model's outputs.
        local_losses: [T] this replica's mean loss per task.
        losses: [T] the global per-task losses.
        weights: [T] the weights this step used.
        total: this replica's weighted loss (for the loss tracker).
    """

    y_pred: Any
    local_losses: tf.Tensor
    losses: tf.Tensor
    weights: tf.Tensor
    total: tf.Tensor


def label_counts(tasks: Sequence[Task], y: dict[str, Any]) -> tf.Tensor:
    """[T] labelled samples per task in the batch (missing labels not counted)."""
    return tf.stack([tf.reduce_sum(label_mask(y[t.key], t.kind)) for t in tasks])


def weighted_train_step(
    model: keras.Model,
    weighting: Weighting,
    optimizer: keras.optimizers.Optimizer,
    x: Any,
    y: dict[str, Any],
    scaled_losses: Callable[[dict[str, Any], Any], list[tf.Tensor]],
) -> StepResult:
    """One optimizer step of `model` under `weighting` (call in a replica context).

    Args:
        model: a task model (`.tasks`, outputs keyed by task key).
        weighting: an attached `Weighting`.
        optimizer: the optimizer (a `LossScaleOptimizer` under float16).
        x, y: the batch (labels keyed by task key).
        scaled_losses: `(y, y_pred) -> [T scalars]` float32: each task's
            loss on this replica as its share of the global mean (a list:
            a stacked tensor would tie every task's gradient to every head).

    Returns:
        `StepResult`.
    """
    tasks = model.tasks
    replicas = num_replicas()
    static = tf.constant([t.loss_weight for t in tasks], "float32")
    by_task = weighting.uses_task_gradients
    with tf.GradientTape(persistent=by_task) as tape:
        y_pred = model(x, training=True)
        task_shares = scaled_losses(y, y_pred)
        shares = tf.stack(task_shares)
        present = tf.cast(replica_sum(label_counts(tasks, y)) > 0, "float32")
        losses = tf.stop_gradient(replica_sum(shares))
        weights = weighting.task_weights(losses, present)
        weighted = static * weights * shares
        extra = tf.add_n(model.losses) / replicas if model.losses else None
        if by_task:
            weights = tf.stop_gradient(weights)
            task_terms = [optimizer.scale_loss(t.loss_weight * share)
                          for t, share in zip(tasks, task_shares)]
            extra_term = optimizer.scale_loss(extra) if extra is not None else None
        else:
            total = tf.reduce_sum(weighted)
            regularizer = weighting.regularizer(present)
            if regularizer is not None:
                total = total + regularizer / replicas
            if extra is not None:
                total = total + extra
            scaled_total = optimizer.scale_loss(total)
    state_before = weighting.state_before_update()
    variables = model.trainable_variables
    step: dict[str, Any] = {"state_before": state_before, "weights": weights}
    if by_task:
        grads, step["grads"] = _combined_gradients(
            tape, task_terms, extra_term, variables, weighting, weights, losses, present, optimizer,
            replicas)
        total = tf.reduce_sum(weighted) + (extra if extra is not None else 0.0)
        del tape
    else:
        grads = tape.gradient(scaled_total, variables)
    optimizer.apply_gradients(zip(grads, variables))
    weighting.update_state(losses, present, step)
    return StepResult(y_pred, shares * replicas, losses, weights, total * replicas)


def _combined_gradients(tape, task_terms, extra_term, variables, weighting, weights, losses,
                        present, optimizer, replicas):
    """Per-task gradients; the shared parameters' combined by the weighting."""
    per_task = [tape.gradient(term, variables) for term in task_terms]
    grads: list[Any] = [None] * len(variables)
    shared = []
    for k, variable in enumerate(variables):
        users = [i for i, g in enumerate(per_task) if g[k] is not None]
        if len(users) >= 2:
            shared.append(k)
        elif users:  # one task's own parameter: its weighted gradient
            grads[k] = weights[users[0]] * tf.convert_to_tensor(per_task[users[0]][k])
    loss_scale = optimizer.scale_loss(tf.constant(1.0))
    matrix = tf.zeros([len(task_terms), 0])
    if shared:
        matrix = tf.stack([
            tf.concat([tf.reshape(tf.convert_to_tensor(g[k]) if g[k] is not None
                                  else tf.zeros_like(variables[k]), [-1]) for k in shared], 0)
            for g in per_task
        ])
        matrix = replica_sum(matrix) / loss_scale
        combined = weighting.combine_gradients(matrix, weights, losses, present)
        # The optimizer sums the replicas' gradients: give it each replica's share.
        combined = combined * loss_scale / replicas
        offset = 0
        for k in shared:
            size = variables[k].shape.num_elements()
            grads[k] = tf.reshape(combined[offset:offset + size], variables[k].shape)
            offset += size
    if extra_term is not None:
        for k, g in enumerate(tape.gradient(extra_term, variables)):
            if g is not None:
                grads[k] = g if grads[k] is None else grads[k] + g
    return grads, matrix


class WeightingEpochs(keras.callbacks.Callback):
    """Puts the weights in each epoch's logs (`<task key>_weight`) and closes
    the weighting's epoch (DWA's loss averages). `TaskModel.fit` adds it first
    in the list, so checkpoints and loggers after it see the closed epoch.

    Args:
        weighting: the model's weighting.
    """

    def __init__(self, weighting: Weighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(weight_logs(self.weighting))
        if self.weighting.has_epoch_state:
            self.weighting.end_epoch()


def weight_logs(weighting: Weighting) -> dict[str, float]:
    """`{"<task key>_weight": w}` for the weighting's current weights."""
    return {f"{key}_weight": w for key, w in zip(weighting.task_keys, weighting.current_weights())}
