"""Keras callbacks of keras_branch: epoch lines, TensorBoard scalars per task, and
temperature annealing for BranchPoint layers."""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_branch.checks import check_int, check_number
from keras_branch.evaluation import mean_metric, task_metrics
from keras_branch.layers.branch_point import BranchPoint
from keras_branch.tasks import Task

SCHEDULES = ("sqrt_decay", "constant")


def find_branch_points(model: keras.layers.Layer) -> list[BranchPoint]:
    """Every `BranchPoint` in a model, nested models and layers included.

    Args:
        model: a Keras model or layer.

    Returns:
        The BranchPoint layers, each once, in depth-first order.
    """
    found: list[BranchPoint] = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, BranchPoint):
            found.append(layer)
        for child in getattr(layer, "layers", None) or ():
            visit(child)

    visit(model)
    return found


def sqrt_decay(epoch: int, epochs: int) -> float:
    """The public Learning-to-Branch schedule: `tau = (E / 20) / sqrt(epoch + 1)`.

    Args:
        epoch: 0-based epoch (counted from the end of any warm-up).
        epochs: E, the total number of epochs.

    Example:
    >>> round(sqrt_decay(0, 40), 3), round(sqrt_decay(3, 40), 3)
    (2.0, 1.0)
    """
    return (epochs / 20.0) / math.sqrt(epoch + 1)


class TemperatureScheduler(keras.callbacks.Callback):
    """Anneals the Gumbel-softmax temperature of every BranchPoint, per epoch.

    At the start of each epoch the callback sets `temperature` on every
    `BranchPoint` of the model (or of `layers`). During the first
    `warmup_epochs` epochs it switches the layers to uniform mixing (every
    parent weighted 1/P, no sampling, no gradient to the logits), so the node
    weights warm up before the branching decisions start to move. The
    temperature of each epoch is added to the logs as `temperature`.

    Args:
        schedule: `"sqrt_decay"` (`tau = (E / 20) / sqrt(e + 1)`, E the total
            epochs, e the epoch counted from the end of the warm-up),
            `"constant"` (tau = `temperature`), or a callable. A callable is
            called as `schedule(e, tau)` (e as above, tau the current
            temperature; Keras' `LearningRateScheduler` convention) or, if it
            takes one argument, as `schedule(e)`; it returns the new tau > 0.
        epochs: E for `"sqrt_decay"`; defaults to the `epochs` given to
            `fit`.
        warmup_epochs: epochs of uniform mixing before sampling starts
            (one public setting: about 1% of the epochs).
        temperature: the value of the `"constant"` schedule.
        min_temperature: tau never goes below this (> 0).
        layers: the BranchPoint layers to drive; defaults to all of the
            model's.

    Example:
    >>> scheduler = TemperatureScheduler("sqrt_decay", warmup_epochs=1)
    >>> # model.fit(..., epochs=40, callbacks=[scheduler])

    Reference:
        Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
        ICML 2020, arXiv:2006.01895.
    """

    def __init__(
        self,
        schedule: str | Callable[..., float] = "sqrt_decay",
        epochs: int | None = None,
        warmup_epochs: int = 0,
        temperature: float = 1.0,
        min_temperature: float = 1e-3,
        layers: Sequence[BranchPoint] | None = None,
    ):
        super().__init__()
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(
                    f"`schedule` must be one of {list(SCHEDULES)} or a callable. "
                    f"Received: schedule={schedule!r}"
                )
        elif not callable(schedule):
            raise ValueError(
                f"`schedule` must be one of {list(SCHEDULES)} or a callable. "
                f"Received: schedule={schedule!r}"
            )
        if epochs is not None:
            check_int(epochs, "epochs", minimum=1)
        check_int(warmup_epochs, "warmup_epochs", minimum=0)
        for field, value in (("temperature", temperature), ("min_temperature", min_temperature)):
            check_number(value, field, minimum=0)
        self.schedule = schedule
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.temperature = float(temperature)
        self.min_temperature = float(min_temperature)
        self.layers = None if layers is None else list(layers)
        self.history: list[tuple[int, float, bool]] = []  # (epoch, tau, uniform)

    def _targets(self) -> list[BranchPoint]:
        layers = self.layers if self.layers is not None else find_branch_points(self.model)
        for layer in layers:
            if not layer.built:
                raise ValueError(
                    f"BranchPoint {layer.name!r} is not built; call the model once first."
                )
        return layers

    def temperature_at(self, epoch: int, current: float) -> float:
        """The temperature of 0-based `epoch` (counted from the start of fit)."""
        e = max(0, epoch - self.warmup_epochs)
        if self.schedule == "constant":
            tau = self.temperature
        elif self.schedule == "sqrt_decay":
            total = self.epochs or (self.params or {}).get("epochs")
            if not total:
                raise ValueError(
                    "TemperatureScheduler('sqrt_decay') needs `epochs` (or fit's epochs)."
                )
            tau = sqrt_decay(e, total)
        else:
            tau = self._call_schedule(e, current)
        tau = float(tau)
        if not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"The temperature schedule returned {tau!r} at epoch {epoch}; need > 0.")
        return max(tau, self.min_temperature)

    def _call_schedule(self, epoch: int, current: float) -> float:
        try:
            params = inspect.signature(self.schedule).parameters.values()
            positional = [
                p for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
            takes_two = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):  # builtins without a signature
            takes_two = True
        return self.schedule(epoch, current) if takes_two else self.schedule(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        layers = self._targets()
        if not layers:
            return
        current = float(keras.ops.convert_to_numpy(layers[0].temperature))
        tau = self.temperature_at(epoch, current)
        uniform = epoch < self.warmup_epochs
        for layer in layers:
            layer.temperature.assign(tau)
            layer.uniform_mixing.assign(1.0 if uniform else 0.0)
        self.history.append((epoch, tau, uniform))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["temperature"] = self.history[-1][1]

    def on_train_end(self, logs=None):
        # Whatever the warm-up did, the model leaves fit sampling normally.
        for layer in self._targets():
            layer.uniform_mixing.assign(0.0)


class EpochLogger(keras.callbacks.Callback):
    """One short line per epoch: losses, mean validation metric, task weights, time.

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
        # A weighting's per-task weights (`<key>_weight`, see keras_branch.weighting).
        weights = [f"{t.name}={float(logs[f'{t.key}_weight']):.3g}" for t in self.tasks
                   if f"{t.key}_weight" in logs]
        if weights:
            parts.append("weights " + " ".join(weights))
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

    Example (`fit_spec` adds this callback when given `tensorboard=`):
    >>> from keras_branch.training import fit_spec
    >>> data = planted_groups(num_train=64, num_validation=32, num_test=32)
    >>> spec = TreeSpec.shared(data.task_names, num_stages=2)
    >>> run = fit_spec(spec, backbones.mlp(100, (8, 8)), data, epochs=1, verbose=0,
    ...                log=None, tensorboard="runs/tb")
    >>> sorted(os.listdir("runs/tb"))
    ['train', 'validation']
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
