"""The affinity search end to end: probes -> affinity -> tree -> files."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_branch.backbones import Backbone
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.plots import plot_affinity, plot_pareto, plot_tree
from keras_branch.search.affinity import task_affinity
from keras_branch.search.result import SearchResult
from keras_branch.search.tag import tag_affinity
from keras_branch.search.tree_search import (
    branch,
    pareto_front,
    resolve_budget,
    shared_params,
)


#: How `affinity_search` can measure task affinity, and its phase name in `seconds`.
AFFINITY_METHODS = ("rsa", "tag")
AFFINITY_PHASE = {"rsa": "probes", "tag": "tag"}


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
    affinity: str = "rsa",
    epochs: int = 10,
    learning_rate: float = 1e-3,
    every: int = 10,
    lookahead_lr: float | None = None,
    strategy: Any = None,
) -> SearchResult:
    """Measures task affinity (RSA probes or TAG) and picks the cheapest tree in budget.

    Args:
        data: multi-task data (`train` for probes, `validation` for the K inputs).
        backbone: the staged backbone the tree will route.
        budget: parameters, or a multiple of the fully shared model (`"2x"`).
        probe_epochs, num_inputs: RSA only, see `task_affinity`.
        seed, batch_size: see `task_affinity` and `tag_affinity`.
        method: tree search method, see `branch`.
        log: progress lines (None for silence).
        affinity: how affinity is measured: `"rsa"` (one probe network per
            task, `task_affinity`) or `"tag"` (lookahead steps during one
            training of the fully shared model, `tag_affinity`).
        epochs, learning_rate, every, lookahead_lr, strategy: TAG only, see
            `tag_affinity`.

    Returns:
        A `SearchResult` (method `"affinity"`): the chosen tree; scores
        `cost`, `params`, `budget`, `shared_params`, `tree_search`,
        `affinity_method`, `stage_costs` and `pareto_front`; artifacts
        `affinity` (the `TaskAffinity`, whose `info["method"]` is `affinity`),
        `tree` (the `BranchResult`) and `front` (the Pareto front); files
        `affinity.json`, `affinity.png`, `tree.png`, `pareto.png`; seconds
        `probes` (RSA) or `tag` (TAG), and `search`.

    Raises:
        SearchError: an unknown `affinity`, an impossible budget, or a task
            without any labelled training sample (refused, not skipped: see
            `task_affinity`), before any probe or TAG training starts.
    """
    if affinity not in AFFINITY_METHODS:
        raise SearchError(f"`affinity` must be one of {list(AFFINITY_METHODS)}. "
                          f"Received: affinity={affinity!r}")
    # An impossible budget is an error before minutes of probe training.
    resolve_budget(budget, shared_params(backbone, data.tasks))
    start = time.perf_counter()
    if affinity == "tag":
        measured = tag_affinity(
            data, backbone, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            every=every, lookahead_lr=lookahead_lr, seed=seed, strategy=strategy, log=log,
        )
    else:
        measured = task_affinity(
            data, backbone, probe_epochs=probe_epochs, num_inputs=num_inputs,
            batch_size=batch_size, seed=seed, log=log,
        )
        measured.info["method"] = "rsa"
    affinity_seconds = time.perf_counter() - start
    if log:
        log(f"tree search ({method}) over {len(measured.tasks)} tasks, budget {budget} ...")
    result = branch(measured, backbone, data.tasks, budget, method=method)
    front = pareto_front(measured, backbone, data.tasks, method=result.method)
    seconds = {AFFINITY_PHASE[affinity]: affinity_seconds,
               "search": time.perf_counter() - start - affinity_seconds}
    if log:
        log(f"chosen tree: cost {result.cost:.4f}, {result.params:,} parameters "
            f"(budget {result.budget:,}; fully shared {result.shared_params:,})")
        log(str(result.spec))
    chosen = next((t for t in front if t.spec == result.spec), None)
    scores = result.to_dict()
    del scores["spec"]
    scores["tree_search"] = scores.pop("method")
    scores["affinity_method"] = affinity
    scores["pareto_front"] = [
        {"params": t.params, "cost": t.cost, "blocks_per_stage": t.blocks_per_stage} for t in front
    ]
    files = {
        "affinity.json": measured.save,
        "affinity.png": lambda path: plot_affinity(measured, path),
        "tree.png": lambda path: plot_tree(result.spec, path),
        "pareto.png": lambda path: plot_pareto(front, path, chosen=chosen, budget=result.budget),
    }
    return SearchResult("affinity", result.spec, scores,
                        {"affinity": measured, "tree": result, "front": front}, seconds, files)
