"""keras_branch's own training loop, for MultiWorkerMirroredStrategy.

Keras 3.15's `model.fit` fails under `MultiWorkerMirroredStrategy` (keras
issues #20585, #20329). This loop trains the same model with the same masked
per-task losses (each task's loss is the sum of its labelled samples' losses
over the global batch, times its weight), the same deterministic epoch
order, the same checkpoints and the same `TrainResult`, so a user switches by
flag. Metrics are computed after training by the fit path's `evaluate`.

The global batch of each step is cut into per-replica slices
(`experimental_distribute_dataset` with data sharding), so every step sees
exactly the samples a single-process run with the same global batch sees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_branch import distribute
from keras_branch.backbones import Backbone
from keras_branch.build import build_model
from keras_branch.checkpoints import TrainingCheckpoint
from keras_branch.compiling import compile_model
from keras_branch.data.multitask import MultiTaskData
from keras_branch.evaluation import evaluate
from keras_branch.masked import MaskedLoss
from keras_branch.results import TrainResult
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec
from keras_branch.tasks import spec_tasks
from keras_branch.weighting import Weighting, weight_logs, weighted_train_step


def fit_custom_loop(
    spec: TreeSpec,
    backbone: Backbone,
    data: MultiTaskData,
    strategy: tf.distribute.Strategy,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    mixed_precision: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log: Callable[[str], None] | None = print,
    weighting: str | Weighting | None = None,
):
    """Trains a spec's model with a custom loop under `strategy`.

    Args:
        spec, backbone, data: what to build and train on.
        strategy: a `tf.distribute` strategy (any; built for multi-worker).
        epochs, batch_size, learning_rate, seed: the recipe (global batch).
        checkpoint_dir: resume from / save to here after every epoch; on
            non-chief workers a temporary folder is used instead.
        mixed_precision: None, "float16" or "bfloat16".
        callbacks: Keras callbacks; only `on_epoch_end(epoch, logs)` is called.
        log: progress lines (chief only; None for silence).
        weighting: how task losses combine (`keras_branch.weighting`; None
            sums them); its weights join the history as `<task key>_weight`.

    Returns:
        `keras_branch.results.TrainResult` on every worker.
    """
    tasks = spec_tasks(spec, data)
    chief = distribute.is_chief(strategy)
    say = log if (log and chief) else (lambda _line: None)
    with seeded_layers(seed), strategy.scope(), distribute.dtype_policy(mixed_precision):
        model = build_model(spec, backbone, tasks)
        optimizer = keras.optimizers.Adam(learning_rate)
        model.set_weighting(weighting)
        optimizer.build(model.trainable_variables)
    losses = {t.key: MaskedLoss(t.kind, reduction=None, task=t.name) for t in tasks}
    weights = tf.constant([t.loss_weight for t in tasks], "float32")

    first_epoch, history = 0, {}
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(checkpoint_dir, model, optimizer=optimizer, is_chief=chief)
        first_epoch, history = checkpoint.restore()
        if first_epoch:
            say(f"resuming from {os.fspath(checkpoint_dir)}: {first_epoch} of {epochs} epochs done")

    steps = data.steps("train", batch_size)
    dataset = data.epoch_dataset("train", batch_size, seed, first_epoch, epochs)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))

    def shares(y, outputs):
        return [tf.nn.compute_average_loss(tf.cast(losses[t.key](y[t.key], outputs[t.key]), "float32"),
                                           global_batch_size=batch_size) for t in tasks]

    def replica_step(x, y):
        if model.weighting is not None:
            return weighted_train_step(model, model.weighting, optimizer, x, y, shares).total / (
                strategy.num_replicas_in_sync)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(weights * tf.stack(shares(y, model(x, training=True))))
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    for epoch in range(first_epoch, epochs):
        start = time.perf_counter()
        total, count = 0.0, 0
        for _ in range(steps):
            total += float(train_step(next(iterator)))
            count += 1
        logs = {"loss": total / max(count, 1)}
        if model.weighting is not None:
            logs.update(weight_logs(model.weighting))
            model.weighting.end_epoch()
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if checkpoint is not None:
            checkpoint.save(epoch + 1, history)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        say(f"epoch {epoch + 1}/{epochs}  loss {logs['loss']:.4f}  ({time.perf_counter() - start:.1f} s)")

    # Scoring and saving happen outside the strategy, on a plain copy.
    with seeded_layers(seed), distribute.dtype_policy(mixed_precision):
        plain = build_model(spec, backbone, tasks)
    if model.weighting is not None:  # its state is part of the weights
        plain.set_weighting(keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(model.weighting)))
    plain.set_weights([np.asarray(w) for w in model.get_weights()])
    compile_model(plain, learning_rate=learning_rate)
    metrics = {
        split: evaluate(plain, data, split) for split in ("validation", "test") if split in data.splits
    }
    return TrainResult(plain, history, metrics)

