"""Compiling a multi-task model: the optimizer of a recipe and masked per-task losses.

Kept apart from the architecture (LibMTL's habit): how tasks share layers is
the TreeSpec's business; how their losses combine is decided here: each
task's masked loss times its `loss_weight`, summed, unless a weighting of
`keras_branch.weighting` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_branch.checks import check_choice, check_int, check_number
from keras_branch.errors import DataError, WeightingError
from keras_branch.tasks import Task
from keras_branch.weighting import Weighting, get_weighting

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
    check_choice(schedule, "schedule", SCHEDULES, error=DataError)
    check_number(weight_decay, "weight_decay", minimum=0, inclusive=True, error=DataError)
    check_int(warmup_epochs, "warmup_epochs", minimum=0, error=DataError)
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
    weighting: str | Weighting | None = None,
) -> keras.Model:
    """Compiles a multi-task model with masked losses and metrics per task.

    Args:
        model: a model whose outputs are keyed by `Task.key`
            (a `BranchedModel`, or your own functional model).
        tasks: the tasks; defaults to `model.tasks`.
        learning_rate: Adam's learning rate when `optimizer` is None.
        optimizer: any Keras optimizer (`make_optimizer` builds the
            scheduled / weight-decayed ones of a recipe).
        weighting: how task losses combine: a
            `keras_branch.weighting.Weighting` or its name (see
            `keras_branch.weighting`; `"equal"`, the sum, detaches one
            attached before); None keeps the model's (equal by default).
            Needs a `TaskModel`.

    Returns:
        The same model, compiled.

    Example:
    >>> model = compile_model(build_model(TreeSpec.shared(["a", "b"], num_stages=1),
    ...                                   backbones.mlp(4, (4,)),
    ...                                   [Task("a", "regression"), Task("b", "regression")]),
    ...                       weighting="uncertainty")
    >>> model.weighting.method
    'uncertainty'
    """
    tasks = list(tasks if tasks is not None else model.tasks)
    if weighting is None:
        pass  # a weighting attached before stays
    elif hasattr(model, "set_weighting"):
        model.set_weighting(weighting)
    elif (chosen := get_weighting(weighting)) is not None:
        raise WeightingError(
            f"A {chosen.method} weighting needs a keras_branch TaskModel (BranchedModel, "
            f"SoftOrderingModel); received a {type(model).__name__}.")
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss={t.key: t.make_loss() for t in tasks},
        loss_weights={t.key: t.loss_weight for t in tasks},
        metrics={t.key: t.make_metrics() for t in tasks},
        # XLA made CPU training slower in measurements (keras-tf-notes.md).
        jit_compile=False,
    )
    return model
