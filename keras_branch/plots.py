"""PNG drawings: affinity heatmaps, the Pareto front, a tree, soft-ordering mixing weights.

Figures are `matplotlib.figure.Figure` objects drawn without pyplot, so no
backend is chosen or switched (the caller's matplotlib set-up is left alone)
and no display is needed; every file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from keras_branch.files import atomic_path
from keras_branch.soft_ordering_model import SoftOrderingModel, mixing_weights

if TYPE_CHECKING:
    from keras_branch.search.affinity import TaskAffinity
    from keras_branch.search.tree_search import Tree
    from keras_branch.spec import TreeSpec


def _figure(**kwargs: Any) -> Figure:
    # A bare Figure: savefig renders PNG with Agg whatever pyplot's backend is.
    return Figure(**kwargs)


def _save(fig: Figure, path: str | os.PathLike, **kwargs: Any) -> str:
    options = {"dpi": 110, "bbox_inches": "tight", **kwargs}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **options)
    return os.fspath(path)


def plot_affinity(affinity: TaskAffinity, path: str | os.PathLike) -> None:
    """One heatmap per stage; tasks ordered so that similar tasks sit together."""
    order = affinity.order()
    names = [affinity.tasks[i] for i in order]
    stages = affinity.num_stages
    size = max(3.0, 0.28 * len(names) + 1.5)
    fig = _figure(figsize=(size * stages, size))
    axes = fig.subplots(1, stages, squeeze=False)
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
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
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
    tasks = spec.tasks
    # Leaves ordered so that tasks sharing deep blocks stand together.
    order = sorted(tasks, key=lambda t: tuple(spec.route(t)))
    x_of_task = {t: i for i, t in enumerate(order)}
    stages = spec.num_stages
    fig = _figure(figsize=(max(4.0, 0.6 * len(tasks) + 1), 1.2 * (stages + 2)))
    ax = fig.subplots()
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


def plot_mixing_weights(
    model: SoftOrderingModel, path: str | os.PathLike, title: str | None = None
) -> str:
    """Draws one heatmap per task of a soft-ordering model's mixing scales (PNG).

    The paper's figure (Meyerson & Miikkulainen, 2018, Fig. 4): for task t,
    the softmax scale s[t, d, j] of pool layer j at depth d.

    Args:
        model: a `SoftOrderingModel`.
        path: the PNG file to write.
        title: figure title (default: the model's name and ordering).

    Returns:
        The path written.

    Example (not run as a doctest: needs a trained `SoftOrderingModel`):
    >>> plot_mixing_weights(model, "mixing.png")  # doctest: +SKIP
    'mixing.png'
    """
    weights = mixing_weights(model)
    names = list(weights)
    columns = min(len(names), 5)
    rows = -(-len(names) // columns)
    fig = _figure(figsize=(2.6 * columns + 0.8, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for k, (ax, name) in enumerate(zip(axes.flat, names)):
        table = weights[name]
        image = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("pool layer")
        if k % columns == 0:
            ax.set_ylabel("depth")
        ax.set_xticks(range(table.shape[1]), [str(j + 1) for j in range(table.shape[1])])
        ax.set_yticks(range(table.shape[0]), [str(d + 1) for d in range(table.shape[0])])
        for (d, j), value in np.ndenumerate(table):
            ax.text(j, d, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title or f"{model.name}: {model.ordering} ordering, mixing weights")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    return _save(fig, path, dpi=100, bbox_inches=None)
