"""The affinity search end to end: probes -> affinity -> tree -> files."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_branch.backbones import Backbone
from keras_branch.data.multitask import MultiTaskData
from keras_branch.files import atomic_path, atomic_write_text
from keras_branch.search.affinity import TaskAffinity, task_affinity
from keras_branch.search.tree_search import (
    BranchResult,
    Tree,
    branch,
    pareto_front,
    resolve_budget,
    shared_params,
)


@dataclasses.dataclass
class AffinitySearchResult:
    """Affinity, the chosen tree and the Pareto front of an affinity search."""

    affinity: TaskAffinity
    result: BranchResult
    front: list[Tree]
    seconds: dict[str, float]


def budget_for_blocks(backbone: Backbone, tasks: Sequence[Any], blocks: Sequence[int]) -> int:
    """Parameters of a tree with `blocks[d]` blocks at stage d (stem and heads included)."""
    if len(blocks) != backbone.num_stages:
        raise ValueError(
            f"`blocks` needs one count per stage ({backbone.num_stages}). Received: {list(blocks)}"
        )
    heads = sum((backbone.feature_size() + 1) * t.units for t in tasks)
    return backbone.stem_params() + heads + sum(
        k * backbone.stage_params(d) for d, k in enumerate(blocks)
    )


def affinity_search(
    data: MultiTaskData,
    backbone: Backbone,
    budget: int | float | str,
    probe_epochs: int = 5,
    num_inputs: int = 256,
    seed: int = 0,
    method: str = "auto",
    batch_size: int = 64,
    log: Callable[[str], None] | None = print,
) -> AffinitySearchResult:
    """Measures task affinity with probes and picks the cheapest tree in budget.

    Args:
        data: multi-task data (`train` for probes, `validation` for the K inputs).
        backbone: the staged backbone the tree will route.
        budget: parameters, or a multiple of the fully shared model (`"2x"`).
        probe_epochs, num_inputs, seed, batch_size: see `task_affinity`.
        method: tree search method, see `branch`.
        log: progress lines (None for silence).

    Returns:
        `AffinitySearchResult`.
    """
    # An impossible budget is an error before minutes of probe training.
    resolve_budget(budget, shared_params(backbone, data.tasks))
    start = time.perf_counter()
    affinity = task_affinity(
        data, backbone, probe_epochs=probe_epochs, num_inputs=num_inputs,
        batch_size=batch_size, seed=seed, log=log,
    )
    probes = time.perf_counter() - start
    if log:
        log(f"tree search ({method}) over {len(affinity.tasks)} tasks, budget {budget} ...")
    result = branch(affinity, backbone, data.tasks, budget, method=method)
    front = pareto_front(affinity, backbone, data.tasks, method=result.method)
    seconds = {"probes": probes, "search": time.perf_counter() - start - probes}
    if log:
        log(f"chosen tree: cost {result.cost:.4f}, {result.params:,} parameters "
            f"(budget {result.budget:,}; fully shared {result.shared_params:,})")
        log(str(result.spec))
    return AffinitySearchResult(affinity, result, front, seconds)


def save_search(out_dir: str | os.PathLike, search: AffinitySearchResult, overwrite: bool = False) -> str:
    """Writes `affinity.json`, `affinity.png`, `tree.json`, `tree.png`,
    `pareto.png` and `search.json` into one folder, atomically."""
    from keras_branch.plots import plot_affinity, plot_pareto, plot_tree

    result = search.result
    chosen = next((t for t in search.front if t.spec == result.spec), None)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        os.makedirs(tmp)
        search.affinity.save(os.path.join(tmp, "affinity.json"))
        result.spec.save(os.path.join(tmp, "tree.json"))
        summary = result.to_dict()
        summary["seconds"] = search.seconds
        summary["pareto_front"] = [
            {"params": t.params, "cost": t.cost, "blocks_per_stage": t.blocks_per_stage}
            for t in search.front
        ]
        atomic_write_text(os.path.join(tmp, "search.json"), json.dumps(summary, indent=2) + "\n")
        plot_affinity(search.affinity, os.path.join(tmp, "affinity.png"))
        plot_tree(result.spec, os.path.join(tmp, "tree.png"))
        plot_pareto(search.front, os.path.join(tmp, "pareto.png"), chosen=chosen, budget=result.budget)
    return os.fspath(out_dir)
