"""`TaskModel`: the base of keras_branch's multi-task models.

A task model is a functional Keras model with one output per task, named by
the task's key (the key names the loss, the metrics and the serving
signature). The base holds what every such model shares: the task list and
its keys, the head-plus-named-output of a task, the label-structure check
before the loss, the task weighting (`set_weighting`: a weighted model
trains through `keras_branch.weighting.step`), and the config (`name`,
`trainable`, `tasks`, `weighting` plus the subclass's own fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_branch.errors import TaskError, WeightingError
from keras_branch.tasks import Task, as_tasks, check_keys_free, check_label_structure
from keras_branch.weighting import Weighting, WeightingEpochs, get_weighting, weighted_train_step


class TaskModel(keras.Model):
    """Base of `BranchedModel`, `SoftOrderingModel` and the Learning-to-Branch supernet.

    Subclasses build their graph in `__init__`, end it with `task_output`
    for every task, call `super().__init__(inputs=..., outputs=...)`, set
    `self.tasks`, and return their own fields from `model_config()`.
    """

    tasks: list[Task]
    weighting: Weighting | None = None

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

    def set_weighting(self, weighting: str | Weighting | None) -> None:
        """Attaches a task weighting (`keras_branch.weighting`); None is equal weighting.

        The weighting's state is created in the model's strategy and becomes
        part of the model: it trains, checkpoints and saves with it.

        Raises:
            WeightingError: an unknown weighting, or settings naming tasks the
                model does not have.
        """
        weighting = get_weighting(weighting)
        if self.weighting is weighting:
            return
        if weighting is not None:
            with self.distribute_strategy.scope():
                weighting.attach([t.key for t in self.tasks])
        if self.weighting is not None:
            del self.weighting  # untracks the old one's variables
        if weighting is not None:
            self.weighting = weighting
        # A compiled step of the other weighting must not be reused.
        self.train_function = None

    def train_step(self, data):
        if self.weighting is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise WeightingError(
                f"A {self.weighting.method} weighting takes no sample weights (missing labels "
                f"are -1 or NaN). Received: sample_weight={sample_weight!r}")
        check_label_structure(self.tasks, y)
        if not isinstance(self.loss, dict):
            raise WeightingError("A weighted model needs one loss per task key: compile it with "
                                 f"`compile_model`. Received: loss={self.loss!r}")

        def shares(y, y_pred):
            # A reduced Keras loss is already this replica's share (divided by the replicas).
            return [tf.cast(self.loss[t.key](y[t.key], y_pred[t.key]), "float32")
                    for t in self.tasks]

        result = weighted_train_step(self, self.weighting, self.optimizer, x, y, shares)
        # Keras' own per-task loss metrics (`<key>_loss`) are updated by its
        # compute_loss; its statically weighted total is not used.
        self.compute_loss(x=x, y=y, y_pred=result.y_pred, training=True)
        loss_tracker = next(m for m in self.metrics if m.name == "loss")
        loss_tracker.update_state(result.total, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        return self.compute_metrics(x, y, result.y_pred, sample_weight=None)

    def count_params(self) -> int:
        """The network's parameters; a weighting's state (training state) is not counted."""
        total = super().count_params()
        if self.weighting is not None:
            total -= sum(int(np.prod(v.shape)) for v in self.weighting.weights)
        return total

    def fit(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        y = args[1] if len(args) > 1 else kwargs.get("y")
        self.build_training_state(x, y)
        if self.weighting is not None:
            # First, so that checkpoints and loggers see the epoch closed.
            kwargs["callbacks"] = [WeightingEpochs(self.weighting), *(kwargs.get("callbacks") or [])]
        return super().fit(*args, **kwargs)

    def build_training_state(self, x: Any, y: Any = None) -> bool:
        """Creates the optimizer's, losses' and metrics' variables before `fit` traces its step.

        Keras creates them while tracing the first step when the model has no
        distribution strategy, and TensorFlow then traces the step a second
        time (a function that created variables is retraced without them):
        about a second per `fit`, half of a short candidate training in
        evolution. Here they are made eagerly from one zero sample shaped like
        the data (a zero label is valid for every task kind); the metrics'
        states are reset when the epoch starts, the model's weights are not
        touched. Under a strategy Keras builds them itself, so nothing is done.

        Args:
            x: what `fit` receives: a `tf.data.Dataset` of `(x, y)` or
                `(x, y, sample_weight)`, or input arrays.
            y: the labels when `x` holds arrays (a dict by task key).

        Returns:
            Whether the state was built here (False: not compiled, the
            optimizer built already, under a strategy, or data whose shape is
            not known up front).
        """
        # A built optimizer means a fit (or this) ran since `compile`: the
        # losses and metrics exist too.
        if not self.compiled or self.optimizer is None or self.optimizer.built:
            return False
        if tf.distribute.has_strategy() or self.distribute_strategy is not tf.distribute.get_strategy():
            return False
        try:
            if isinstance(x, tf.data.Dataset):
                specs = x.element_spec
            elif x is not None and y is not None:
                specs = tf.nest.map_structure(
                    lambda a: tf.TensorSpec((None, *np.shape(a)[1:]),
                                            tf.as_dtype(np.asarray(a[:1]).dtype)), (x, y))
            else:
                return False
            if not all(isinstance(s, tf.TensorSpec) and s.shape.rank
                       and s.shape[1:].is_fully_defined() for s in tf.nest.flatten(specs)):
                return False
            zeros = tf.nest.map_structure(lambda s: tf.zeros((1, *s.shape[1:]), s.dtype), specs)
            bx, by, sw = keras.utils.unpack_x_y_sample_weight(zeros)
            y_pred = self(bx, training=False)
            self.compute_loss(x=bx, y=by, y_pred=y_pred, sample_weight=sw, training=False)
            self.compute_metrics(bx, by, y_pred, sample_weight=sw)
        except Exception:  # noqa: BLE001
            # Only a speed-up: data it cannot handle (or that does not fit the
            # model) goes to Keras' own path, which reports what is wrong as before.
            return False
        self.optimizer.build(self.trainable_variables)
        return True

    def get_config(self) -> dict[str, Any]:
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "tasks": [t.get_config() for t in self.tasks],
            **self.model_config(),
        }
        if self.weighting is not None:
            config["weighting"] = keras.saving.serialize_keras_object(self.weighting)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None):
        config = dict(config)
        weighting = config.pop("weighting", None)
        model = cls(**config)
        if weighting is not None:
            model.set_weighting(keras.saving.deserialize_keras_object(
                weighting, custom_objects=custom_objects))
        return model
