"""A user's own multi-task arrays in one `.npz` file.

Layout: `tasks` holds the task configs as a JSON string; `x_<split>` the
inputs and `y_<split>_<i>` the labels of task i for each split present
(`train` is required; `validation` and `test` are optional). Missing labels
follow the library's convention (-1, or NaN for regression).
`save_npz(path, data)` writes this layout from a `MultiTaskData`.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import Any

import numpy as np

from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.errors import DataError
from keras_branch.files import atomic_path
from keras_branch.tasks import Task, as_tasks

SPLITS = ("train", "validation", "test")


def save_npz(path: str | os.PathLike, data: MultiTaskData) -> None:
    """Writes `data` in the `.npz` layout `load_npz` reads (atomically)."""
    arrays = {"tasks": np.array(json.dumps([t.get_config() for t in data.tasks]))}
    for split_name, split in data.splits.items():
        arrays[f"x_{split_name}"] = split.x
        for i, task in enumerate(data.tasks):
            arrays[f"y_{split_name}_{i}"] = np.asarray(split.y[task.name])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> MultiTaskData:
    """Reads multi-task arrays from a `.npz` file (layout in the module doc).

    Only numeric arrays are read: object arrays (ragged rows, Python
    objects) and pickles are refused, never unpickled (`allow_pickle=False`).

    Args:
        path: the `.npz` file.

    Returns:
        `MultiTaskData` with the file's tasks and splits.

    Raises:
        DataError: naming the file and the entry, for a file that is not an
            `.npz` archive (empty, a single `.npy` array, a pickle, a
            truncated zip), an entry that cannot be read, task configs that
            are not JSON, or inputs and labels that are not real numbers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"--data file does not exist: {path!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if os.path.getsize(path) == 0:
            reason = "the file is empty"
        elif "pickle" in str(err):
            reason = "it holds pickled Python objects; keras_branch never unpickles a file"
        else:
            reason = " ".join(str(err).split())
        raise DataError(f"Cannot read {path!r} as .npz (np.savez): {reason}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path!r} holds a single array ({type(archive).__name__}), not an .npz archive of "
            f"named arrays (`tasks`, `x_train`, `y_train_0`, ...; see `save_npz`)."
        )
    with archive:
        if "tasks" not in archive.files:
            raise DataError(f"{path!r} has no `tasks` entry (task configs as JSON).")
        tasks: list[Task] = as_tasks(_task_configs(archive, path))
        if "x_train" not in archive.files:
            raise DataError(f"{path!r} has no `x_train` array.")
        splits = {}
        for split in SPLITS:
            if f"x_{split}" not in archive.files:
                continue
            y = {}
            for i, task in enumerate(tasks):
                key = f"y_{split}_{i}"
                if key not in archive.files:
                    raise DataError(f"{path!r} lacks `{key}` (labels of task {task.name!r}).")
                y[task.name] = _entry(archive, key, path)
            splits[split] = Split(_entry(archive, f"x_{split}", path), y)
    return MultiTaskData(tasks, splits, {"path": path}, name=os.path.basename(path))


def _entry(archive: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    """One array of the archive; a DataError naming it when it cannot be read."""
    try:
        value = archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"{path!r}: `{key}` is an object array (ragged rows or Python objects); "
                f"keras_branch reads numeric arrays only and never unpickles a file."
            ) from None
        raise DataError(f"{path!r}: `{key}` cannot be read: {' '.join(str(err).split())}") from None
    except (OSError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as err:
        # MemoryError: a header that declares a shape larger than the file holds (or memory).
        raise DataError(f"{path!r}: `{key}` cannot be read: {' '.join(str(err).split())}") from None
    if not isinstance(value, np.ndarray):  # a member that is not a .npy array: raw bytes
        raise DataError(f"{path!r}: `{key}` is not a .npy array (np.savez writes one per name).")
    return value


def _task_configs(archive: np.lib.npyio.NpzFile, path: str) -> Any:
    """The `tasks` entry: one string (or UTF-8 bytes) of JSON, parsed."""
    value = _entry(archive, "tasks", path)
    if value.ndim != 0 or value.dtype.kind not in "SU":
        raise DataError(
            f"{path!r}: `tasks` must be one string of JSON task configs "
            f"(np.array(json.dumps(configs))). Received an array of dtype {value.dtype} "
            f"and shape {value.shape}."
        )
    text = value.item()
    try:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return json.loads(text)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError
        raise DataError(f"{path!r}: `tasks` is not valid JSON: {err}") from None
