"""Keras callbacks of keras_branch: temperature annealing for BranchPoint layers."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_branch.layers.branch_point import BranchPoint

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
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"`epochs` must be an int >= 1 or None. Received: epochs={epochs!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(
                f"`warmup_epochs` must be an int >= 0. Received: warmup_epochs={warmup_epochs!r}"
            )
        for field, value in (("temperature", temperature), ("min_temperature", min_temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0
            ):
                raise ValueError(f"`{field}` must be a finite number > 0. Received: {field}={value!r}")
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
