"""Budgeted tree search over task affinities ("Branched Multi-Task Networks").

A tree is a sequence of partitions P_1..P_D of the tasks, each nested in the
one before. With dissimilarity `1 - A[d]`, the cost of stage d is

    C_d = (1 / |P_d|) * sum over groups g of max over (i, j) in g of (1 - A[d, i, j])

(complete linkage; a singleton costs 0) and a tree costs `sum_d C_d`. Its
parameters are stem + sum_d |P_d| * params(stage d) + heads. `branch` returns
the cheapest tree within a parameter budget.

Two methods:

* `"exhaustive"`: exact. A dynamic program over all partitions keeps, for each
  (stage, partition), the Pareto front of (parameters, cost) over the deeper
  stages, so it equals enumerating every tree; feasible up to about 8 tasks.
* `"beam"`: beam search over stages. A state's candidate refinements are all
  of its refinements when there are at most `max_refinements`, otherwise the
  partitions met by agglomerative clustering (complete, average and single
  linkage) of the stage's dissimilarities inside the parent groups. States are
  kept per parameter count (the `beam_width` cheapest each, at most
  `max_states` in all), so cheap-but-large and dear-but-small trees both
  survive to the deeper stages. Used for many tasks (CelebA's 40).

Reference:
    Vandenhende et al., "Branched Multi-Task Networks: Deciding What Layers
    To Share", BMVC 2020 (arXiv 1904.02920).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.errors import SearchError
from keras_branch.search.partitions import (
    Partition,
    all_partitions,
    bell,
    canonical,
    count_refinements,
    groups,
    num_groups,
    refinements,
)
from keras_branch.spec import TreeSpec
from keras_branch.tasks import Task, as_tasks

EXHAUSTIVE_MAX_TASKS = 8


@dataclasses.dataclass(frozen=True)
class Tree:
    """One candidate tree: its partitions, cost and parameter count."""

    partitions: tuple[Partition, ...]
    cost: float
    params: int
    task_names: tuple[str, ...]

    @property
    def spec(self) -> TreeSpec:
        routes = {name: [p[t] for p in self.partitions] for t, name in enumerate(self.task_names)}
        return TreeSpec(list(self.task_names), routes)

    @property
    def blocks_per_stage(self) -> list[int]:
        return [num_groups(p) for p in self.partitions]


@dataclasses.dataclass
class BranchResult:
    """What `branch` returns.

    Attributes:
        spec: the chosen tree as a TreeSpec (tasks in affinity order).
        cost: its tree cost (lower is better).
        params: its parameter count (== the built model's `count_params()`).
        budget: the budget in parameters.
        shared_params: parameters of the fully shared model.
        method: `"exhaustive"` or `"beam"`.
        stage_costs: C_d of each stage.
    """

    spec: TreeSpec
    cost: float
    params: int
    budget: int
    shared_params: int
    method: str
    stage_costs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(), "cost": self.cost, "params": self.params,
            "budget": self.budget, "shared_params": self.shared_params,
            "method": self.method, "stage_costs": self.stage_costs,
        }


# === Costs ===


def dissimilarity(affinity: np.ndarray) -> np.ndarray:
    """1 - A, checked: shape [D, T, T], finite."""
    a = np.asarray(affinity, dtype="float64")
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[0] < 1 or a.shape[1] < 1:
        raise SearchError(
            f"The affinity tensor must have shape [stages, tasks, tasks]. Received shape {a.shape}."
        )
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise SearchError(
            f"The affinity tensor has a non-finite value {a[tuple(bad)]} at "
            f"[stage {bad[0]}, task {bad[1]}, task {bad[2]}]."
        )
    return 1.0 - a


def stage_cost(dissim: np.ndarray, partition: Partition) -> float:
    """C_d of one stage: mean over groups of the group's largest dissimilarity."""
    total = 0.0
    for members in groups(partition):
        if len(members) > 1:
            total += float(dissim[np.ix_(members, members)].max())
    return total / num_groups(partition)


def tree_cost(affinity: np.ndarray, partitions: Sequence[Partition]) -> float:
    """Sum of the stage costs of a tree."""
    dis = dissimilarity(affinity)
    return sum(stage_cost(dis[d], p) for d, p in enumerate(partitions))


# === Budgets and parameter counts ===


@dataclasses.dataclass(frozen=True)
class _Sizes:
    fixed: int  # stem + heads
    stages: tuple[int, ...]

    def params(self, blocks: Sequence[int]) -> int:
        return self.fixed + sum(k * p for k, p in zip(blocks, self.stages))

    @property
    def shared(self) -> int:
        return self.params([1] * len(self.stages))


def _sizes(backbone: Backbone, tasks: Sequence[Task]) -> _Sizes:
    heads = sum((backbone.feature_size() + 1) * t.units for t in tasks)
    return _Sizes(
        backbone.stem_params() + heads,
        tuple(backbone.stage_params(d) for d in range(backbone.num_stages)),
    )


def shared_params(backbone: Backbone, tasks: Sequence[Task]) -> int:
    """Parameters of the fully shared model (one block per stage): the smallest tree."""
    return _sizes(backbone, as_tasks(tasks)).shared


def resolve_budget(budget: int | float | str, shared_params: int) -> int:
    """A budget in parameters from an int or a multiple such as `"2x"`.

    Args:
        budget: parameters (int or float >= 1), or a string: `"150000"`,
            `"2x"` / `"2.5x"` (multiples of the fully shared model).
        shared_params: parameters of the fully shared model.
    """
    value: float
    if isinstance(budget, str):
        text = budget.strip().lower()
        try:
            if text.endswith("x"):
                value = float(text[:-1]) * shared_params
            else:
                value = float(text)
        except ValueError:
            raise SearchError(
                f"`budget` must be a parameter count or a multiple like '2x'. Received: {budget!r}"
            ) from None
    elif isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise SearchError(f"`budget` must be a number or a string like '2x'. Received: {budget!r}")
    else:
        value = float(budget)
    if not math.isfinite(value):
        raise SearchError(f"`budget` must be finite. Received: {budget!r}")
    if value < shared_params:
        raise SearchError(
            f"No tree fits `budget`={budget!r} ({int(value):,} parameters): the fully "
            f"shared model, the smallest tree, has {shared_params:,}."
        )
    return int(value)


# === Exhaustive (exact) search ===


def _exhaustive_trees(dis: np.ndarray, sizes: _Sizes) -> list[tuple[float, int, tuple[Partition, ...]]]:
    """The Pareto front (cost, params, partitions) over every tree, exactly."""
    num_stages, num_tasks = dis.shape[0], dis.shape[1]
    parts = list(all_partitions(num_tasks))
    index = {p: i for i, p in enumerate(parts)}
    children = [[index[q] for q in refinements(p)] for p in parts]
    blocks = [num_groups(p) for p in parts]
    # front[i] maps params-of-stages-d..D -> (cost, child index, child params).
    front: list[dict[int, tuple[float, int, int]]] = []
    for i, p in enumerate(parts):
        front.append({blocks[i] * sizes.stages[-1]: (stage_cost(dis[-1], p), -1, -1)})
    fronts = [front]
    for d in range(num_stages - 2, -1, -1):
        deeper = fronts[0]
        current: list[dict[int, tuple[float, int, int]]] = []
        for i, p in enumerate(parts):
            own_params = blocks[i] * sizes.stages[d]
            own_cost = stage_cost(dis[d], p)
            best: dict[int, tuple[float, int, int]] = {}
            for j in children[i]:
                for params, (cost, _, _) in deeper[j].items():
                    total = own_params + params
                    value = own_cost + cost
                    if total not in best or value < best[total][0]:
                        best[total] = (value, j, params)
            current.append(_pareto(best))
        fronts.insert(0, current)
    trees = []
    for i in range(len(parts)):
        for params, (cost, _, _) in fronts[0][i].items():
            chain, j, rest = [parts[i]], i, params
            for d in range(num_stages - 1):
                _, j, rest = fronts[d][j][rest]
                chain.append(parts[j])
            trees.append((cost, sizes.fixed + params, tuple(chain)))
    return trees


def _pareto(points: dict[int, tuple]) -> dict[int, tuple]:
    """Keeps entries whose cost beats every entry with fewer parameters."""
    kept: dict[int, tuple] = {}
    best = math.inf
    for params in sorted(points):
        if points[params][0] < best - 1e-12:
            kept[params] = points[params]
            best = points[params][0]
    return kept


# === Beam search ===


def _clustering_refinements(dis: np.ndarray, parent: Partition, linkage: str = "complete") -> list[Partition]:
    """Agglomeration inside parent groups: one partition per group count.

    `linkage` decides the distance of merged clusters: "complete" (max, the
    cost's own measure), "average" or "single" (min).
    """
    n = len(parent)
    labels = list(range(n))
    dist = dis.astype("float64").copy()
    np.fill_diagonal(dist, np.inf)
    same_parent = np.equal.outer(parent, parent)
    dist[~same_parent] = np.inf
    active = np.ones(n, dtype=bool)
    size = np.ones(n)
    found = [canonical(labels)]
    for _ in range(n - num_groups(parent)):
        masked = np.where(np.outer(active, active), dist, np.inf)
        flat = int(np.argmin(masked))
        i, j = divmod(flat, n)
        if not np.isfinite(masked[i, j]):
            break
        if linkage == "complete":
            merged = np.maximum(dist[i], dist[j])
        elif linkage == "single":
            merged = np.minimum(dist[i], dist[j])
        else:
            merged = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
        merged[~same_parent[i]] = np.inf
        dist[i, :], dist[:, i] = merged, merged
        dist[i, i] = np.inf
        size[i] += size[j]
        active[j] = False
        labels = [i if label == j else label for label in labels]
        found.append(canonical(labels))
    return found


def _candidates(dis: np.ndarray, parent: Partition, max_refinements: int) -> list[Partition]:
    if count_refinements(parent) <= max_refinements:
        return list(refinements(parent))
    found: dict[Partition, None] = {}
    for linkage in ("complete", "average", "single"):
        found.update(dict.fromkeys(_clustering_refinements(dis, parent, linkage)))
    return list(found)


def _beam_trees(
    dis: np.ndarray,
    sizes: _Sizes,
    budget: int | None,
    beam_width: int,
    max_states: int,
    max_refinements: int,
) -> list[tuple[float, int, tuple[Partition, ...]]]:
    num_stages, num_tasks = dis.shape[0], dis.shape[1]
    root: Partition = (0,) * num_tasks
    # state: partitions so far -> (cost, params of stages so far)
    states: dict[tuple[Partition, ...], tuple[float, int]] = {(): (0.0, 0)}
    for d in range(num_stages):
        later = sum(sizes.stages[d + 1:])
        expanded: dict[tuple[Partition, ...], tuple[float, int]] = {}
        for chain, (cost, params) in states.items():
            parent = chain[-1] if chain else root
            for q in _candidates(dis[d], parent, max_refinements):
                k = num_groups(q)
                total = params + k * sizes.stages[d]
                # Deeper stages have at least k blocks each: prune what cannot fit.
                if budget is not None and sizes.fixed + total + k * later > budget:
                    continue
                key = chain + (q,)
                value = cost + stage_cost(dis[d], q)
                if key not in expanded or value < expanded[key][0]:
                    expanded[key] = (value, total)
        states = _select(expanded, beam_width, max_states)
    return [(cost, sizes.fixed + params, chain) for chain, (cost, params) in states.items()]


def _select(states: dict, beam_width: int, max_states: int) -> dict:
    by_params: dict[int, list] = {}
    for chain, (cost, params) in states.items():
        by_params.setdefault(params, []).append((cost, chain))
    ranked = []
    for params, entries in by_params.items():
        entries.sort(key=lambda e: e[0])
        for rank, (cost, chain) in enumerate(entries[:beam_width]):
            ranked.append((rank, cost, params, chain))
    # Round-robin over parameter counts: every count keeps its best first.
    ranked.sort(key=lambda e: (e[0], e[1]))
    return {chain: (cost, params) for _, cost, params, chain in ranked[:max_states]}


# === Public API ===


def _prepare(affinity: Any, backbone: Backbone, tasks: Sequence[Task]) -> tuple[np.ndarray, list[Task], _Sizes]:
    values = getattr(affinity, "values", affinity)
    names = getattr(affinity, "tasks", None)
    dis = dissimilarity(values)
    task_list = as_tasks(tasks)
    if names is not None:
        by_name = {t.name: t for t in task_list}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SearchError(f"Affinity tasks {missing} are not in `tasks` {list(by_name)}.")
        task_list = [by_name[n] for n in names]
    if dis.shape[1] != len(task_list):
        raise SearchError(
            f"The affinity tensor covers {dis.shape[1]} tasks but {len(task_list)} tasks were given."
        )
    if dis.shape[0] != backbone.num_stages:
        raise SearchError(
            f"The affinity tensor has {dis.shape[0]} stage(s) but backbone "
            f"{backbone.name!r} has {backbone.num_stages}."
        )
    return dis, task_list, _sizes(backbone, task_list)


def _resolve_method(method: str, num_tasks: int) -> str:
    if method == "auto":
        return "exhaustive" if num_tasks <= EXHAUSTIVE_MAX_TASKS else "beam"
    if method not in ("exhaustive", "beam"):
        raise SearchError(f"`method` must be 'auto', 'exhaustive' or 'beam'. Received: {method!r}")
    if method == "exhaustive" and num_tasks > EXHAUSTIVE_MAX_TASKS:
        raise SearchError(
            f"Exhaustive search over {num_tasks} tasks means Bell({num_tasks}) = "
            f"{bell(num_tasks):,} partitions per stage; use method='beam'."
        )
    return method


def _trees(dis, sizes, budget, method, beam_width, max_states, max_refinements):
    if method == "exhaustive":
        trees = _exhaustive_trees(dis, sizes)
        return [t for t in trees if budget is None or t[1] <= budget]
    return _beam_trees(dis, sizes, budget, beam_width, max_states, max_refinements)


def branch(
    affinity: Any,
    backbone: Backbone,
    tasks: Sequence[Task],
    budget: int | float | str,
    method: str = "auto",
    beam_width: int = 32,
    max_states: int = 400,
    max_refinements: int = 1000,
) -> BranchResult:
    """The cheapest tree (nested partitions) within a parameter budget.

    Args:
        affinity: a `TaskAffinity` or an array [stages, tasks, tasks] of
            affinities A (dissimilarity is 1 - A).
        backbone: the backbone whose stages the tree routes (parameter counts).
        tasks: the tasks, in the affinity's order (or any order when
            `affinity` is a `TaskAffinity`, which names its tasks).
        budget: parameters, or a multiple of the fully shared model (`"2x"`).
        method: `"auto"` (exhaustive up to 8 tasks, beam beyond),
            `"exhaustive"` or `"beam"`.
        beam_width: states kept per parameter count (beam).
        max_states: states kept per stage in all (beam).
        max_refinements: a state's refinements are enumerated up to this
            many, generated by clustering beyond (beam).

    Returns:
        `BranchResult`; ties in cost go to the smaller tree.

    Example (two clear pairs of tasks; a budget of 2x the shared model):
    >>> tasks = [Task(name, "regression") for name in ("a", "b", "c", "d")]
    >>> affinity = np.ones((3, 4, 4))
    >>> affinity[1:, :2, 2:] = affinity[1:, 2:, :2] = 0.0   # {a, b} and {c, d} differ
    >>> result = branch(affinity, backbones.mlp(100), tasks, budget="2x")
    >>> result.spec.partition(1)
    [['a', 'b'], ['c', 'd']]
    """
    dis, task_list, sizes = _prepare(affinity, backbone, tasks)
    limit = resolve_budget(budget, sizes.shared)
    method = _resolve_method(method, len(task_list))
    trees = _trees(dis, sizes, limit, method, beam_width, max_states, max_refinements)
    if not trees:
        raise SearchError(f"No tree found within budget {limit:,}.")
    cost, params, chain = min(trees, key=lambda t: (round(t[0], 12), t[1]))
    tree = Tree(chain, cost, params, tuple(t.name for t in task_list))
    return BranchResult(
        spec=tree.spec, cost=cost, params=params, budget=limit, shared_params=sizes.shared,
        method=method, stage_costs=[stage_cost(dis[d], p) for d, p in enumerate(chain)],
    )


def pareto_front(
    affinity: Any,
    backbone: Backbone,
    tasks: Sequence[Task],
    method: str = "auto",
    beam_width: int = 32,
    max_states: int = 400,
    max_refinements: int = 1000,
) -> list[Tree]:
    """Trees no other tree beats in both parameters and cost, by parameters.

    Each entry is the cheapest tree at its parameter count among those
    found; the budget that buys it is its `params`.
    """
    dis, task_list, sizes = _prepare(affinity, backbone, tasks)
    method = _resolve_method(method, len(task_list))
    trees = _trees(dis, sizes, None, method, beam_width, max_states, max_refinements)
    best: dict[int, tuple[float, tuple[Partition, ...]]] = {}
    for cost, params, chain in trees:
        if params not in best or cost < best[params][0]:
            best[params] = (cost, chain)
    names = tuple(t.name for t in task_list)
    front = _pareto({p: v for p, v in best.items()})
    return [Tree(chain, cost, params, names) for params, (cost, chain) in sorted(front.items())]
