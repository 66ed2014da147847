"""CelebA's 40 binary face attributes as 40 tasks, through `tfds.load("celeb_a")`.

Nothing is downloaded unless asked (`download=True`): by default the data
must already be prepared in `data_dir` (TFDS' layout), and its absence is a
`DataError` naming the folder. Images (218x178) are center-cropped to
178x178, resized to `image_size` (antialiased) and scaled to [0, 1]
float32; attribute booleans become 0/1 labels, every image labelled for
every task. Splits are CelebA's official train/validation/test
(162,770 / 19,867 / 19,962 images); `num_train` etc. keep the first N of
a split (at 64x64, float32 images take 48 KiB each in memory).

Reference:
    Liu, Luo, Wang, Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from keras_branch.checks import check_int
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.errors import DataError
from keras_branch.tasks import BINARY, Task

#: The 40 attributes, in TFDS' order (each is one binary task).
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
SPLITS = ("train", "validation", "test")
#: Images per split of the real CelebA (TFDS' `celeb_a`, the official partition): what
#: a full epoch costs, e.g. for an estimate from a throughput measured on a subset.
SPLIT_SIZES = {"train": 162_770, "validation": 19_867, "test": 19_962}


def default_data_dir() -> str:
    """Where TFDS looks when no `data_dir` is given (`$TFDS_DATA_DIR` or ~/tensorflow_datasets)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _count(value, field: str) -> int | None:
    if value is None:
        return None
    return check_int(value, field, minimum=1, error=DataError)


def load_celeba(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    num_train: int | None = None,
    num_validation: int | None = None,
    num_test: int | None = None,
    attributes: Sequence[str] | None = None,
    download: bool = False,
    batch_size: int = 256,
) -> MultiTaskData:
    """CelebA as a 40-task (or fewer) binary multi-task data set.

    Args:
        data_dir: the TFDS data folder holding `celeb_a/` (default:
            `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        image_size: side of the square images the model sees.
        num_train, num_validation, num_test: keep only the first N images
            of a split (None: all of it).
        attributes: a subset of `CELEBA_ATTRIBUTES` as tasks (default: all 40).
        download: let TFDS download and prepare CelebA (about 1.4 GB) when
            it is missing. Off by default: nothing is fetched unless asked.
        batch_size: images decoded and resized per step while loading.

    Returns:
        `MultiTaskData` named `"celeba"` with one binary `Task` per
        attribute and splits `train`, `validation`, `test`.

    Raises:
        DataError: CelebA is not prepared in `data_dir` (and `download` is
            off), an unknown attribute, a bad size.

    Example (not run as a doctest: needs CelebA prepared in TFDS' `data_dir`):
    >>> data = load_celeba("~/tensorflow_datasets", image_size=64, num_train=20000)  # doctest: +SKIP
    >>> data.task_names[:2]  # doctest: +SKIP
    ['5_o_Clock_Shadow', 'Arched_Eyebrows']
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    check_int(image_size, "image_size", minimum=8, error=DataError)
    names = list(CELEBA_ATTRIBUTES if attributes is None else attributes)
    unknown = [a for a in names if a not in CELEBA_ATTRIBUTES]
    if unknown or not names:
        raise DataError(f"Unknown CelebA attribute(s) {unknown or names}; attributes are "
                        f"{list(CELEBA_ATTRIBUTES)}.")
    counts = {"train": _count(num_train, "num_train"),
              "validation": _count(num_validation, "num_validation"),
              "test": _count(num_test, "num_test")}
    folder = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
    size = int(image_size)

    def prepare(example):
        image = example["image"]
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        image = tf.image.resize_with_crop_or_pad(image, side, side)
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True) / 255.0
        labels = tf.stack([tf.cast(example["attributes"][a], tf.int32) for a in names])
        return tf.clip_by_value(image, 0.0, 1.0), labels

    splits = {}
    for split in SPLITS:
        spec = split if counts[split] is None else f"{split}[:{counts[split]}]"
        try:
            ds = tfds.load("celeb_a", split=spec, data_dir=folder, download=bool(download),
                           shuffle_files=False)
        except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as err:
            where = folder or default_data_dir()
            raise DataError(
                f"CelebA (TFDS 'celeb_a') is not prepared in data_dir={where!r} "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}). Pass download=True "
                f"(--data celeba:download=1) to let TFDS fetch it, or prepare it there yourself."
            ) from None
        if counts[split] is not None:
            ds = ds.take(counts[split])  # the slice already does; mocked data ignores slices
        xs, ys = [], []
        for x, y in ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size):
            xs.append(x.numpy())
            ys.append(y.numpy())
        if not xs:
            raise DataError(f"CelebA split {spec!r} in data_dir={folder or default_data_dir()!r} is empty.")
        x = np.concatenate(xs).astype("float32")
        y = np.concatenate(ys)
        splits[split] = Split(x, {a: y[:, i] for i, a in enumerate(names)})
    tasks = [Task(a, BINARY) for a in names]
    return MultiTaskData(tasks, splits, info={"source": "tfds:celeb_a", "data_dir": folder,
                                              "image_size": size}, name="celeba")
