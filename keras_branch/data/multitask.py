"""Multi-task data in memory, and its batching into `(x, {task_key: y})`.

All splits hold one input array and one label array per task, aligned on the
sample axis. A sample that is not labelled for a task carries that task's
missing label (-1 for classification, NaN for regression; see
`keras_branch.masked`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_branch.checks import check_int
from keras_branch.errors import DataError
from keras_branch.tasks import REGRESSION, Task, as_tasks


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: inputs `x` [N, ...] and labels `y[task_name]` [N]."""

    x: np.ndarray
    y: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def validate_labels(tasks: Sequence[Task], split: Split, split_name: str = "data") -> None:
    """Raises DataError for labels a task cannot take, naming task and value.

    Multiclass labels must be integers in [0, classes) or -1; binary labels
    0, 1 or -1; regression labels finite or NaN.
    """
    n = len(split)
    for task in tasks:
        if task.name not in split.y:
            raise DataError(f"{split_name}: no labels for task {task.name!r}.")
        y = np.asarray(split.y[task.name])
        if y.dtype != bool and (not np.issubdtype(y.dtype, np.number)
                                or np.issubdtype(y.dtype, np.complexfloating)):
            raise DataError(
                f"{split_name}: labels of task {task.name!r} must be real numbers (class "
                f"indices, or floats for regression). Received dtype {y.dtype}."
            )
        if y.shape != (n,):
            raise DataError(
                f"{split_name}: labels of task {task.name!r} must have shape ({n},). "
                f"Received shape {y.shape}."
            )
        if task.kind == REGRESSION:
            bad = np.isinf(y.astype("float64"))
            if bad.any():
                raise DataError(
                    f"{split_name}: task {task.name!r} has a non-finite label "
                    f"{y[bad][0].item()!r} (use NaN for a missing label)."
                )
            continue
        yf = y.astype("float64")
        valid = (yf == -1) | ((yf >= 0) & (yf < task.classes) & (yf == np.round(yf)))
        if not valid.all():
            value = y[~valid][0].item()
            raise DataError(
                f"{split_name}: label {value!r} of task {task.name!r} is outside its "
                f"classes 0..{task.classes - 1} (and -1 for missing)."
            )


def validate_inputs(split: Split, split_name: str = "data") -> None:
    """Raises DataError for inputs that are not finite numbers, naming the first bad row.

    A NaN or infinite input would be absorbed silently into a finite loss
    (or turn every loss to NaN); neither is a training anyone wants.
    """
    x = split.x
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{split_name}: inputs must be real numbers. Received dtype {x.dtype}.")
    if x.ndim < 2:
        raise DataError(
            f"{split_name}: inputs must have shape (samples, features...). "
            f"Received shape {x.shape}."
        )
    if np.issubdtype(x.dtype, np.floating) and x.size:
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise DataError(
                f"{split_name}: {len(rows)} input row(s) hold NaN or infinity, the first is "
                f"row {int(rows[0])}; remove or impute them."
            )


