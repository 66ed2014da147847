"""Fitting: `fit_spec` builds a spec's model under a strategy and `train` fits it.

The top of the training stack: below it sit `compiling` (optimizer, masked
losses), `evaluation` (per-task scores), `results` (the run and its folder),
`callbacks` and `custom_loop` (the multi-worker loop).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_branch import distribute
from keras_branch.augment import Augment, make_augment
from keras_branch.backbones import Backbone
from keras_branch.build import build_model
from keras_branch.callbacks import TensorBoardLogger
from keras_branch.checkpoints import CheckpointCallback, TrainingCheckpoint
from keras_branch.checks import check_int
from keras_branch.compiling import check_recipe, compile_model, make_optimizer
from keras_branch.custom_loop import fit_custom_loop
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import DataError, TrainingError
from keras_branch.evaluation import data_for_tasks, evaluate
from keras_branch.results import TrainResult
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec
from keras_branch.tasks import spec_tasks
from keras_branch.weighting import Weighting


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
    weighting: str | Weighting | None = None,
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
        weighting: how the task losses combine (`keras_branch.weighting`:
            a `Weighting` or a name such as `"uncertainty"`; None keeps
            the model's, which is the sum unless one was attached). The weights go to
            the history as `<task key>_weight`.

    Returns:
        `TrainResult` with the history and `{split: {task: {metric: value}}}`.

    Example (not run as a doctest: trains an Omniglot model for minutes):
    >>> run = train(model, data, epochs=60, augment={"shift": 0.1, "rotation": 10},
    ...             schedule="cosine", tensorboard="runs/tb")  # doctest: +SKIP
    >>> run.metrics["test"]["Korean"]["error"]  # doctest: +SKIP
    """
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        check_int(value, field, minimum=1, error=DataError)
    check_recipe(schedule, weight_decay, warmup_epochs, epochs)
    data = data_for_tasks(model.tasks, data)
    if "train" not in data.splits or len(data.split("train")) == 0:
        raise DataError(f"{data.name}: no training samples; nothing to train on.")
    augment = make_augment(augment, seed=seed)
    if isinstance(augment, Augment) and len(data.input_shape) != 3:
        raise DataError(
            f"`augment` transforms images (height, width, channels); data "
            f"{data.name!r} has inputs of shape {data.input_shape}. Received: augment={augment!r}"
        )
    if not model.compiled:
        # In the strategy the model was built under: its optimizer's variables
        # must be mirrored like the model's.
        with model.distribute_strategy.scope():
            compile_model(model, optimizer=make_optimizer(
                learning_rate, schedule, weight_decay, epochs, data.steps("train", batch_size),
                warmup_epochs,
            ), weighting=weighting)
    elif weighting is not None:
        model.set_weighting(weighting)
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


