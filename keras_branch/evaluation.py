"""Scoring a multi-task model per task: Keras evaluation, outside predictions, summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import DataError
from keras_branch.tasks import BINARY, MULTICLASS, Task

def data_for_tasks(tasks: Sequence[Task], data: MultiTaskData) -> MultiTaskData:
    """The data restricted to `tasks`, in their order.

    Raises:
        DataError: a task the data lacks, or one that differs from the data's.
    """
    by_name = {t.name: t for t in data.tasks}
    for task in tasks:
        if task.name not in by_name:
            raise DataError(
                f"The model has task {task.name!r}, which the data lacks; "
                f"data tasks are {data.task_names}."
            )
        if by_name[task.name] != task:
            raise DataError(
                f"Task {task.name!r} differs between model ({task!r}) and data "
                f"({by_name[task.name]!r})."
            )
    names = [t.name for t in tasks]
    return data if names == data.task_names else data.select_tasks(names)


def task_metrics(logs: dict[str, float], tasks: Sequence[Task]) -> dict[str, dict[str, float]]:
    """Splits Keras' flat `{key_metric: value}` logs into `{task name: {metric: value}}`.

    Classification tasks also get `error = 1 - accuracy`.
    """
    result: dict[str, dict[str, float]] = {}
    for task in tasks:
        names = ["loss"] + [m.name for m in task.make_metrics()]
        values = {}
        for name in names:
            key = f"{task.key}_{name}"
            if key in logs:
                values[name] = float(logs[key])
            elif len(tasks) == 1 and name in logs:
                # Keras does not prefix metric names of a single-output model.
                values[name] = float(logs[name])
        if task.kind in (MULTICLASS, BINARY) and "accuracy" in values:
            values["error"] = 1.0 - values["accuracy"]
        result[task.name] = values
    return result


def evaluate(
    model: keras.Model,
    data: MultiTaskData,
    split: str = "test",
    batch_size: int = 256,
    tasks: Sequence[Task] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores a compiled model on one split, per task (unlabelled pairs skipped).

    Returns:
        `{task name: {"loss": ..., "accuracy" | "mse": ..., ...}}` plus
        `"n"`, the number of labelled samples of the task in the split. A
        task with no labelled sample in the split gets `{"n": 0}` only
        (no score), and `mean_metric` leaves it out.
    """
    tasks = list(tasks if tasks is not None else model.tasks)
    data = data_for_tasks(tasks, data)
    logs = model.evaluate(data.dataset(split, batch_size), return_dict=True, verbose=0)
    result = task_metrics(logs, tasks)
    return _with_counts(result, data, split, tasks)


def score_outputs(
    outputs: Mapping[str, Any],
    data: MultiTaskData,
    split: str = "test",
    tasks: Sequence[Task] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores predictions made outside Keras (a LiteRT file, a server) like `evaluate`.

    The same masked loss and metrics as a compiled model's, on the whole
    split at once, so an exported model's numbers compare with the Keras ones.
    The metrics equal `evaluate`'s; the loss is the mean over the split,
    where Keras' `evaluate` reports the mean of its batches' means.

    Args:
        outputs: `{task key: predictions}` for every sample of `split`, in order.
        data: the labels.
        split: the split the predictions are of.
        tasks: the tasks scored (default: all of `data`'s).

    Returns:
        As `evaluate`: `{task name: {"loss", "accuracy" | "mse", ..., "n"}}`.

    Example (not run as a doctest: needs an exported `.tflite` file;
    `keras_branch.zoo.evaluate` scores one this way):
    >>> outputs = litert_runner.run_signature(interpreter, "serving_default", data.split("test").x)  # doctest: +SKIP
    >>> score_outputs(outputs, data)["a"]["accuracy"]  # doctest: +SKIP
    """
    tasks = list(tasks if tasks is not None else data.tasks)
    data = data_for_tasks(tasks, data)
    x, labels = data.arrays(split)
    logs: dict[str, float] = {}
    for task in tasks:
        if task.key not in outputs:
            raise DataError(f"No predictions for task {task.name!r} (key {task.key!r}). "
                            f"Received keys: {sorted(outputs)}")
        y_pred = np.asarray(outputs[task.key], dtype="float32")
        if len(y_pred) != len(x):
            raise DataError(f"Task {task.name!r} has {len(y_pred)} predictions for the "
                            f"{len(x)} samples of split {split!r}.")
        y_true = labels[task.key]
        logs[f"{task.key}_loss"] = float(task.make_loss()(y_true, y_pred))
        for metric in task.make_metrics():
            metric.update_state(y_true, y_pred)
            logs[f"{task.key}_{metric.name}"] = float(metric.result())
    result = task_metrics(logs, tasks)
    return _with_counts(result, data, split, tasks)


def _with_counts(result: dict[str, dict[str, float]], data: MultiTaskData, split: str,
                 tasks: Sequence[Task]) -> dict[str, dict[str, float]]:
    """Adds each task's labelled count `n`; a task with none keeps no score."""
    counts = data.labelled_counts(split)
    for task in tasks:
        if counts[task.name] == 0:
            # Keras reports 0 accuracy (error 1) or 0 mse here: a score of nothing.
            result[task.name] = {}
        result[task.name]["n"] = counts[task.name]
    return result


def mean_metric(metrics: dict[str, dict[str, float]], name: str) -> float:
    """Mean of one metric over the tasks that report it (NaN if none does)."""
    values = [m[name] for m in metrics.values() if name in m]
    return sum(values) / len(values) if values else math.nan


def format_metrics(metrics: dict[str, dict[str, float]], split: str = "test") -> str:
    """One line per task: name, primary metric, loss and labelled count."""
    width = max(len(name) for name in metrics)
    lines = []
    for name, values in metrics.items():
        shown = [f"{k}={v:.4f}" for k, v in values.items() if k not in ("n",)]
        if values.get("n") == 0:
            shown = ["no labelled samples"]
        count = f"  (n={values['n']})" if "n" in values else ""
        lines.append(f"{split} {name:<{width}}  " + "  ".join(shown) + count)
    return "\n".join(lines)
