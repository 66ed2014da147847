"""`TaskModel`: the base of keras_branch's multi-task models.

A task model is a functional Keras model with one output per task, named by
the task's key (the key names the loss, the metrics and the serving
signature). The base holds what every such model shares: the task list and
its keys, the head-plus-named-output of a task, the label-structure check
before the loss, and the config (`name`, `trainable`, `tasks` plus the
subclass's own fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_branch.errors import TaskError
from keras_branch.tasks import Task, as_tasks, check_keys_free, check_label_structure


class TaskModel(keras.Model):
    """Base of `BranchedModel`, `SoftOrderingModel` and the Learning-to-Branch supernet.

    Subclasses build their graph in `__init__`, end it with `task_output`
    for every task, call `super().__init__(inputs=..., outputs=...)`, set
    `self.tasks`, and return their own fields from `model_config()`.
    """

    tasks: list[Task]

    @staticmethod
    def prepare_tasks(tasks: Sequence[Task | dict[str, Any]], reserved: str | None = None,
                      where: str = "a task model") -> list[Task]:
        """`Task`s from tasks or configs; keys matching `reserved` (a regex) are refused."""
        task_list = as_tasks(tasks)
        if reserved is not None:
            check_keys_free(task_list, reserved, where)
        return task_list

    @staticmethod
    def task_output(task: Task, features: Any) -> Any:
        """The task's head on `features`, as the output named by the task's key."""
        head = task.make_head(name=f"head_{task.key}")(features)
        # The Identity names the output: loss, metric and signature keys.
        return keras.layers.Identity(name=task.key, dtype="float32")(head)

    @property
    def task_keys(self) -> dict[str, str]:
        """Task name -> output key."""
        return {t.name: t.key for t in self.tasks}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Before Keras pairs `y` with the outputs: a list would pair in sorted order.
        try:
            check_label_structure(self.tasks, y)
        except TaskError:
            # The step being traced is abandoned: let the next fit/evaluate trace anew.
            self.train_function = self.test_function = None
            raise
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)

    def model_config(self) -> dict[str, Any]:
        """The subclass's constructor arguments besides `tasks`, `name` and `trainable`."""
        raise NotImplementedError(f"{type(self).__name__} must define model_config().")

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "tasks": [t.get_config() for t in self.tasks],
            **self.model_config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None):
        return cls(**config)
