"""Component weights of an evolved system: `.npz` files and copying them into models.

A system's weights are a dict `layer name -> list of arrays` (one entry per
component: `stem`, `stage{d}_block{b}`, `adapter{d}_{key}`, `norm{d}_{i}_{key}`,
`head_{key}`).
These helpers store such a dict in one `.npz` file (atomically) and read it
back, and set it on the layers of a built model.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import keras
import numpy as np

from keras_branch.batch_norm import nested_layers
from keras_branch.errors import SearchError
from keras_branch.files import atomic_path

__all__ = ["component_layers", "load_weights", "save_weights", "set_weights"]


def save_weights(path: str | os.PathLike, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Writes `weights` to one `.npz` file, atomically.

    Args:
        path: the file to write (replaced if it exists).
        weights: layer name -> that layer's weight arrays, in order.

    Example:
    >>> save_weights("system.npz", {"stem": [np.ones((4, 2)), np.zeros(2)]})
    """
    flat = {f"{name}/{i}": w for name, ws in weights.items() for i, w in enumerate(ws)}
    with atomic_path(os.fspath(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)


def load_weights(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Reads a file written by `save_weights`.

    Args:
        path: the `.npz` file.

    Returns:
        Layer name -> its weight arrays, in the order they were saved.

    Raises:
        SearchError: the file does not exist.

    Example:
    >>> save_weights("system.npz", {"stem": [np.ones((4, 2)), np.zeros(2)]})
    >>> load_weights("system.npz")["stem"][0].shape
    (4, 2)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SearchError(f"Missing weights file {path!r}.")
    result: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, _, index = key.rpartition("/")
            result.setdefault(name, {})[int(index)] = data[key]
    return {name: [ws[i] for i in sorted(ws)] for name, ws in result.items()}


def set_weights(model: keras.Model, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Sets the weights of every layer of `model` named in `weights`.

    Args:
        model: a built model.
        weights: layer name -> weight arrays; other layers are left as they are.

    Example (not run as a doctest: needs an evolved system):
    >>> set_weights(model, system.weights)  # doctest: +SKIP
    """
    for name, layer in component_layers(model).items():
        if name in weights:
            layer.set_weights(weights[name])


def component_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Layer name -> layer, for the model's layers and the layers inside them.

    A task's own norms live inside a `build.NormedBlock` (and a block only
    run through its users' own norms is reached only there), so a system's
    components are looked up below the model's top-level layers too. Layers
    inside a block keep the block template's names, which may repeat; those
    are never components, and the first layer of a name is kept.

    Args:
        model: a built model.

    Returns:
        Every named layer, each object once.
    """
    found: dict[str, keras.layers.Layer] = {}
    for layer in nested_layers(model):
        if layer is not model:
            found.setdefault(layer.name, layer)
    return found
