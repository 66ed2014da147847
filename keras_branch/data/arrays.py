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
    """Reads multi-task arrays from a `.npz` file (layout in the module doc)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"--data file does not exist: {path!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"Cannot read {path!r} as .npz: {err}") from None
    with archive:
        if "tasks" not in archive.files:
            raise DataError(f"{path!r} has no `tasks` entry (task configs as JSON).")
        try:
            configs = json.loads(str(archive["tasks"]))
        except ValueError as err:
            raise DataError(f"{path!r}: `tasks` is not valid JSON: {err}") from None
        tasks: list[Task] = as_tasks(configs)
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
                y[task.name] = archive[key]
            splits[split] = Split(archive[f"x_{split}"], y)
    return MultiTaskData(tasks, splits, {"path": path}, name=os.path.basename(path))
