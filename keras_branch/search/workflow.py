"""The affinity search end to end: probes -> affinity -> tree -> files."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_branch.backbones import Backbone
from keras_branch.data.multitask import MultiTaskData
from keras_branch.plots import plot_affinity, plot_pareto, plot_tree
from keras_branch.search.affinity import task_affinity
from keras_branch.search.result import SearchResult
from keras_branch.search.tree_search import (
    branch,
    pareto_front,
    resolve_budget,
    shared_params,
)


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
) -> SearchResult:
    """Measures task affinity with probes and picks the cheapest tree in budget.

    Args:
        data: multi-task data (`train` for probes, `validation` for the K inputs).
        backbone: the staged backbone the tree will route.
        budget: parameters, or a multiple of the fully shared model (`"2x"`).
        probe_epochs, num_inputs, seed, batch_size: see `task_affinity`.
        method: tree search method, see `branch`.
        log: progress lines (None for silence).

    Returns:
        A `SearchResult` (method `"affinity"`): the chosen tree; scores
        `cost`, `params`, `budget`, `shared_params`, `tree_search`,
        `stage_costs` and `pareto_front`; artifacts `affinity` (the
        `TaskAffinity`), `tree` (the `BranchResult`) and `front` (the Pareto
        front); files `affinity.json`, `affinity.png`, `tree.png`, `pareto.png`.
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
    chosen = next((t for t in front if t.spec == result.spec), None)
    scores = result.to_dict()
    del scores["spec"]
    scores["tree_search"] = scores.pop("method")
    scores["pareto_front"] = [
        {"params": t.params, "cost": t.cost, "blocks_per_stage": t.blocks_per_stage} for t in front
    ]
    files = {
        "affinity.json": affinity.save,
        "affinity.png": lambda path: plot_affinity(affinity, path),
        "tree.png": lambda path: plot_tree(result.spec, path),
        "pareto.png": lambda path: plot_pareto(front, path, chosen=chosen, budget=result.budget),
    }
    return SearchResult("affinity", result.spec, scores,
                        {"affinity": affinity, "tree": result, "front": front}, seconds, files)