def fit_model(
    build: Callable[[], keras.Model],
    data: MultiTaskData,
    seed: int = 0,
    strategy: str | tf.distribute.Strategy | None = None,
    mixed_precision: str | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Builds a task model from a seeded initialisation under a strategy and trains it.

    The one path every keras_branch model trains by (`fit_spec` for trees,
    `fit_soft_ordering` for soft-ordering models): `build()` runs under
    `seeded_layers(seed)` (its initial weights depend on `seed` alone), in
    the strategy's scope and the mixed-precision policy; `train` then
    compiles it with the recipe and fits it.

    Args:
        build: makes the model (a `TaskModel`: outputs keyed by task key).
        data: the multi-task data.
        seed: initialisation and shuffling seed.
        strategy: a `tf.distribute` strategy or its name (`"auto"`,
            `"mirrored"`, `"none"`; see `keras_branch.distribute`).
            Multi-worker training takes a TreeSpec: see `fit_spec`.
        mixed_precision: None, `"float16"` or `"bfloat16"` compute; heads
            and outputs stay float32.
        **kwargs: the recipe and run options of `train` (`epochs`,
            `batch_size`, `learning_rate`, `schedule`, `weight_decay`,
            `warmup_epochs`, `augment`, `verbose`, `callbacks`,
            `checkpoint_dir`, `log`, `tensorboard`, `eval_splits`,
            `weighting`).

    Returns:
        `TrainResult`, as `train`.

    Example:
    >>> data = planted_groups((2, 2), num_train=64, dim=8)
    >>> run = fit_model(lambda: build_model(TreeSpec.shared(data.task_names, 2),
    ...                                     backbones.mlp(8, (8, 8)), data.tasks),
    ...                 data, epochs=1, verbose=0, log=None)
    >>> sorted(run.metrics["test"])
    ['g0_t0', 'g0_t1', 'g1_t0', 'g1_t1']
    """
    strategy = distribute.get_strategy(strategy)
    if distribute.is_multi_worker(strategy):
        raise DataError("Multi-worker training runs keras_branch's own loop, which builds a "
                        "TreeSpec's model: use `fit_spec`. Received: strategy=multiworker")
    with seeded_layers(seed), strategy.scope(), distribute.dtype_policy(mixed_precision):
        model = build()
    return train(model, data, seed=seed, **kwargs)


# Recipe options the multi-worker loop does not take yet, with the values it implies.
_CUSTOM_LOOP_FIXED = {"augment": None, "schedule": "constant", "weight_decay": 0.0,
                      "warmup_epochs": 0, "tensorboard": None, "eval_splits": ("validation", "test")}


def fit_spec(
    spec: TreeSpec,
    backbone: Backbone,
    data: MultiTaskData,
    seed: int = 0,
    strategy: str | tf.distribute.Strategy | None = None,
    mixed_precision: str | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Builds the spec's model from a seeded initialisation and trains it.

    The data may hold more tasks than the spec; the spec's tasks are trained.

    Args:
        spec, backbone, data: what to build and train on.
        seed: initialisation and shuffling seed.
        strategy: a `tf.distribute` strategy or its name (`"auto"`,
            `"mirrored"`, `"multiworker"`, `"none"`; see
            `keras_branch.distribute`). The model is built in its scope;
            multi-worker runs use keras_branch's own loop
            (`keras_branch.custom_loop`), which takes `epochs`,
            `batch_size`, `learning_rate`, `callbacks`, `checkpoint_dir`,
            `log` and `weighting`.
        mixed_precision: None, `"float16"` or `"bfloat16"` compute; heads
            and outputs stay float32.
        **kwargs: the recipe and run options of `train` (`epochs`,
            `batch_size`, `learning_rate`, `schedule` (`"constant"` or
            `"cosine"`), `weight_decay` (AdamW), `warmup_epochs`, `augment`
            (a config dict, see `keras_branch.augment`), `verbose`,
            `callbacks`, `checkpoint_dir` (crash-safe resumable training),
            `log`, `tensorboard` (a folder for per-task scalars),
            `weighting` (see `keras_branch.weighting`)).

    Returns:
        `TrainResult`, as `train`.

    Example (the Omniglot recipe of `benchmarks/omniglot.py`; not run as a
    doctest: it trains for minutes):
    >>> run = fit_spec(spec, backbones.convnet4((32, 32, 1)), data, epochs=60,
    ...                augment={"shift": 0.1, "rotation": 10, "zoom": 0.1},
    ...                schedule="cosine", tensorboard="runs/tb")  # doctest: +SKIP
    """
    tasks = spec_tasks(spec, data)
    strategy = distribute.get_strategy(strategy)
    backbone = distribute.prepare_backbone(backbone, strategy)
    if distribute.is_multi_worker(strategy):
        kwargs.pop("verbose", None)  # the loop logs one line per epoch through `log`
        for field, value in _CUSTOM_LOOP_FIXED.items():
            received = kwargs.pop(field, value)
            if received != value:
                raise DataError(
                    f"`{field}` is not supported by the multi-worker loop yet. "
                    f"Received: {field}={received!r}"
                )
        return fit_custom_loop(spec, backbone, data, strategy, seed=seed,
                               mixed_precision=mixed_precision, **kwargs)
    return fit_model(lambda: build_model(spec, backbone, tasks), data, seed=seed,
                     strategy=strategy, mixed_precision=mixed_precision, **kwargs)
