"""Compiling, fitting and scoring branched models with `model.fit`.

Kept apart from the architecture (LibMTL's habit): how tasks share layers is
the TreeSpec's business; how their losses combine is decided here (each
task's masked loss times its `loss_weight`, summed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_branch.augment import Augment, make_augment
from keras_branch.backbones import Backbone
from keras_branch.build import build_model
from keras_branch.checkpoints import CheckpointCallback, TrainingCheckpoint
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import DataError, SpecError, TrainingError
from keras_branch.files import atomic_path, atomic_write_json
from keras_branch.spec import TreeSpec
from keras_branch.tasks import BINARY, MULTICLASS, Task


SCHEDULES = ("constant", "cosine")


def check_recipe(
    schedule: str = "constant",
    weight_decay: float = 0.0,
    warmup_epochs: int = 0,
    epochs: int | None = None,
) -> None:
    """Validates the optimizer knobs of a training recipe.

    Raises:
        DataError: naming the field and the value received.
    """
    if schedule not in SCHEDULES:
        raise DataError(f"`schedule` must be one of {list(SCHEDULES)}. Received: schedule={schedule!r}")
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise DataError(
            f"`weight_decay` must be a finite number >= 0. Received: weight_decay={weight_decay!r}"
        )
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise DataError(
            f"`warmup_epochs` must be an int >= 0. Received: warmup_epochs={warmup_epochs!r}"
        )
    if epochs is not None and warmup_epochs >= max(epochs, 1) and warmup_epochs > 0:
        raise DataError(
            f"`warmup_epochs` must be smaller than `epochs` ({epochs}). "
            f"Received: warmup_epochs={warmup_epochs!r}"
        )


def make_optimizer(
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    epochs: int = 1,
    steps_per_epoch: int = 1,
    warmup_epochs: int = 0,
) -> keras.optimizers.Optimizer:
    """Adam (or AdamW when `weight_decay > 0`) with a learning-rate schedule.

    Args:
        learning_rate: the peak learning rate.
        schedule: `"constant"` (today's default) or `"cosine"`: cosine decay
            to 0 over the training steps after the warm-up.
        weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam.
        epochs, steps_per_epoch: the training length (for the schedule).
        warmup_epochs: epochs of linear warm-up from 0 to `learning_rate`.

    Returns:
        A fresh Keras optimizer.

    Example:
    >>> opt = make_optimizer(1e-3, "cosine", weight_decay=1e-4, epochs=60,
    ...                      steps_per_epoch=43, warmup_epochs=2)
    """
    check_recipe(schedule, weight_decay, warmup_epochs, epochs)
    total = max(1, int(epochs) * int(steps_per_epoch))
    warmup = int(warmup_epochs) * int(steps_per_epoch)
    lr: Any = learning_rate
    if schedule == "cosine":
        if warmup:
            lr = keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(1, total - warmup), warmup_target=learning_rate,
                warmup_steps=warmup,
            )
        else:
            lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total)
    elif warmup:
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=learning_rate, warmup_steps=warmup,
        )
    if weight_decay > 0:
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    return keras.optimizers.Adam(lr)


def compile_model(
    model: keras.Model,
    tasks: Sequence[Task] | None = None,
    learning_rate: float = 1e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> keras.Model:
    """Compiles a multi-task model with masked losses and metrics per task.

    Args:
        model: a model whose outputs are keyed by `Task.key`
            (a `BranchedModel`, or your own functional model).
        tasks: the tasks; defaults to `model.tasks`.
        learning_rate: Adam's learning rate when `optimizer` is None.
        optimizer: any Keras optimizer (`make_optimizer` builds the
            scheduled / weight-decayed ones of a recipe).

    Returns:
        The same model, compiled.
    """
    tasks = list(tasks if tasks is not None else model.tasks)
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss={t.key: t.make_loss() for t in tasks},
        loss_weights={t.key: t.loss_weight for t in tasks},
        metrics={t.key: t.make_metrics() for t in tasks},
        # XLA made CPU training slower in measurements (keras-tf-notes.md).
        jit_compile=False,
    )
    return model


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
    data = _check_tasks(tasks, data)
    logs = model.evaluate(data.dataset(split, batch_size), return_dict=True, verbose=0)
    result = task_metrics(logs, tasks)
    counts = data.labelled_counts(split)
    for task in tasks:
        if counts[task.name] == 0:
            # Keras reports 0 accuracy (error 1) or 0 mse here: a score of nothing.
            result[task.name] = {}
        result[task.name]["n"] = counts[task.name]
    return result


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

    Example:
    >>> outputs = litert_runner.run_signature(interpreter, "serving_default", data.split("test").x)
    >>> score_outputs(outputs, data)["a"]["accuracy"]
    """
    tasks = list(tasks if tasks is not None else data.tasks)
    data = _check_tasks(tasks, data)
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


class EpochLogger(keras.callbacks.Callback):
    """One short line per epoch: losses, mean validation metric, time.

    Keras' own progress prints every metric of every task, which for many
    tasks is a wall of text; this prints what a person watches.

    Args:
        tasks: the tasks (for the mean of their primary metric).
        log: where lines go (default `print`).
    """

    def __init__(self, tasks: Sequence[Task], log: Callable[[str], None] = print):
        super().__init__()
        self.tasks = list(tasks)
        self.log = log
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.params.get('epochs', '?')}"]
        for key in ("loss", "val_loss"):
            if key in logs:
                parts.append(f"{key} {float(logs[key]):.4f}")
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        metrics = task_metrics(val, self.tasks)
        for name in ("accuracy", "mse"):
            value = mean_metric(metrics, name)
            if not math.isnan(value):
                parts.append(f"mean val {name} {value:.4f}")
        parts.append(f"({time.perf_counter() - self._start:.1f} s)")
        self.log("  ".join(parts))


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes every epoch's logs (per-task losses and metrics) as TensorBoard scalars.

    Same layout as `keras.callbacks.TensorBoard`: `LOG_DIR/train` and
    `LOG_DIR/validation` event files with tags `epoch_<key>` (for a
    multi-task model `epoch_<task key>_loss`, `epoch_<task key>_accuracy`,
    ..., and the total `epoch_loss`), plus `epoch_learning_rate`. Written
    with TensorFlow's own summary op, so it needs no `tensorboard` package
    (Keras' callback does); view with `tensorboard --logdir LOG_DIR`.

    Args:
        log_dir: the folder (created if missing).

    Example:
    >>> fit_spec(spec, backbone, data, epochs=5, tensorboard="runs/tb")
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        from tensorflow.core.framework import summary_pb2

        self.log_dir = os.fspath(log_dir)
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def _write(self, split: str, values: dict[str, float], step: int) -> None:
        if not values:
            return
        with self._writer(split).as_default():
            for key, value in values.items():
                tf.summary.write(f"epoch_{key}", tf.constant(float(value), tf.float32),
                                 step=step, metadata=self._metadata)
        self._writer(split).flush()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and "learning_rate" not in train:
            try:
                train["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            except (TypeError, ValueError, AttributeError):
                pass
        self._write("train", train, epoch)
        self._write("validation", val, epoch)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the model, Keras history, metrics per split and task."""

    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, dict[str, dict[str, float]]]


def _check_tasks(tasks: Sequence[Task], data: MultiTaskData) -> MultiTaskData:
    """The data restricted to the model's tasks; DataError if one is missing."""
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


def train(
    model: keras.Model,
    data: MultiTaskData,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    augment: Callable | dict | None = None,
    eval_splits: Sequence[str] = ("validation", "test"),
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    warmup_epochs: int = 0,
    tensorboard: str | os.PathLike | None = None,
) -> TrainResult:
    """Compiles (if needed), fits on `train` with `validation`, scores splits.

    Args:
        model: a `BranchedModel` (or a model with `.tasks` and outputs keyed
            by `Task.key`).
        data: the multi-task data; must have the model's tasks.
        epochs, batch_size, learning_rate: the recipe (batch size is global
            under a distribution strategy).
        seed: shuffling seed; epoch e's order depends on (seed, e) only.
        verbose: Keras progress (`"auto"`, 0, 1, 2); use 0 with an
            `EpochLogger` callback for one short line per epoch.
        callbacks: extra Keras callbacks.
        augment: optional augmentation of training inputs: a config dict
            such as `{"shift": 0.1, "rotation": 10, "zoom": 0.1}` (see
            `keras_branch.augment`; seeded with `seed`) or a callable on
            batches.
        eval_splits: splits scored after training.
        checkpoint_dir: when given, the training state is checkpointed after
            every epoch and a rerun resumes from the last finished epoch.
        log: where the resume notice goes (None for silence).
        schedule, weight_decay, warmup_epochs: optimizer recipe used when the
            model is not compiled yet (see `make_optimizer`).
        tensorboard: a folder for TensorBoard event files (per-task losses
            and metrics per epoch; see `TensorBoardLogger`).

    Returns:
        `TrainResult` with the history and `{split: {task: {metric: value}}}`.

    Example:
    >>> run = train(model, data, epochs=60, augment={"shift": 0.1, "rotation": 10},
    ...             schedule="cosine", tensorboard="runs/tb")
    >>> run.metrics["test"]["Korean"]["error"]
    """
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"`{field}` must be a positive int. Received: {field}={value!r}")
    check_recipe(schedule, weight_decay, warmup_epochs, epochs)
    data = _check_tasks(model.tasks, data)
    if "train" not in data.splits or len(data.split("train")) == 0:
        raise DataError(f"{data.name}: no training samples; nothing to train on.")
    augment = make_augment(augment, seed=seed)
    if isinstance(augment, Augment) and len(data.input_shape) != 3:
        raise DataError(
            f"`augment` transforms images (height, width, channels); data "
            f"{data.name!r} has inputs of shape {data.input_shape}. Received: augment={augment!r}"
        )
    if not model.compiled:
        compile_model(model, optimizer=make_optimizer(
            learning_rate, schedule, weight_decay, epochs, data.steps("train", batch_size),
            warmup_epochs,
        ))
    callbacks = [*callbacks, keras.callbacks.TerminateOnNaN()]
    if tensorboard is not None:
        # Fail here, with the file system's one-line reason, rather than inside
        # TensorFlow's summary writer after the first epoch.
        os.makedirs(tensorboard, exist_ok=True)
        callbacks.append(TensorBoardLogger(tensorboard))
    first_epoch, past = 0, {}
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(checkpoint_dir, model)
        first_epoch, past = checkpoint.restore()
        if first_epoch and log:
            log(f"resuming from {os.fspath(checkpoint_dir)}: {first_epoch} of {epochs} epochs done")
        callbacks.append(CheckpointCallback(checkpoint, past))
    validation = (
        data.dataset("validation", batch_size=256) if "validation" in data.splits else None
    )
    history: dict[str, list[float]] = {k: list(v) for k, v in past.items()}
    if first_epoch < epochs:
        fitted = model.fit(
            data.epoch_dataset("train", batch_size, seed, first_epoch, epochs, augment),
            validation_data=validation,
            epochs=epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=data.steps("train", batch_size),
            verbose=verbose,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself, deterministically
        )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        losses = history.get("loss", [])
        if losses and not all(math.isfinite(v) for v in losses):
            epoch = next(i for i, v in enumerate(losses) if not math.isfinite(v)) + 1
            raise TrainingError(
                f"The training loss became {losses[epoch - 1]} in epoch {epoch}; training "
                f"stopped. Inputs or regression targets far from unit scale, or a learning "
                f"rate too large for them, are the usual causes."
            )
    metrics = {
        split: evaluate(model, data, split) for split in eval_splits if split in data.splits
    }
    return TrainResult(model, history, metrics)


def save_run(
    out_dir: str | os.PathLike,
    result: TrainResult,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a training run as one folder, atomically.

    The folder holds `model.keras`, `spec.json`, `history.json`,
    `metrics.json` (per split and task) and `config.json` (how it was made).
    It appears complete or not at all.
    """
    model = result.model
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        os.makedirs(tmp)
        model.save(os.path.join(tmp, "model.keras"))
        if hasattr(model, "spec"):
            model.spec.save(os.path.join(tmp, "spec.json"))
        atomic_write_json(os.path.join(tmp, "history.json"), result.history)
        atomic_write_json(os.path.join(tmp, "metrics.json"), result.metrics)
        if config is not None:
            atomic_write_json(os.path.join(tmp, "config.json"), config)
    return os.fspath(out_dir)


def spec_tasks(spec: TreeSpec, data: MultiTaskData) -> list[Task]:
    """The data's `Task` objects for the spec's task names, in spec order."""
    by_name = {t.name: t for t in data.tasks}
    unknown = [name for name in spec.tasks if name not in by_name]
    if unknown:
        raise SpecError(
            f"Spec task(s) {unknown} are not in data {data.name!r}; its tasks are "
            f"{data.task_names}."
        )
    return [by_name[name] for name in spec.tasks]


def fit_spec(
    spec: TreeSpec,
    backbone: Backbone,
    data: MultiTaskData,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    strategy: str | tf.distribute.Strategy | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    mixed_precision: str | None = None,
    log: Callable[[str], None] | None = print,
    augment: Callable | dict | None = None,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    warmup_epochs: int = 0,
    tensorboard: str | os.PathLike | None = None,
) -> TrainResult:
    """Builds the spec's model from a seeded initialisation and trains it.

    The data may hold more tasks than the spec; the spec's tasks are trained.

    Args:
        spec, backbone, data: what to build and train on.
        epochs, batch_size, learning_rate, seed, verbose, callbacks: the
            recipe, as in `train` (batch size is global).
        strategy: a `tf.distribute` strategy or its name (`"auto"`,
            `"mirrored"`, `"multiworker"`, `"none"`; see
            `keras_branch.distribute`). The model is built and compiled in
            its scope; multi-worker runs use keras_branch's own loop.
        checkpoint_dir: crash-safe resumable training (see `train`).
        mixed_precision: None, `"float16"` or `"bfloat16"` compute; heads
            and outputs stay float32.
        log: progress notices (None for silence).
        augment: training-input augmentation, a config dict or a callable
            (see `train` and `keras_branch.augment`).
        schedule: `"constant"` or `"cosine"` learning rate (`make_optimizer`).
        weight_decay: AdamW's decoupled weight decay (0: Adam).
        warmup_epochs: linear learning-rate warm-up.
        tensorboard: a folder for TensorBoard logs (per-task scalars).

    Returns:
        `TrainResult`, as `train`.

    Example (the Omniglot recipe of `benchmarks/omniglot.py`):
    >>> run = fit_spec(spec, backbones.convnet4((32, 32, 1)), data, epochs=60,
    ...                augment={"shift": 0.1, "rotation": 10, "zoom": 0.1},
    ...                schedule="cosine", tensorboard="runs/tb")
    """
    from keras_branch import distribute

    check_recipe(schedule, weight_decay, warmup_epochs, epochs)
    tasks = spec_tasks(spec, data)
    strategy = distribute.get_strategy(strategy)
    backbone = distribute.prepare_backbone(backbone, strategy)
    if distribute.is_multi_worker(strategy):
        from keras_branch.custom_loop import fit_custom_loop

        defaults = {"augment": None, "schedule": "constant", "weight_decay": 0.0,
                    "warmup_epochs": 0, "tensorboard": None}
        given = {"augment": augment, "schedule": schedule, "weight_decay": weight_decay,
                 "warmup_epochs": warmup_epochs, "tensorboard": tensorboard}
        for field, value in given.items():
            if value != defaults[field]:
                raise DataError(
                    f"`{field}` is not supported by the multi-worker loop yet. "
                    f"Received: {field}={value!r}"
                )

        return fit_custom_loop(
            spec, backbone, data, strategy, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, checkpoint_dir=checkpoint_dir,
            mixed_precision=mixed_precision, callbacks=callbacks, log=log,
        )
    keras.utils.set_random_seed(seed)
    with strategy.scope(), distribute.dtype_policy(mixed_precision):
        model = build_model(spec, backbone, tasks)
        steps = _check_tasks(tasks, data).steps("train", batch_size)
        compile_model(model, optimizer=make_optimizer(
            learning_rate, schedule, weight_decay, epochs, steps,
            warmup_epochs,
        ))
    return train(
        model, data, epochs=epochs, batch_size=batch_size, seed=seed,
        verbose=verbose, callbacks=callbacks, checkpoint_dir=checkpoint_dir, log=log,
        augment=augment, tensorboard=tensorboard,
    )
