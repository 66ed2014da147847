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
  survive to the deeper stages. Used for many tasks (CelebA's 40); 100
  tasks x 4 stages take about 2 s on two cores.

Reference:
    Vandenhende et al., "Branched Multi-Task Networks: Deciding What Layers
    To Share", BMVC 2020 (arXiv 1904.02920).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.errors import SearchError
from keras_branch.search.partitions import (
    Blocks,
    Partition,
    all_partitions,
    bell,
    block_refinements,
    count_block_refinements,
    from_blocks,
    groups,
    lowest_bit,
    members,
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
    for group in groups(partition):
        if len(group) > 1:
            total += float(dissim[np.ix_(group, group)].max())
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
#
# Written for speed (issue 20: 100 tasks x 4 stages at 5x took 12-16 s on two
# cores, 42 s on a loaded machine). The plain version clustered the whole T x T
# matrix again for every state and linkage (75% of the time), turning every
# labelling met on the way into a restricted growth string (a Python loop over
# T tasks: most of that), and took one `np.ix_` per group for every stage cost
# (20%). This one
#   * holds partitions as `Blocks` (group bitmasks), cheap to hash and sort;
#   * clusters each (stage, group, linkage) once: clusters never cross the
#     parent's groups, so a parent's merges are its groups' merges interleaved;
#   * builds only candidates that the budget lets some state take;
#   * caches each group's largest dissimilarity.
# Results equal the plain version's, trees and float costs alike: the same
# candidates in the same order, each stage cost summed group by group in label
# order as `stage_cost` sums it. tests/test_tree_search.py pins its results and
# benchmarks/tree_search.py compares the two on every case it times.

LINKAGES = ("complete", "average", "single")

# One merge of agglomerative clustering: (distance, flat index i * T + j of the
# full T x T matrix, i, j); cluster j joins cluster i, which keeps its index.
Merge = tuple[float, int, int, int]


def _group_merges(dis: np.ndarray, tasks: list[int], linkage: str) -> list[Merge]:
    """The merges of agglomerative clustering of one group of tasks, in order.

    `linkage` decides the distance of merged clusters: "complete" (max, the
    cost's own measure), "average" or "single" (min). Of equal distances the
    first in row-major order merges first, as `np.argmin` takes it; with
    `tasks` ascending that is also the order in the full matrix.
    """
    size = len(tasks)
    dist = dis[np.ix_(tasks, tasks)]  # a copy
    np.fill_diagonal(dist, np.inf)
    weight = np.ones(size)
    merges: list[Merge] = []
    for _ in range(size - 1):
        i, j = divmod(int(dist.argmin()), size)
        value = float(dist[i, j])
        if not math.isfinite(value):
            break
        if linkage == "complete":
            merged = np.maximum(dist[i], dist[j])
        elif linkage == "single":
            merged = np.minimum(dist[i], dist[j])
        else:
            merged = (weight[i] * dist[i] + weight[j] * dist[j]) / (weight[i] + weight[j])
        merged[i] = np.inf
        dist[i, :] = dist[:, i] = merged
        # Cluster j is gone: an all-inf row and column keep it out of every later argmin.
        dist[j, :] = dist[:, j] = np.inf
        weight[i] += weight[j]
        merges.append((value, tasks[i] * dis.shape[0] + tasks[j], tasks[i], tasks[j]))
    return merges


class _Stage:
    """One stage's dissimilarities and the beam's candidates there, with caches."""

    def __init__(self, dis: np.ndarray):
        self.dis = dis
        self.num_tasks = dis.shape[0]
        self._largest: dict[int, float] = {}
        self._merges: dict[tuple[int, str], list[Merge]] = {}

    def cost(self, blocks: Blocks) -> float:
        """`stage_cost` of group bitmasks; the same sum in the same order, so the same float."""
        total = 0.0
        for mask in blocks:
            if mask & (mask - 1):  # two or more tasks; a singleton costs 0
                total += self._largest_dissimilarity(mask)
        return total / len(blocks)

    def _largest_dissimilarity(self, mask: int) -> float:
        if mask not in self._largest:
            tasks = members(mask)
            self._largest[mask] = float(self.dis[np.ix_(tasks, tasks)].max())
        return self._largest[mask]

    def _clustered(self, parent: Blocks, linkage: str, max_groups: int) -> list[Blocks]:
        """Partitions met by agglomeration inside the parent's groups, up to `max_groups` groups.

        From all singletons, one partition per merge (one group fewer each).
        A merge over the whole matrix picks the smallest (distance, flat
        index) of any group's next merge, and merging in one group changes no
        other group's distances: so the whole run is the groups' own runs
        (each cached) interleaved by `heapq.merge` on that key.
        """
        runs = [self._run(mask, linkage) for mask in parent if mask & (mask - 1)]
        clusters = {task: 1 << task for task in range(self.num_tasks)}
        # The partition as a list of masks ordered by lowest task, kept only once it
        # has few enough groups to be a candidate (building it costs O(groups)).
        blocks = list(clusters.values()) if self.num_tasks <= max_groups else None
        found = [] if blocks is None else [tuple(blocks)]
        for _, _, i, j in heapq.merge(*runs):
            a, b = clusters[i], clusters.pop(j)
            clusters[i] = a | b
            if blocks is not None:
                # The union takes the place of whichever part has the lower first task.
                first, second = (a, b) if lowest_bit(a) < lowest_bit(b) else (b, a)
                blocks[blocks.index(first)] = a | b
                blocks.remove(second)
            elif len(clusters) <= max_groups:
                blocks = sorted(clusters.values(), key=lowest_bit)
            else:
                continue
            found.append(tuple(blocks))
        return found

    def _run(self, mask: int, linkage: str) -> list[Merge]:
        key = (mask, linkage)
        if key not in self._merges:
            self._merges[key] = _group_merges(self.dis, members(mask), linkage)
        return self._merges[key]

    def candidates(self, parent: Blocks, max_refinements: int, max_groups: int) -> list[tuple[Blocks, float]]:
        """Refinements of `parent` with at most `max_groups` groups, and their stage costs.

        All refinements when there are at most `max_refinements`, otherwise
        those met by complete, average and single linkage clustering (first
        occurrence order).
        """
        if count_block_refinements(parent) <= max_refinements:
            found = [q for q in block_refinements(parent) if len(q) <= max_groups]
        else:
            unique: dict[Blocks, None] = {}
            for linkage in LINKAGES:
                unique.update(dict.fromkeys(self._clustered(parent, linkage, max_groups)))
            found = list(unique)
        return [(q, self.cost(q)) for q in found]


def _max_groups(budget_left: int | None, per_group: int, num_tasks: int) -> int:
    """The most groups a stage may have when each costs `per_group` parameters."""
    if budget_left is None or (per_group == 0 and budget_left >= 0):
        return num_tasks
    if per_group == 0:
        return 0
    return min(num_tasks, budget_left // per_group)


BeamState = tuple[float, int, tuple[Blocks, ...]]  # (cost, params of the stages so far, partitions)


def _beam_trees(
    dis: np.ndarray,
    sizes: _Sizes,
    budget: int | None,
    beam_width: int,
    max_states: int,
    max_refinements: int,
) -> list[tuple[float, int, tuple[Partition, ...]]]:
    num_stages, num_tasks = dis.shape[0], dis.shape[1]
    root: Blocks = ((1 << num_tasks) - 1,)
    states: list[BeamState] = [(0.0, 0, ())]
    for d in range(num_stages):
        stage = _Stage(dis[d])
        # Deeper stages have at least k blocks each: k groups here fit when
        # fixed + params + k * (this stage + deeper stages) <= budget.
        per_group = sum(sizes.stages[d:])
        limits = [
            _max_groups(None if budget is None else budget - sizes.fixed - params, per_group, num_tasks)
            for _, params, _ in states
        ]
        # A parent's candidates are built once, for the most groups any of its states may take.
        wanted: dict[Blocks, int] = {}
        for (_, _, chain), limit in zip(states, limits):
            parent = chain[-1] if chain else root
            wanted[parent] = max(wanted.get(parent, limit), limit)
        candidates = {
            parent: stage.candidates(parent, max_refinements, limit) for parent, limit in wanted.items()
        }
        # States are distinct chains and a parent's candidates distinct partitions,
        # so every extended chain is new: a list, no dictionary needed.
        expanded: list[BeamState] = []
        for (cost, params, chain), limit in zip(states, limits):
            for q, q_cost in candidates[chain[-1] if chain else root]:
                if len(q) <= limit:
                    expanded.append((cost + q_cost, params + len(q) * sizes.stages[d], chain + (q,)))
        states = _select(expanded, beam_width, max_states)
    return [
        (cost, sizes.fixed + params, tuple(from_blocks(q, num_tasks) for q in chain))
        for cost, params, chain in states
    ]


def _select(states: list[BeamState], beam_width: int, max_states: int) -> list[BeamState]:
    """The `beam_width` cheapest states per parameter count, `max_states` in all.

    Sorts are stable, so equal costs keep the order the states were made in.
    """
    by_params: dict[int, list[BeamState]] = {}
    for state in states:
        by_params.setdefault(state[1], []).append(state)
    ranked = []
    for entries in by_params.values():
        entries.sort(key=lambda e: e[0])
        ranked.extend((rank, state) for rank, state in enumerate(entries[:beam_width]))
    # Round-robin over parameter counts: every count keeps its best first.
    ranked.sort(key=lambda e: (e[0], e[1][0]))
    return [state for _, state in ranked[:max_states]]


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
