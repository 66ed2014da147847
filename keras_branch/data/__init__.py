"""Data for multi-task training: synthetic planted groups, Omniglot, CelebA, batching."""

from keras_branch.data.arrays import load_npz, save_npz
from keras_branch.data.celeba import CELEBA_ATTRIBUTES, load_celeba
from keras_branch.data.loading import load_data
from keras_branch.data.multitask import (
    MultiTaskData,
    Split,
    merge_tasks,
    pool_tasks,
    validate_labels,
)
from keras_branch.data.omniglot import load_omniglot
from keras_branch.data.planted import planted_groups

__all__ = [
    "CELEBA_ATTRIBUTES",
    "MultiTaskData",
    "Split",
    "load_data",
    "load_celeba",
    "load_npz",
    "load_omniglot",
    "merge_tasks",
    "pool_tasks",
    "planted_groups",
    "save_npz",
    "validate_labels",
]
