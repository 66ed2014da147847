"""Set partitions of tasks: enumeration, refinement, and agreement scores.

A partition of T tasks is written as a restricted growth string: a tuple of
T group labels where the first task is in group 0 and each new group takes
the next label (`(0, 0, 1, 0, 2)`). That form is canonical, so equal
partitions are equal tuples.

The beam search works on a second canonical form, `Blocks`: a tuple of group
bitmasks (bit t set = task t in the group) ordered by each group's lowest
task, which is the order of the string's labels (`(0, 0, 1, 0, 2)` is
`(0b1011, 0b100, 0b10000)`). Hashing or comparing it costs one int per group
rather than one per task.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np

Partition = tuple[int, ...]
Blocks = tuple[int, ...]


def canonical(labels: Sequence[int]) -> Partition:
    """The restricted growth string of any labelling."""
    relabel: dict[int, int] = {}
    return tuple(relabel.setdefault(int(v), len(relabel)) for v in labels)


def num_groups(partition: Partition) -> int:
    return max(partition) + 1 if partition else 0


def groups(partition: Partition) -> list[list[int]]:
    """Task indices of each group, in label order."""
    result: list[list[int]] = [[] for _ in range(num_groups(partition))]
    for task, label in enumerate(partition):
        result[label].append(task)
    return result


def all_partitions(n: int) -> Iterator[Partition]:
    """Every partition of n items (Bell(n) of them), as restricted growth strings."""
    if n == 0:
        yield ()
        return

    def extend(prefix: list[int], top: int) -> Iterator[Partition]:
        if len(prefix) == n:
            yield tuple(prefix)
            return
        for label in range(top + 2):
            prefix.append(label)
            yield from extend(prefix, max(top, label))
            prefix.pop()

    yield from extend([0], 0)


@functools.cache  # the beam search asks for the same few sizes again and again
def bell(n: int) -> int:
    """Number of partitions of n items."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]


def refines(fine: Partition, coarse: Partition) -> bool:
    """True when every group of `fine` lies inside one group of `coarse`."""
    parent: dict[int, int] = {}
    return all(parent.setdefault(f, c) == c for f, c in zip(fine, coarse))


def refinements(coarse: Partition) -> Iterator[Partition]:
    """Every partition nested in `coarse` (each of its groups split any way)."""
    parts = groups(coarse)

    def split(index: int, labels: list[int], used: int) -> Iterator[Partition]:
        if index == len(parts):
            yield canonical(labels)
            return
        members = parts[index]
        for sub in all_partitions(len(members)):
            for task, label in zip(members, sub):
                labels[task] = used + label
            yield from split(index + 1, labels, used + num_groups(sub))

    yield from split(0, [0] * len(coarse), 0)


def count_refinements(coarse: Partition) -> int:
    return math.prod(bell(len(g)) for g in groups(coarse))


# === Partitions as group bitmasks ===


def lowest_bit(mask: int) -> int:
    """The lowest set bit of a group mask (its first task, as a power of two): the sort key of `Blocks`."""
    return mask & -mask


def to_blocks(partition: Partition, tasks: Sequence[int] | None = None) -> Blocks:
    """The group bitmasks of a restricted growth string, in label order.

    `tasks` names the task of each label (default: label i belongs to task i).
    """
    masks = [0] * num_groups(partition)
    for task, label in zip(range(len(partition)) if tasks is None else tasks, partition):
        masks[label] |= 1 << task
    return tuple(masks)


def from_blocks(blocks: Blocks, num_tasks: int) -> Partition:
    """The restricted growth string of group bitmasks ordered by lowest task."""
    labels = [0] * num_tasks
    for label, mask in enumerate(blocks):
        for task in members(mask):
            labels[task] = label
    return tuple(labels)


def members(mask: int) -> list[int]:
    """Task indices of one group mask, ascending."""
    return [task for task, bit in enumerate(reversed(bin(mask)[2:])) if bit == "1"]


def count_block_refinements(coarse: Blocks) -> int:
    """`count_refinements` of a partition given as group bitmasks."""
    return math.prod(bell(mask.bit_count()) for mask in coarse)


def block_refinements(coarse: Blocks) -> Iterator[Blocks]:
    """`refinements` of group bitmasks, as group bitmasks and in the same order.

    `refinements` varies the split of the first group slowest and splits each
    group in `all_partitions` order; `itertools.product` over the groups'
    splits has that order.
    """
    splits = []
    for mask in coarse:
        tasks = members(mask)
        splits.append([to_blocks(sub, tasks) for sub in all_partitions(len(tasks))])
    for combination in itertools.product(*splits):
        yield tuple(sorted(itertools.chain.from_iterable(combination), key=lowest_bit))


def adjusted_rand_index(a: Sequence[int], b: Sequence[int]) -> float:
    """Adjusted Rand index of two labellings of the same items (1.0 = identical).

    Reference:
        Hubert & Arabie, "Comparing partitions", Journal of Classification 1985.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Labellings must be 1-D of equal length. Received {a.shape} and {b.shape}.")
    n = len(a)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    total = n * (n - 1) / 2
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:  # both trivial (all one group, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


def labels_from_groups(names: Sequence[str], grouping: Sequence[Sequence[str]]) -> list[int]:
    """Group label of each name, from a list of groups of names."""
    where = {name: g for g, members in enumerate(grouping) for name in members}
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(f"Names {missing} are in no group.")
    return [where[n] for n in names]