class MultiTaskData:
    """Tasks and their splits, ready to batch for `model.fit`.

    Args:
        tasks: the tasks; every split has labels for each.
        splits: split name (`"train"`, `"validation"`, `"test"`) -> `Split`.
        info: free metadata (e.g. the planted partition of a synthetic set).

    Example:
    >>> data = planted_groups(seed=0)
    >>> ds = data.dataset("train", batch_size=32, shuffle=True)
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        splits: Mapping[str, Split],
        info: Mapping[str, Any] | None = None,
        name: str = "data",
    ):
        self.tasks = as_tasks(tasks)
        self.splits = dict(splits)
        self.info = dict(info or {})
        self.name = name
        shapes = {s.x.shape[1:] for s in self.splits.values()}
        if len(shapes) != 1:
            raise DataError(f"{name}: splits have different input shapes {sorted(shapes)}.")
        for split_name, split in self.splits.items():
            validate_inputs(split, f"{name}/{split_name}")
            validate_labels(self.tasks, split, f"{name}/{split_name}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.splits.values())).x.shape[1:])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"{self.name} has no split {name!r}; splits are {sorted(self.splits)}."
            )
        return self.splits[name]

    def labelled_counts(self, split: str) -> dict[str, int]:
        """Per task, how many samples of `split` carry a label."""
        s = self.split(split)
        counts = {}
        for task in self.tasks:
            y = np.asarray(s.y[task.name], dtype="float64")
            present = ~np.isnan(y) if task.kind == REGRESSION else y >= 0
            counts[task.name] = int(present.sum())
        return counts

    def select_tasks(self, names: Sequence[str]) -> MultiTaskData:
        """The same data restricted to some tasks (samples labelled for none dropped)."""
        unknown = [n for n in names if n not in self.task_names]
        if unknown:
            raise DataError(f"Unknown task(s) {unknown}; tasks are {self.task_names}.")
        tasks = [t for t in self.tasks if t.name in names]
        splits = {}
        for split_name, s in self.splits.items():
            keep = np.zeros(len(s), dtype=bool)
            for task in tasks:
                y = np.asarray(s.y[task.name], dtype="float64")
                keep |= ~np.isnan(y) if task.kind == REGRESSION else y >= 0
            splits[split_name] = Split(s.x[keep], {t.name: s.y[t.name][keep] for t in tasks})
        return MultiTaskData(tasks, splits, self.info, self.name)

    def arrays(self, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`(x, {task_key: y})` of a split, as numpy arrays for `model.fit`."""
        s = self.split(split)
        return s.x, {t.key: _label_array(t, s.y[t.name]) for t in self.tasks}

    def dataset(
        self,
        split: str,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `(x, {task_key: y})` batches.

        Args:
            split: split name.
            batch_size: global batch size.
            shuffle: reshuffle every epoch (deterministically from `seed`).
            seed: shuffling seed.
            augment: optional function applied to each batch of inputs.
            drop_remainder: drop the last incomplete batch.
        """
        check_int(batch_size, "batch_size", minimum=1, error=DataError)
        x, y = self.arrays(split)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if augment is not None:
            ds = ds.map(lambda xb, yb: (augment(xb), yb), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def epoch_dataset(
        self,
        split: str,
        batch_size: int,
        seed: int = 0,
        first_epoch: int = 0,
        last_epoch: int = 1,
        augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    ) -> tf.data.Dataset:
        """Shuffled batches of epochs `first_epoch..last_epoch-1`, one after another.

        Epoch e's order depends only on `(seed, e)`, so a run resumed at epoch
        e sees exactly the batches an uninterrupted run would. Each epoch has
        `steps(split, batch_size)` batches (the last one may be smaller).
        """
        check_int(batch_size, "batch_size", minimum=1, error=DataError)
        x, y = self.arrays(split)
        n = len(x)
        orders = np.stack(
            [np.random.default_rng([seed, e]).permutation(n) for e in range(first_epoch, last_epoch)]
        ) if last_epoch > first_epoch else np.zeros((0, n), dtype=np.int64)
        x_t = tf.constant(x)
        y_t = {k: tf.constant(v) for k, v in y.items()}

        def gather(index):
            return tf.gather(x_t, index), {k: tf.gather(v, index) for k, v in y_t.items()}

        ds = tf.data.Dataset.from_tensor_slices(orders.astype("int64")).flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        )
        ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        if augment is not None:
            ds = ds.map(lambda xb, yb: (augment(xb), yb), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def steps(self, split: str, batch_size: int) -> int:
        return math.ceil(len(self.split(split)) / batch_size)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"MultiTaskData({self.name!r}, tasks={len(self.tasks)}, {sizes})"


def _label_array(task: Task, y: np.ndarray) -> np.ndarray:
    if task.kind == REGRESSION:
        return np.asarray(y, dtype="float32")
    return np.asarray(y, dtype="int32")


def merge_tasks(
    tasks: Sequence[Task], per_task: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> Split:
    """Stacks per-task `(x, y)` sets into one split with missing labels.

    Each sample keeps its label for its own task and the missing label for
    every other task (the Omniglot setting: an image belongs to one alphabet).

    Args:
        tasks: the tasks, in order.
        per_task: task name -> `(x [n_t, ...], y [n_t])`.

    Returns:
        A `Split` with `sum(n_t)` samples.
    """
    tasks = as_tasks(tasks)
    unknown = [name for name in per_task if name not in {t.name for t in tasks}]
    if unknown:
        raise DataError(f"Data for unknown task(s) {unknown}.")
    xs, ys = [], {t.name: [] for t in tasks}
    for task in tasks:
        if task.name not in per_task:
            continue
        x, y = per_task[task.name]
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise DataError(
                f"Task {task.name!r}: {len(x)} inputs but {len(y)} labels."
            )
        xs.append(x)
        for other in tasks:
            if other.name == task.name:
                ys[other.name].append(_label_array(other, y))
            else:
                fill = np.full(len(x), other.missing_label)
                ys[other.name].append(_label_array(other, fill))
    if not xs:
        raise DataError("`per_task` holds no data.")
    return Split(np.concatenate(xs), {name: np.concatenate(v) for name, v in ys.items()})


def pool_tasks(data: MultiTaskData, names: Sequence[str], pooled: str = "pooled") -> MultiTaskData:
    """One multiclass task over the classes of several (a root's pretraining set).

    Task `names[i]`'s class `c` becomes class `offset_i + c` of the pooled
    task; samples labelled for none of `names` are dropped.

    Args:
        data: multi-task data with multiclass tasks `names`.
        names: the tasks to pool, in class-offset order.
        pooled: the pooled task's name.

    Returns:
        `MultiTaskData` with the single task `pooled`.

    Example (paths relative to the repository root):
    >>> from keras_branch.data import load_omniglot
    >>> omniglot = load_omniglot("../shared/data/omniglot/images_background_small1.zip")
    >>> root_data = pool_tasks(omniglot, ["Balinese", "Greek"])
    >>> root_data.tasks[0].classes   # 24 + 24
    48
    """
    from keras_branch.tasks import MULTICLASS

    subset = data.select_tasks(list(names))
    by_name = {t.name: t for t in subset.tasks}
    bad = [n for n in names if by_name[n].kind != MULTICLASS]
    if bad:
        raise DataError(f"Only multiclass tasks can be pooled. Received: {bad}")
    offsets, total = {}, 0
    for name in names:
        offsets[name], total = total, total + by_name[name].classes
    splits = {}
    for split_name, split in subset.splits.items():
        y = np.full(len(split), -1, dtype="int32")
        for name in names:
            labels = np.asarray(split.y[name])
            y = np.where(labels >= 0, labels + offsets[name], y)
        splits[split_name] = Split(split.x, {pooled: y})
    task = Task(pooled, MULTICLASS, classes=total)
    return MultiTaskData([task], splits, {**data.info, "pooled": list(names)}, data.name)
