"""Helpers shared by the planted-groups benchmarks (tag_planted.py, forty_tasks.py).

Not a benchmark itself: the machine line printed above a table, a timer that
frees the previous run's objects first, a warm-up that pays TensorFlow's
one-off start-up costs, and the block counts whose budget buys one block per
planted group.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence

from keras_branch import TreeSpec, backbones
from keras_branch.data import planted_groups
from keras_branch.search import tag_affinity
from keras_branch.training import fit_spec
from keras_branch.zoo.cards import cpu_words
from keras_branch.zoo.measure import machine_info


def machine() -> str:
    """The machine in words, with the load average at the start (the CPUs may be shared)."""
    info = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = "no GPU" if info["gpu"] == "none" else f"GPU {info['gpu']}"
    return (f"{cpu_words(info)}, {info['cpu_cores']} cores, {gpu}, shared with other jobs "
            f"(load average {load:.1f} at the start)")


def group_blocks(num_stages: int, group_sizes: Sequence[int]) -> list[int]:
    """One block per stage, one per group at the group stage (the one before the last), one per task at the last.

    Example:
    >>> group_blocks(5, (5,) * 8)
    [1, 1, 1, 8, 40]
    """
    if num_stages < 2:
        raise ValueError(f"A group stage needs at least 2 stages. Received: num_stages={num_stages}")
    return [1] * (num_stages - 2) + [len(group_sizes), sum(group_sizes)]


def timed(function, *args, **kwargs):
    """`(function(*args, **kwargs), seconds)`."""
    # The previous run's objects are freed here, not inside the next timed call.
    gc.collect()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def warm_up() -> None:
    """One tiny TAG run and one tiny fit, so TensorFlow's one-off start-up costs no timed column."""
    data = planted_groups(group_sizes=(2, 2), num_train=64, num_validation=8, num_test=8)
    bb = backbones.mlp(100, (8, 8))
    tag_affinity(data, bb, epochs=1, log=None)
    fit_spec(TreeSpec.shared(data.task_names, 2), bb, data, epochs=1, verbose=0, eval_splits=(),
             log=None)
