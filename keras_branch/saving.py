"""Loading saved keras_branch models with clear errors."""

from __future__ import annotations

import os

import keras

from keras_branch.build import BranchedModel
from keras_branch.errors import ModelFileError
from keras_branch.task_model import TaskModel


def _load_keras_file(path: str, safe_mode: bool) -> keras.Model:
    """`keras.saving.load_model` with one clear error for anything that is not a model."""
    if not os.path.isfile(path):
        raise ModelFileError(f"--model file does not exist: {path!r}")
    if not path.endswith(".keras"):
        raise ModelFileError(f"--model must be a .keras file. Received: {path!r}")
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode)
    except Exception as err:  # Keras raises many types for a bad file
        message = " ".join(str(err).split())[:300]
        raise ModelFileError(
            f"Cannot load model {path!r}: {type(err).__name__}: {message}"
        ) from None


def load_branched_model(path: str | os.PathLike, safe_mode: bool = True) -> BranchedModel:
    """Loads a `.keras` file written from a `BranchedModel`.

    Args:
        path: the `.keras` file.
        safe_mode: Keras' safe mode (on by default; keras_branch never needs
            it off).

    Returns:
        The `BranchedModel`, compiled as it was saved.
    """
    path = os.fspath(path)
    model = _load_keras_file(path, safe_mode)
    if not isinstance(model, BranchedModel):
        raise ModelFileError(
            f"{path!r} holds a {type(model).__name__}, not a keras_branch BranchedModel."
        )
    return model


def load_task_model(path: str | os.PathLike, safe_mode: bool = True) -> keras.Model:
    """Loads any keras_branch multi-task model (a tree or a soft-ordering model).

    Raises:
        ModelFileError: the file is missing, not a `.keras` file, not
            loadable (a spec JSON, a truncated zip, a broken config), or
            holds another kind of model.
    """
    path = os.fspath(path)
    model = _load_keras_file(path, safe_mode)
    if not isinstance(model, TaskModel):
        raise ModelFileError(
            f"{path!r} holds a {type(model).__name__}, not a keras_branch task model "
            f"(BranchedModel or SoftOrderingModel)."
        )
    return model
