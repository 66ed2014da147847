"""PNG drawings: affinity heatmaps, the Pareto front, a tree.

matplotlib is imported lazily with the Agg backend, so importing keras_branch
never needs a display; every file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keras_branch.files import atomic_path

if TYPE_CHECKING:
    from keras_branch.search.affinity import TaskAffinity
    from keras_branch.search.tree_search import Tree
    from keras_branch.spec import TreeSpec


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_affinity(affinity: TaskAffinity, path: str | os.PathLike) -> None:
    """One heatmap per stage; tasks ordered so that similar tasks sit together."""
    plt = _pyplot()
    order = affinity.order()
    names = [affinity.tasks[i] for i in order]
    stages = affinity.num_stages
    size = max(3.0, 0.28 * len(names) + 1.5)
    fig, axes = plt.subplots(1, stages, figsize=(size * stages, size), squeeze=False)
    for d, ax in enumerate(axes[0]):
        values = affinity.values[d][order][:, order]
        image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"stage {d + 1}")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names if d == 0 else [], fontsize=7)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="affinity (Spearman of RDMs)")
    _save(fig, path)


def plot_pareto(
    front: Sequence[Tree],
    path: str | os.PathLike,
    chosen: Tree | None = None,
    budget: int | None = None,
) -> None:
    """Parameters against tree cost for the Pareto-optimal trees."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step([t.params for t in front], [t.cost for t in front], where="post", color="0.6")
    ax.scatter([t.params for t in front], [t.cost for t in front], s=14, label="Pareto-optimal trees")
    if chosen is not None:
        ax.scatter([chosen.params], [chosen.cost], s=60, color="crimson", label="chosen tree", zorder=3)
    if budget is not None:
        ax.axvline(budget, color="crimson", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel("parameters")
    ax.set_ylabel("tree cost (sum of stage costs)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_tree(spec: TreeSpec, path: str | os.PathLike) -> None:
    """The tree drawn top-down: one row per stage, one box per block, tasks at the leaves."""
    plt = _pyplot()
    tasks = spec.tasks
    # Leaves ordered so that tasks sharing deep blocks stand together.
    order = sorted(tasks, key=lambda t: tuple(spec.route(t)))
    x_of_task = {t: i for i, t in enumerate(order)}
    stages = spec.num_stages
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(tasks) + 1), 1.2 * (stages + 2)))
    positions: dict[tuple[int, tuple[int, ...]], tuple[float, float]] = {}
    for d in range(stages):
        nodes: dict[tuple[int, ...], list[str]] = {}
        for t in tasks:
            nodes.setdefault(tuple(spec.route(t)[: d + 1]), []).append(t)
        for prefix, members in nodes.items():
            x = sum(x_of_task[t] for t in members) / len(members)
            y = stages - d
            positions[(d, prefix)] = (x, y)
            ax.text(x, y, f"{prefix[-1]}", ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "facecolor": "lightsteelblue"})
            if d > 0:
                px, py = positions[(d - 1, prefix[:-1])]
                ax.plot([px, x], [py, y], color="0.4", linewidth=1, zorder=0)
    for t in tasks:
        x = x_of_task[t]
        px, py = positions[(stages - 1, tuple(spec.route(t)))]
        ax.plot([px, x], [py, 0.4], color="0.4", linewidth=1, zorder=0)
        ax.text(x, 0.3, t, ha="center", va="top", rotation=90, fontsize=8)
    ax.set_yticks(range(1, stages + 1), [f"stage {stages - i}" for i in range(stages)])
    ax.set_xticks([])
    ax.set_ylim(-0.9, stages + 0.7)
    ax.set_xlim(-0.8, len(tasks) - 0.2)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{spec.num_tasks} tasks, blocks per stage {spec.blocks_per_stage()}")
    _save(fig, path)
