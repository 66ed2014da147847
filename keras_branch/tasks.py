"""Task definitions: what each output of a multi-task model predicts.

A `Task` carries everything kind-specific: the head's width and activation,
the masked loss, the masked metrics and the value that marks a missing label.
Names are free text; `Task.key` is the output key derived from the name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import keras

from keras_branch.checks import check_utf8
from keras_branch.errors import SpecError, TaskError
from keras_branch.masked import MaskedLoss, MaskedMetric

MULTICLASS = "multiclass"
BINARY = "binary"
REGRESSION = "regression"
KINDS = (MULTICLASS, BINARY, REGRESSION)

# Keras requires layer, loss and metric names to match ^[A-Za-z0-9_.\/>-]*$;
# "/" and ">" are legal there but break weight paths, so they are replaced too.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_key(name: str) -> str:
    """The output key (and layer-name stem) for a free-text task name.

    Characters Keras refuses in layer, loss and metric names are replaced by
    `_`; a name that is already safe is returned unchanged.

    Example:
    >>> safe_key("Japanese_(katakana)")
    'Japanese__katakana_'
    """
    return _UNSAFE.sub("_", name)


class Task:
    """One prediction task of a multi-task model.

    Args:
        name: free-text task name (any non-empty string UTF-8 can encode, so
            no lone surrogates). Reports and metric files use it as given;
            the model's output key is `Task.key`.
        kind: `"multiclass"` (softmax over `classes`, integer labels
            `0..classes-1`), `"binary"` (one sigmoid unit, labels 0/1) or
            `"regression"` (one linear unit, float labels).
        classes: number of classes; required for `"multiclass"` (at least 2),
            optional for `"binary"` (must be 2), absent for `"regression"`.
        loss_weight: weight of this task's loss in the total loss.

    Missing labels: a label of -1 (classification) or NaN (regression) marks
    a sample that is not labelled for this task. Such pairs add exactly zero
    to the loss and its gradient, and metrics skip them. See
    `keras_branch.masked`.

    Example:
    >>> Task("Korean", "multiclass", classes=40)
    Task(name='Korean', kind='multiclass', classes=40)
    """

    def __init__(
        self,
        name: str,
        kind: str = MULTICLASS,
        classes: int | None = None,
        loss_weight: float = 1.0,
    ):
        if not isinstance(name, str) or not name:
            raise TaskError(
                f"Task `name` must be a non-empty string. Received: name={name!r}"
            )
        check_utf8(name, "name", error=TaskError)
        if kind not in KINDS:
            raise TaskError(
                f"Task {name!r}: `kind` must be one of {list(KINDS)}. "
                f"Received: kind={kind!r}"
            )
        if kind == MULTICLASS:
            if not _is_int(classes) or classes < 2:
                raise TaskError(
                    f"Task {name!r}: a multiclass task needs an integer "
                    f"`classes` >= 2. Received: classes={classes!r}"
                )
        elif kind == BINARY:
            if classes is None:
                classes = 2
            if not _is_int(classes) or classes != 2:
                raise TaskError(
                    f"Task {name!r}: a binary task has classes=2 (or None). "
                    f"Received: classes={classes!r}"
                )
        elif classes is not None:
            raise TaskError(
                f"Task {name!r}: a regression task takes no `classes`. "
                f"Received: classes={classes!r}"
            )
        if (
            isinstance(loss_weight, bool)
            or not isinstance(loss_weight, (int, float))
            or not math.isfinite(loss_weight)
            or loss_weight < 0
        ):
            raise TaskError(
                f"Task {name!r}: `loss_weight` must be a finite number >= 0. "
                f"Received: loss_weight={loss_weight!r}"
            )
        self.name = name
        self.kind = kind
        self.classes = int(classes) if classes is not None else None
        self.loss_weight = float(loss_weight)

    # === Derived properties ===

    @property
    def key(self) -> str:
        """Output key of this task in the model's output dict."""
        return safe_key(self.name)

    @property
    def units(self) -> int:
        """Width of the task's output layer."""
        return self.classes if self.kind == MULTICLASS else 1

    @property
    def activation(self) -> str:
        return {MULTICLASS: "softmax", BINARY: "sigmoid", REGRESSION: "linear"}[
            self.kind
        ]

    @property
    def missing_label(self) -> float:
        """The label value that marks "not labelled for this task"."""
        return math.nan if self.kind == REGRESSION else -1

    @property
    def primary_metric(self) -> str:
        """Name of the metric reports lead with (accuracy, or mse)."""
        return "mse" if self.kind == REGRESSION else "accuracy"

    # === Keras objects ===

    def make_head(self, name: str) -> keras.layers.Layer:
        """A fresh output layer for this task (probabilities or a value).

        Always float32, so softmax, sigmoid and the loss stay accurate under
        mixed precision.
        """
        return keras.layers.Dense(self.units, activation=self.activation, name=name, dtype="float32")

    def make_loss(self) -> MaskedLoss:
        return MaskedLoss(self.kind, name=f"{self.kind}_loss", task=self.name)

    def make_metrics(self) -> list[MaskedMetric]:
        if self.kind == MULTICLASS:
            inner = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        elif self.kind == BINARY:
            inner = [
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(name="auc"),
            ]
        else:
            inner = [
                keras.metrics.MeanSquaredError(name="mse"),
                keras.metrics.MeanAbsoluteError(name="mae"),
            ]
        return [MaskedMetric(m, self.kind) for m in inner]

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "kind": self.kind, "loss_weight": self.loss_weight}
        if self.kind == MULTICLASS:
            config["classes"] = self.classes
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Task:
        if not isinstance(config, Mapping):
            raise TaskError(
                f"A task must be given as a mapping with `name` and `kind`. "
                f"Received: {config!r}"
            )
        unknown = set(config) - {"name", "kind", "classes", "loss_weight"}
        if unknown:
            raise TaskError(
                f"Unknown task field(s) {sorted(unknown)} in task config {dict(config)!r}"
            )
        if "name" not in config:
            raise TaskError(f"A task config needs a `name`. Received: {dict(config)!r}")
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.classes, self.loss_weight))

    def __repr__(self) -> str:
        extra = f", classes={self.classes}" if self.kind == MULTICLASS else ""
        weight = f", loss_weight={self.loss_weight}" if self.loss_weight != 1.0 else ""
        return f"Task(name={self.name!r}, kind={self.kind!r}{extra}{weight})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def as_tasks(tasks: Iterable[Task | Mapping[str, Any]]) -> list[Task]:
    """Validates a task list: non-empty, unique names, unique output keys.

    Args:
        tasks: `Task` objects or their configs (dicts).

    Returns:
        A list of `Task`.
    """
    if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Iterable):
        raise TaskError(f"`tasks` must be a list of tasks. Received: tasks={tasks!r}")
    result = [t if isinstance(t, Task) else Task.from_config(t) for t in tasks]
    if not result:
        raise TaskError("`tasks` must hold at least one task. Received: tasks=[]")
    names: set[str] = set()
    keys: dict[str, str] = {}
    for task in result:
        if task.name in names:
            raise TaskError(f"Duplicate task name {task.name!r} in `tasks`.")
        names.add(task.name)
        if task.key in keys:
            raise TaskError(
                f"Tasks {keys[task.key]!r} and {task.name!r} both map to the "
                f"output key {task.key!r}; rename one of them."
            )
        keys[task.key] = task.name
    return result


