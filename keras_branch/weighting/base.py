"""The `Weighting` base: how a multi-task model combines its task losses.

A weighting is a Keras layer that is never called: it holds the method's
state (learned log-variances, recent epoch losses, learned weights) as
variables, so the state trains, checkpoints and saves with the model, and a
config, so the `.keras` file rebuilds it. `TaskModel.set_weighting` attaches
one; the model's `train_step` (`keras_branch.weighting.step`) then asks it,
every step, for the task weights (loss-level methods) or for the combined
gradient of the shared parameters (gradient-level methods).

Every quantity a weighting sees is *global*: per-task losses summed over the
replicas of a `tf.distribute` strategy, per-task gradients all-reduced, and a
task's presence (some labelled sample in the global batch). So two replicas
compute the weights one device computes, and a task with no label in a batch
neither contributes to nor distorts the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import keras
import tensorflow as tf

from keras_branch.errors import WeightingError


class Weighting(keras.layers.Layer):
    """Base of task weightings.

    Subclasses set `method` (the name `get_weighting` knows), create their
    state in `build_state(num_tasks)` with `add_state`, and override
    `task_weights` (and `regularizer`, `update_state`, `end_epoch`, or
    `combine_gradients` with `uses_task_gradients = True`).

    Args:
        **kwargs: Keras layer arguments (`name`, `dtype`).
    """

    method: ClassVar[str] = ""
    #: True: the step computes one gradient per task (T backward passes) and
    #: calls `combine_gradients` for the parameters two or more tasks share.
    uses_task_gradients: ClassVar[bool] = False
    #: True: `end_epoch` must run at every epoch's end (`TaskModel.fit` adds
    #: the callback; the multi-worker loop calls it itself).
    has_epoch_state: ClassVar[bool] = False

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("name", f"weighting_{self.method}")
        super().__init__(**kwargs)
        self.task_keys: list[str] = []

    # -- attaching -----------------------------------------------------
    def attach(self, task_keys: Sequence[str]) -> None:
        """Creates the state for these tasks (called by `TaskModel.set_weighting`).

        Raises:
            WeightingError: settings that name tasks the model lacks.
        """
        if self.task_keys:
            if list(task_keys) != self.task_keys:
                raise WeightingError(
                    f"This {self.method} weighting is attached to tasks {self.task_keys}; a "
                    f"weighting serves one model. Received: tasks={list(task_keys)}"
                )
            return
        self.task_keys = list(task_keys)
        self.build_state(len(self.task_keys))
        self.built = True

    def build_state(self, num_tasks: int) -> None:
        """Creates the method's variables (none by default)."""

    def add_state(self, name: str, shape: tuple[int, ...], value: float = 0.0,
                  trainable: bool = False, dtype: str = "float32") -> keras.Variable:
        """A state variable. Untrainable ones are written inside the replica step
        with the same (all-reduced) value on every replica, hence `only_first_replica`."""
        return self.add_weight(
            name=name, shape=shape, initializer=keras.initializers.Constant(value),
            trainable=trainable, dtype=dtype,
            aggregation="mean" if trainable else "only_first_replica",
        )

    # -- the step ------------------------------------------------------
    def task_weights(self, losses: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        """This step's weights, shape [T] (may depend on trainable state).

        Args:
            losses: the global per-task losses of the batch (no gradient).
            present: 1.0 for tasks with a labelled sample in the batch, else 0.0.
        """
        return tf.ones_like(losses)

    def regularizer(self, present: tf.Tensor) -> tf.Tensor | None:
        """A term added to the weighted loss (uncertainty's log-variances), or None."""
        return None

    def combine_gradients(self, grads: tf.Tensor, weights: tf.Tensor, losses: tf.Tensor,
                          present: tf.Tensor) -> tf.Tensor:
        """The update of the shared parameters from per-task gradients.

        Args:
            grads: [T, N] global per-task gradients of the shared parameters
                (flattened; zero where a task does not use a parameter).
            weights: [T] the step's `task_weights`.
            losses, present: as in `task_weights`.

        Returns:
            [N], the gradient the optimizer applies (sum scale: equal
            weighting gives the sum of the task gradients).
        """
        return tf.reduce_sum(weights[:, None] * grads, axis=0)

    def state_before_update(self) -> Any:
        """What `update_state` needs of the state as it was before the optimizer step."""
        return None

    def update_state(self, losses: tf.Tensor, present: tf.Tensor, step: dict[str, Any]) -> None:
        """Called after the optimizer's update with the step's global values.

        `step` holds `state_before` (from `state_before_update`), `weights` and,
        for gradient-level methods, `grads` ([T, N], unweighted).
        """

    def end_epoch(self) -> None:
        """Rolls epoch state over (only when `has_epoch_state`)."""

    def current_weights(self) -> list[float]:
        """The weights the next step would use for a batch with every task present."""
        ones = tf.ones([len(self.task_keys)], "float32")
        return [float(w) for w in keras.ops.convert_to_numpy(self.task_weights(ones, ones))]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # The state's shape comes from the model's tasks at attach time.
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return config

    def call(self, *args, **kwargs):
        raise TypeError(f"A weighting ({type(self).__name__}) is not called on inputs: attach it "
                        f"with `TaskModel.set_weighting` or `compile_model(weighting=...)`.")


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over the replicas of the current strategy (itself with one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    """Replicas of the strategy in scope (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def masked_mean(values: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """Mean of `values` over the present tasks (0 when none is present)."""
    return tf.reduce_sum(values * present) / tf.maximum(tf.reduce_sum(present), 1.0)
