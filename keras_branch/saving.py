"""Loading saved keras_branch models with clear errors."""

from __future__ import annotations

import os

import keras

from keras_branch.build import BranchedModel
from keras_branch.errors import ModelFileError


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
    if not os.path.isfile(path):
        raise ModelFileError(f"--model file does not exist: {path!r}")
    if not path.endswith(".keras"):
        raise ModelFileError(f"--model must be a .keras file. Received: {path!r}")
    try:
        model = keras.saving.load_model(path, safe_mode=safe_mode)
    except Exception as err:  # Keras raises many types for a bad file
        raise ModelFileError(f"Cannot load model {path!r}: {type(err).__name__}: {err}") from None
    if not isinstance(model, BranchedModel):
        raise ModelFileError(
            f"{path!r} holds a {type(model).__name__}, not a keras_branch BranchedModel."
        )
    return model


def load_task_model(path: str | os.PathLike, safe_mode: bool = True) -> keras.Model:
    """Loads any keras_branch multi-task model (a tree or a soft-ordering model)."""
    from keras_branch.soft_ordering_model import SoftOrderingModel

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"--model file does not exist: {path!r}")
    try:
        return load_branched_model(path, safe_mode=safe_mode)
    except ModelFileError as err:
        model = keras.saving.load_model(path, safe_mode=safe_mode)
        if isinstance(model, SoftOrderingModel):
            return model
        raise err
