"""What a training run returns, and its folder on disk."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras

from keras_branch.files import atomic_path, atomic_write_json

@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the model, Keras history, metrics per split and task."""

    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, dict[str, dict[str, float]]]


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
