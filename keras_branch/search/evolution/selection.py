"""Parent selection and scoring: which path a candidate grows from, and what it is worth.

- `select_parent`: the population ranked by score (best first; paths not
  scored on this task yet last, in random order), each accepted in turn with
  probability `0.5 ** children` (its number of children so far); when none
  is accepted, one drawn uniformly.
- `score`: `quality * scale ** (accounted_params / root_params)`.
- `quality`: accuracy, or `1 / (1 + mse)` for a regression task.
- `candidate_rng`: the generator of one candidate, made from the run's seed
  and the candidate's place in the search, so a resumed run draws the same.
- `finalists`: the best entries of a visit's population with distinct
  structures, which the final training then ranks again.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from keras_branch.tasks import REGRESSION, Task

__all__ = ["candidate_rng", "finalists", "quality", "score", "select_parent"]


def candidate_rng(*keys: Any) -> np.random.Generator:
    """A generator made from `keys` alone (e.g. seed, pass, task, candidate).

    Args:
        *keys: values whose `str` names the stream.

    Returns:
        A new `np.random.Generator`; the same keys give the same draws.

    Example:
    >>> candidate_rng(0, 1, "Latin", 3).random() == candidate_rng(0, 1, "Latin", 3).random()
    True
    """
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def select_parent(population: list[dict], rng: np.random.Generator) -> dict:
    """Draws the parent of the next candidate.

    The entries are ranked by `score`, best first; entries whose score is
    None (not scored on this task yet) come last in an order drawn from
    `rng`. Walking down the ranking, each entry is accepted with probability
    `0.5 ** entry["children"]`; if none is, one is drawn uniformly. So with
    acceptance probabilities `a_1, a_2, ...` in ranked order and `n` entries,
    entry `k` is chosen with probability
    `a_k * prod_{j<k} (1 - a_j) + prod_j (1 - a_j) / n`.

    Args:
        population: dicts with at least `score` (float or None) and
            `children` (int); not modified.
        rng: every draw comes from it.

    Returns:
        The chosen entry (the same object as in `population`).

    Example:
    >>> select_parent([{"score": 0.9, "children": 0}, {"score": None, "children": 0}],
    ...               np.random.default_rng(0))["score"]
    0.9

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet): parents accepted with
        probability `0.5 ** children`, falling back to a random one.
    """
    shuffled = [population[i] for i in rng.permutation(len(population))]
    ranked = sorted(shuffled, key=lambda e: -math.inf if e["score"] is None else e["score"],
                    reverse=True)
    for entry in ranked:
        if rng.random() < 0.5 ** entry["children"]:
            return entry
    return ranked[int(rng.integers(len(ranked)))]


def finalists(population: list[dict], count: int,
              shared: Callable[[int, int], bool]) -> list[dict]:
    """The `count` best scored entries whose paths differ in structure, best first.

    A path's structure is its depth, per used stage the shared block it
    reads (or "own" for a block the task trains: a clone made in this
    visit) and its adapter sizes; hyperparameters do not count. Of entries
    with one structure only the best scored is kept (ties: the earlier
    entry), so the finalists are different paths, not one path trained by
    two lineages.

    Why: candidates are ranked on a small validation split after a few
    epochs, and a child without mutation continues its parent's training,
    so a cheap path retrained over generations can tie or beat a larger one
    trained once. Training the best distinct paths long and ranking them
    again is successive halving's last round (Jamieson & Talwalkar, 2016).

    Args:
        population: entries with `score` (None: not scored, skipped) and
            `path` (`TaskPath.to_dict()`); not modified.
        count: at most how many to return (>= 1).
        shared: `shared(stage, block)`: whether block `block` of `stage`
            is one the system holds already (not the task's own).

    Returns:
        Up to `count` entries (the same objects), by score, best first.

    Example:
    >>> frozen = {"route": [0, 0], "depth": 2, "adapters": [0, 0]}
    >>> clone = {"route": [0, 5], "depth": 2, "adapters": [0, 0]}
    >>> population = [{"id": "a", "score": 0.9, "path": frozen},
    ...               {"id": "b", "score": 0.9, "path": frozen},
    ...               {"id": "c", "score": 0.8, "path": clone}]
    >>> [e["id"] for e in finalists(population, 2, lambda d, b: b == 0)]
    ['a', 'c']
    """
    def structure(path: Mapping[str, Any]) -> tuple:
        depth = int(path["depth"])
        blocks = tuple(b if shared(d, b) else "own" for d, b in enumerate(path["route"][:depth]))
        return depth, blocks, tuple(path["adapters"][:depth])

    scored = [e for e in population if e["score"] is not None]
    ranked = sorted(scored, key=lambda e: e["score"], reverse=True)  # stable: ties keep order
    chosen: list[dict] = []
    seen: set[tuple] = set()
    for entry in ranked:
        key = structure(entry["path"])
        if key not in seen:
            seen.add(key)
            chosen.append(entry)
        if len(chosen) == count:
            break
    return chosen


def quality(task: Task, metrics: Mapping[str, float]) -> float:
    """A candidate's quality on `task`: accuracy, or `1 / (1 + mse)` for regression.

    Args:
        task: the task.
        metrics: its validation metrics (`accuracy`, or `mse` for regression).

    Returns:
        A number in [0, 1]; higher is better. A candidate whose training
        diverged (NaN mse) has quality 0, the worst, so no NaN reaches a
        score, the search state or `evolution.json` (strict JSON).

    Example:
    >>> quality(Task("t", "regression"), {"mse": 1.0})
    0.5
    >>> quality(Task("t", "regression"), {"mse": float("nan")})
    0.0
    """
    if task.kind == REGRESSION:
        mse = float(metrics["mse"])
        return 0.0 if math.isnan(mse) else 1.0 / (1.0 + mse)
    return float(metrics["accuracy"])


def score(quality: float, params: float, root_params: float, scale: float) -> float:
    """muNet's score: `quality * scale ** (params / root_params)`.

    Args:
        quality: the candidate's quality (`quality`).
        params: parameters accounted to the task (shared components divided
            by their users; `EvolvedSystem.accounted_params`).
        root_params: parameters of the root, the unit of the size term.
        scale: the scale-control factor s in (0, 1]; smaller favours fewer
            parameters.

    Returns:
        The score; higher is better.

    Example:
    >>> score(0.8, 3000, 1000, 0.5)
    0.1

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """
    return quality * scale ** (params / root_params)
