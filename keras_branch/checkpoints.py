"""Crash-safe training state: resume after a kill without redoing finished epochs.

One TF checkpoint holds the model's weights, the optimizer's state, the number
of finished epochs and the history so far. `tf.train.CheckpointManager`
updates its `checkpoint` index file atomically after the checkpoint's files
are complete, so a process killed mid-write leaves the previous checkpoint in
force: at most the epoch in progress is redone.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import keras
import tensorflow as tf

from keras_branch.files import claim_folder, remove_owned_folder


class TrainingCheckpoint:
    """Saves and restores a model's training state at epoch boundaries.

    Args:
        directory: where checkpoints live. A missing folder is created (and
            `cleanup` may remove it); a folder of this class's earlier run is
            resumed; an empty folder is used and kept; a non-empty folder
            keras_branch did not create is refused (`OutputExistsError`).
        model: the model; its optimizer must exist (compile first).
        optimizer: the optimizer, when it is not `model.optimizer`.
        is_chief: False on non-chief workers of a multi-worker run, which
            then write to a temporary folder (every worker must take part in
            saving, but only the chief's copy is kept).
        max_to_keep: checkpoints kept.

    Example:
    >>> from keras_branch.compiling import compile_model
    >>> model = compile_model(build_model(TreeSpec.shared(["a"], num_stages=1),
    ...                                   backbones.mlp(4, (4,)), [Task("a", "regression")]))
    >>> ckpt = TrainingCheckpoint("run.checkpoint", model)
    >>> ckpt.restore()      # a fresh folder: start at epoch 0 with no history
    (0, {})
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer | None = None,
        is_chief: bool = True,
        max_to_keep: int = 2,
    ):
        self.optimizer = optimizer or model.optimizer
        if self.optimizer is None:
            raise ValueError("The model has no optimizer: compile it before checkpointing.")
        if is_chief:
            self.directory = claim_folder(directory, "checkpoint folder")
        else:
            self.directory = tempfile.mkdtemp(prefix="kb_worker_ckpt_")
        self.is_chief = is_chief
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.history = tf.Variable("{}", dtype=tf.string, trainable=False)
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=self.optimizer, epoch=self.epoch, history=self.history
        )
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep)
        self._model = model

    def restore(self) -> tuple[int, dict[str, list[float]]]:
        """Loads the latest checkpoint, if any.

        Returns:
            `(finished_epochs, history_so_far)`; `(0, {})` when starting fresh.
        """
        latest = self._manager.latest_checkpoint
        if latest is None:
            return 0, {}
        # Optimizer slots must exist before restoring into them.
        self.optimizer.build(self._model.trainable_variables)
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy()), json.loads(self.history.numpy().decode())

    def save(self, finished_epochs: int, history: dict[str, list[float]]) -> None:
        self.epoch.assign(finished_epochs)
        self.history.assign(json.dumps(history))
        self._manager.save(checkpoint_number=finished_epochs)

    def cleanup(self) -> None:
        """Removes the checkpoint folder if this class created it (after the final model is written)."""
        remove_owned_folder(self.directory)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a `TrainingCheckpoint` after every epoch of `model.fit`.

    Args:
        checkpoint: the `TrainingCheckpoint`.
        history: history of the epochs finished before this run (restored).
    """

    def __init__(self, checkpoint: TrainingCheckpoint, history: dict[str, list[float]] | None = None):
        super().__init__()
        self.checkpoint = checkpoint
        self.past: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None):
        for key, value in (logs or {}).items():
            self.past.setdefault(key, []).append(float(value))
        self.checkpoint.save(epoch + 1, self.past)
