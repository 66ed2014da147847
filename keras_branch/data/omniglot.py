"""Omniglot as a multi-task problem: one task per alphabet.

Reads the official release, as a zip (`images_background*.zip`) or as the
extracted folder, laid out `<root>/<Alphabet>/characterNN/<id>_<drawer>.png`.
The drawings of every character are split by drawer index into train /
validation / test = 10 / 4 / 6 (the first 10 drawers train, and so on).
Images are resized to `image_size` and inverted so strokes are 1 on 0.

Reference:
    Lake, Salakhutdinov, Tenenbaum, "Human-level concept learning through
    probabilistic program induction", Science 2015.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_branch.checks import check_int
from keras_branch.data.multitask import MultiTaskData, merge_tasks
from keras_branch.errors import DataError
from keras_branch.tasks import MULTICLASS, Task

SPLITS = ("train", "validation", "test")
_DRAWING = re.compile(r"^(?:.*/)?([^/]+)/([^/]+)/([0-9]+)_([0-9]+)\.png$")


def _list_drawings(path: str) -> tuple[dict[str, dict[str, list[tuple[int, str]]]], zipfile.ZipFile | None]:
    """alphabet -> character -> [(drawer, member path)], and the open zip if any."""
    if not os.path.exists(path):
        raise DataError(f"Omniglot data path does not exist: {path!r}")
    archive = None
    if os.path.isdir(path):
        names = []
        for dirpath, _, files in os.walk(path):
            for f in files:
                if f.endswith(".png"):
                    names.append(os.path.relpath(os.path.join(dirpath, f), path).replace(os.sep, "/"))
    elif zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"Cannot read the Omniglot zip {path!r}: {err}") from None
        names = archive.namelist()
    else:
        raise DataError(f"Omniglot data path is neither a folder nor a zip file: {path!r}")
    tree: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for name in names:
        match = _DRAWING.match(name)
        if match:
            alphabet, character, _, drawer = match.groups()
            tree.setdefault(alphabet, {}).setdefault(character, []).append((int(drawer), name))
    if not tree:
        if archive is not None:
            archive.close()
        raise DataError(
            f"No Omniglot drawings (<Alphabet>/<character>/<id>_<drawer>.png) under {path!r}."
        )
    return tree, archive


def load_omniglot(
    path: str | os.PathLike,
    image_size: int = 32,
    alphabets: Sequence[str] | None = None,
    split_sizes: Sequence[int] = (10, 4, 6),
) -> MultiTaskData:
    """Reads Omniglot with one multiclass task per alphabet.

    Args:
        path: the release zip or its extracted folder (any alphabets in the
            Omniglot layout: the 5-alphabet "small" split or all 50).
        image_size: images are resized to `image_size x image_size`.
        alphabets: the alphabets to keep (default: all, sorted by name).
        split_sizes: drawings per character for train, validation, test,
            taken in drawer order.

    Returns:
        `MultiTaskData` with images [N, image_size, image_size, 1] in [0, 1]
        and, for every alphabet, labels 0..characters-1 (-1 on images of the
        other alphabets).

    Example (paths relative to the repository root):
    >>> data = load_omniglot("../shared/data/omniglot/images_background_small1.zip")
    >>> [t.classes for t in data.tasks]
    [24, 22, 24, 40, 26]
    """
    path = os.fspath(path)
    check_int(image_size, "image_size", minimum=4, error=DataError)
    if len(split_sizes) != 3 or any(int(n) < 1 for n in split_sizes):
        raise DataError(f"`split_sizes` must be 3 positive ints. Received: {split_sizes!r}")
    tree, archive = _list_drawings(path)
    try:
        chosen = sorted(tree)
        if alphabets is not None:
            unknown = [a for a in alphabets if a not in tree]
            if unknown:
                raise DataError(
                    f"Unknown alphabet(s) {unknown} in `alphabets`; {path!r} holds {chosen}."
                )
            chosen = list(alphabets)
        bounds = np.cumsum([0, *split_sizes])
        tasks, per_split = [], {s: {} for s in SPLITS}
        for alphabet in chosen:
            characters = sorted(tree[alphabet])
            tasks.append(Task(alphabet, MULTICLASS, classes=len(characters)))
            files: dict[str, list[str]] = {s: [] for s in SPLITS}
            labels: dict[str, list[int]] = {s: [] for s in SPLITS}
            for label, character in enumerate(characters):
                drawings = sorted(tree[alphabet][character])
                if len(drawings) < bounds[-1]:
                    raise DataError(
                        f"{alphabet}/{character} has {len(drawings)} drawings; "
                        f"split_sizes={list(split_sizes)} needs {bounds[-1]}."
                    )
                for s, split in enumerate(SPLITS):
                    for _, member in drawings[bounds[s] : bounds[s + 1]]:
                        files[split].append(member)
                        labels[split].append(label)
            for split in SPLITS:
                images = _decode(files[split], path, archive, image_size)
                per_split[split][alphabet] = (images, np.asarray(labels[split], dtype="int32"))
    finally:
        if archive is not None:
            archive.close()
    splits = {split: merge_tasks(tasks, per_split[split]) for split in SPLITS}
    info = {"path": path, "image_size": image_size, "split_sizes": list(split_sizes)}
    return MultiTaskData(tasks, splits, info, name="omniglot")


def _decode(members: list[str], root: str, archive: zipfile.ZipFile | None, size: int) -> np.ndarray:
    """The drawings as [N, size, size, 1] float32 in [0, 1], strokes 1 on 0.

    Raises:
        DataError: naming the member (and `root`) that cannot be read or is
            not a PNG image.
    """
    images = []
    for member in members:
        try:
            if archive is not None:
                raw = archive.read(member)
            else:
                with open(os.path.join(root, member), "rb") as f:
                    raw = f.read()
            images.append(tf.io.decode_png(raw, channels=1))
        except (OSError, zipfile.BadZipFile, NotImplementedError, tf.errors.OpError) as err:
            # TensorFlow's message without its op and function-node decorations.
            reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", getattr(err, "message", str(err)))
            raise DataError(
                f"{root!r}: {member!r} is not a readable PNG image: {' '.join(reason.split())}"
            ) from None
    if len({tuple(image.shape) for image in images}) == 1:
        images = tf.image.resize(tf.cast(tf.stack(images), "float32") / 255.0, (size, size),
                                 method="area")
    else:  # drawings of different sizes (not the official release): resize one by one
        images = tf.stack([tf.image.resize(tf.cast(image, "float32") / 255.0, (size, size),
                                           method="area") for image in images])
    return (1.0 - images).numpy().astype("float32")