def check_label_structure(tasks: Iterable[Task], y: Any) -> None:
    """Refuses labels that Keras would pair with the wrong heads (or fail on deep inside).

    A multi-task model's outputs are a dict keyed by `Task.key`; Keras
    pairs a *list* of label arrays with the outputs in sorted key order,
    not in the tasks' order, so one task's labels would silently train
    another task's head. A dict must use the output keys (`task_keys`),
    which differ from task names that are not Python identifiers.

    Raises:
        TaskError: `y` is a list or tuple (with more than one task), or a
            dict whose keys are not the output keys.
    """
    tasks = list(tasks)
    keys = [t.key for t in tasks]
    mapping = {t.name: t.key for t in tasks}
    if isinstance(y, (list, tuple)) and len(tasks) > 1:
        raise TaskError(
            f"Labels must be a dict keyed by output key, not a {type(y).__name__}: Keras "
            f"pairs a list with the outputs in sorted key order, not the tasks' order. "
            f"Use {{key: labels}} with the keys of `model.task_keys` ({mapping})."
        )
    if isinstance(y, Mapping):
        unknown = sorted(str(k) for k in y if k not in keys)
        if unknown:
            hint = [k for k in unknown if k in mapping]
            raise TaskError(
                f"Label key(s) {unknown} are not output keys {keys}"
                + (f"; task names map to keys as `model.task_keys`: {mapping}" if hint else "")
                + "."
            )


def check_keys_free(tasks: Iterable[Task], reserved: str, where: str) -> None:
    """Refuses task keys that would name a second layer like one the model builds.

    Each task's output is a layer named by its key; a key such as
    `inputs` or `head_b` would collide with a layer of the model, and
    Keras would fail with "name is used 2 times".

    Args:
        tasks: the tasks.
        reserved: a regular expression of the layer names the model uses.
        where: the model, for the message.

    Raises:
        TaskError: naming the task, its key and the model's layer names.
    """
    pattern = re.compile(reserved)
    for task in tasks:
        if pattern.fullmatch(task.key):
            raise TaskError(
                f"Task {task.name!r} (output key {task.key!r}) has the name of a layer that "
                f"{where} builds (names matching {reserved!r}); rename the task."
            )


def spec_tasks(spec: Any, data: Any) -> list[Task]:
    """The data's `Task` objects for a TreeSpec's task names, in spec order.

    Args:
        spec: a `TreeSpec` (or anything with `.tasks`, a list of names).
        data: a `MultiTaskData`.

    Raises:
        SpecError: a spec task the data lacks.
    """
    by_name = {t.name: t for t in data.tasks}
    unknown = [name for name in spec.tasks if name not in by_name]
    if unknown:
        raise SpecError(
            f"Spec task(s) {unknown} are not in data {data.name!r}; its tasks are "
            f"{data.task_names}."
        )
    return [by_name[name] for name in spec.tasks]
