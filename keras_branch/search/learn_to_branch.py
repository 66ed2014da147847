"""Learning to Branch: a differentiable tree search that ends in a TreeSpec.

A *supernet* replicates every backbone stage into a fixed number of nodes
(`widths`, growing toward the leaves and ending with one node per task).
Between two stages a `BranchPoint` lets every node pick its parent node of
the stage before through learnable logits. Weights and logits train
together with `model.fit` and the library's masked losses, while a
`TemperatureScheduler` anneals the Gumbel-softmax temperature. Afterwards
`extract_spec` follows every task's argmax parents from its leaf to the
root: nodes on identical paths become one block, unused nodes disappear,
and the result is an ordinary `TreeSpec` that `build_model` (or
`keras-branch train`) trains from scratch.

Reference:
    Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
    ICML 2020, arXiv:2006.01895.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.build import BranchedModel, block_name, build_model
from keras_branch.callbacks import TemperatureScheduler
from keras_branch.checks import check_int, check_number
from keras_branch.compiling import compile_model
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.files import atomic_write_json
from keras_branch.layers.branch_point import BranchPoint
from keras_branch.search.partitions import adjusted_rand_index, labels_from_groups, refines
from keras_branch.search.result import SearchResult
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec
from keras_branch.task_model import TaskModel
from keras_branch.tasks import Task, as_tasks


#: Defaults of the search, chosen on planted task groups (benchmarks/ltb_planted.py;
#: docs/learning-to-branch.md has the measurements): without tied initialisation the tree follows
#: the leaves' random weights, without the usage balance two groups often collapse
#: onto one node, and without shared Gumbel noise a group is pulled apart in about
#: one seed in five; a balance of 0.3 splits unequal groups.
DEFAULT_BALANCE = 0.1
#: The branching logits' learning rate as a multiple of the weights'.
DEFAULT_LOGITS_LR_FACTOR = 10.0
#: A routing choice whose top parent leads the runner-up by less than this
#: (in probability) is reported as undecided.
MIN_MARGIN = 0.5


def default_widths(num_stages: int, num_tasks: int) -> list[int]:
    """Nodes per stage when none are given: 2, 4, 8, ... capped at the task count, then one per task.

    Example:
    >>> default_widths(3, 8)
    [2, 4, 8]
    >>> default_widths(5, 40)
    [2, 4, 8, 16, 40]
    """
    return [min(num_tasks, 2 ** (d + 1)) for d in range(num_stages - 1)] + [num_tasks]


def check_widths(widths: Any, num_stages: int, num_tasks: int, field: str = "widths") -> list[int]:
    """`widths` as a list of ints, or a `SearchError` naming `field` and the value.

    Example:
    >>> check_widths((1, 3, 8), num_stages=3, num_tasks=8)
    [1, 3, 8]
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise SearchError(
            f"`{field}` must be a list with one node count per stage. Received: {field}={widths!r}"
        )
    result = []
    for d, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise SearchError(
                f"`{field}` entries must be integers >= 1; entry {d} is not. "
                f"Received: {field}={list(widths)!r}"
            )
        result.append(int(w))
    if len(result) != num_stages:
        raise SearchError(
            f"`{field}` needs one entry per backbone stage ({num_stages}). "
            f"Received: {field}={list(widths)!r}"
        )
    if result[-1] > num_tasks:
        raise SearchError(
            f"`{field}` must end with at most one node per task ({num_tasks}). "
            f"Received: {field}={result}"
        )
    return result


#: Layer name of the BranchPoint through which heads pick a last-stage node.
HEADS_BRANCH = "branch_heads"


def node_name(stage: int, node: int) -> str:
    """Layer name of node `node` of `stage` (both 0-based) in a supernet."""
    return f"stage{stage + 1}_node{node}"


def branch_name(stage: int) -> str:
    """Layer name of the BranchPoint feeding `stage` (0-based, >= 1)."""
    return f"branch{stage + 1}"


@keras.saving.register_keras_serializable(package="keras_branch")
class BranchingSupernet(TaskModel):
    """The Learning-to-Branch supernet over a staged backbone.

    Stage d holds `widths[d]` nodes, each a fresh copy of the backbone's
    stage d. Stage-1 nodes read the stem output; for d >= 1 a `BranchPoint`
    named `branch{d+1}` gives every node of stage d a (sampled, in training)
    parent among the nodes of stage d-1. The last stage has one node per
    task (task t owns node t); each task's head reads its node. Outputs are
    a dict keyed by `Task.key`, as in `BranchedModel`, so the same
    `compile_model`, masked losses and metrics apply.

    Args:
        backbone: the `Backbone` (or its config) whose stages are replicated.
        tasks: the `Task`s (or their configs), in leaf order.
        widths: nodes per stage; `widths[-1]` must equal the number of
            tasks. Default `default_widths(...)` (2, 4, 8, ..., then T).
        temperature: initial Gumbel-softmax temperature of every BranchPoint.
        hard: straight-through hard samples.
        seed: seed of the Gumbel noise (BranchPoint d gets `seed + d`).
        logit_scale: multiplies the branching logits' effective learning
            rate under Adam (see `BranchPoint`). With one optimizer for
            weights and logits at 1e-3, a scale of 10 lets the branching
            decisions settle within a few tens of epochs; at 1 they barely
            leave the uniform start (measured on planted task groups).
        per_example: one Gumbel sample per example instead of per batch
            (see `BranchPoint`).
        balance: strength of every BranchPoint's `UsageBalance` penalty
            (0: none), against all children collapsing onto one parent.
        tie_init: start every node of a stage, and every head, from the
            same initial weights, so that what a task's route prefers
            depends on the task and not on the random weights its leaf
            happened to draw. The nodes then part only through the tasks'
            gradients and the Gumbel noise.
        shared_noise: every child of a BranchPoint uses the same Gumbel
            draw per parent (see `BranchPoint`): tasks whose logits agree
            route alike, so the noise cannot pull a group apart.
        **kwargs: `keras.Model` arguments (`name`).

    Example:
    >>> data = planted_groups(seed=0)
    >>> net = BranchingSupernet(backbones.mlp(100, (32, 4, 8)), data.tasks,
    ...                         widths=(2, 4, 8))
    >>> [bp.name for bp in net.branch_points]
    ['branch2', 'branch3']

    Reference:
        Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
        ICML 2020, arXiv:2006.01895.
    """

    def __init__(
        self,
        backbone: Backbone | Mapping[str, Any],
        tasks: Sequence[Task | Mapping[str, Any]],
        widths: Sequence[int] | None = None,
        temperature: float = 1.0,
        hard: bool = False,
        seed: int | None = 0,
        logit_scale: float = 10.0,
        per_example: bool = False,
        balance: float = DEFAULT_BALANCE,
        tie_init: bool = True,
        shared_noise: bool = True,
        **kwargs: Any,
    ):
        backbone = backbone if isinstance(backbone, Backbone) else Backbone.from_config(backbone)
        task_list = self.prepare_tasks(tasks)
        num_stages = backbone.num_stages
        if widths is None:
            widths = default_widths(num_stages, len(task_list))
        widths = check_widths(widths, num_stages, len(task_list))

        # === Layers ===
        stem = backbone.make_stem()
        nodes = [
            [backbone.make_stage(d, name=node_name(d, j)) for j in range(widths[d])]
            for d in range(num_stages)
        ]
        branch_points = [
            BranchPoint(
                num_children=widths[d],
                num_parents=widths[d - 1],
                temperature=temperature,
                hard=hard,
                seed=None if seed is None else int(seed) + d,
                logit_scale=logit_scale,
                per_example=per_example,
                balance=balance,
                shared_noise=shared_noise,
                name=branch_name(d),
            )
            for d in range(1, num_stages)
        ]
        # Fewer last-stage nodes than tasks: every head picks its node too
        # (the paper's layout, where the heads are the last layer of nodes).
        head_point = None
        if widths[-1] < len(task_list):
            head_point = BranchPoint(
                num_children=len(task_list), num_parents=widths[-1], temperature=temperature,
                hard=hard, seed=None if seed is None else int(seed) + num_stages,
                logit_scale=logit_scale, per_example=per_example, balance=balance,
                shared_noise=shared_noise, name=HEADS_BRANCH,
            )
            branch_points.append(head_point)

        # === Functional Model ===
        inputs = keras.Input(shape=backbone.input_shape, name="inputs")
        x = stem(inputs) if stem is not None else inputs
        current = [node(x) for node in nodes[0]]
        for d in range(1, num_stages):
            children = branch_points[d - 1](current)
            current = [node(child) for node, child in zip(nodes[d], children)]
        if head_point is not None:
            pooled = [
                backbone.make_pooling(name=f"features_node{j}")(leaf)
                for j, leaf in enumerate(current)
            ]
            leaves = head_point(pooled)
        outputs = {}
        for t, task in enumerate(task_list):
            if head_point is None:
                features = backbone.make_pooling(name=f"features_{task.key}")(current[t])
            else:
                features = leaves[t]
            outputs[task.key] = self.task_output(task, features)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.tasks = task_list
        self.widths = widths
        self.temperature = float(temperature)
        self.hard = bool(hard)
        self.seed = None if seed is None else int(seed)
        self.logit_scale = float(logit_scale)
        self.per_example = bool(per_example)
        self.balance = float(balance)
        self.tie_init = bool(tie_init)
        self.shared_noise = bool(shared_noise)
        self.branch_points = branch_points
        if self.tie_init:
            self._tie_initial_weights()

    def _tie_initial_weights(self) -> None:
        """Gives every node of a stage, and every head of one shape, the first one's initial weights."""
        for d, width in enumerate(self.widths):
            first = self.get_layer(node_name(d, 0)).get_weights()
            for j in range(1, width):
                self.get_layer(node_name(d, j)).set_weights(first)
        heads: dict[tuple, list] = {}  # weight shapes -> the first head's weights
        for task in self.tasks:
            head = self.get_layer(f"head_{task.key}")
            weights = head.get_weights()
            first = heads.setdefault(tuple(w.shape for w in weights), weights)
            if first is not weights:
                head.set_weights(first)

    def parent_choices(self) -> list[np.ndarray]:
        """Argmax parent of every node of stages 2..D (one int array per stage)."""
        return [bp.parent_indices() for bp in self.branch_points]

    def branching_probabilities(self) -> list[np.ndarray]:
        """`softmax(logits)` of every BranchPoint: [widths[d], widths[d-1]] per stage d >= 1."""
        return [keras.ops.convert_to_numpy(bp.probabilities()) for bp in self.branch_points]

    def model_config(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.get_config(),
            "widths": list(self.widths),
            "temperature": self.temperature,
            "hard": self.hard,
            "seed": self.seed,
            "logit_scale": self.logit_scale,
            "per_example": self.per_example,
            "balance": self.balance,
            "tie_init": self.tie_init,
            "shared_noise": self.shared_noise,
        }


def build_supernet(
    backbone: Backbone,
    tasks: Sequence[Task | Mapping[str, Any]],
    widths: Sequence[int] | None = None,
    name: str = "ltb_supernet",
    **kwargs: Any,
) -> BranchingSupernet:
    """Builds the Learning-to-Branch supernet (see `BranchingSupernet`).

    Args:
        backbone: stages to replicate.
        tasks: the tasks, one leaf each.
        widths: nodes per stage, ending with the number of tasks (default
            `default_widths`).
        name: model name.
        **kwargs: the supernet's other settings, as `BranchingSupernet`
            takes them (`temperature`, `hard`, `seed`, `logit_scale`,
            `per_example`, `balance`, `tie_init`, `shared_noise`).

    Returns:
        A `BranchingSupernet`, not compiled.

    Example:
    >>> net = build_supernet(backbones.mlp(10, (8, 8)), [Task("a", "regression"),
    ...                      Task("b", "regression")], widths=(1, 2))
    """
    return BranchingSupernet(backbone, tasks, widths=widths, name=name, **kwargs)


def _node_routes(model: BranchingSupernet) -> dict[str, list[int]]:
    """Every task's path as supernet node indices, leaf to root by argmax parents."""
    if not isinstance(model, BranchingSupernet):
        raise SearchError(
            f"Extraction needs a BranchingSupernet. Received: {type(model).__name__}"
        )
    parents = model.parent_choices()
    num_stages = len(model.widths)
    heads_route = len(parents) == num_stages  # the last BranchPoint feeds the heads
    routes: dict[str, list[int]] = {}
    for t, task in enumerate(model.tasks):
        route = [0] * num_stages
        node = int(parents[-1][t]) if heads_route else t
        route[-1] = node
        for d in range(num_stages - 1, 0, -1):
            node = int(parents[d - 1][node])
            route[d - 1] = node
        routes[task.name] = route
    return routes


def extract_spec(model: BranchingSupernet) -> TreeSpec:
    """The tree a trained supernet chose: argmax parents, identical paths merged.

    Every task's route is read from its leaf (node t of the last stage)
    back to stage 1 through each node's argmax parent, with no noise. A
    node's index at stage d serves as the block id, so tasks whose paths
    pass through the same nodes up to stage d share blocks 1..d (identical
    path prefixes become one branch) and nodes that no task reaches are
    dropped. Block ids are then renumbered canonically
    (`TreeSpec.canonical`: 0, 1, ... by first use in task order).

    Args:
        model: a `BranchingSupernet` (trained, or not: ties pick parent 0).

    Returns:
        A `TreeSpec` over the backbone's stages; always a tree.

    Example:
    >>> net = build_supernet(backbones.mlp(10, (8, 8)), [Task("a", "regression"),
    ...                      Task("b", "regression")], widths=(1, 2))
    >>> spec = extract_spec(net)       # untrained: every tie picks parent 0
    >>> spec.partition(1)
    [['a'], ['b']]
    >>> model = build_model(spec, net.backbone, net.tasks)   # retrain from scratch
    """
    routes = _node_routes(model)
    return TreeSpec([t.name for t in model.tasks], routes).canonical()


def extract_model(model: BranchingSupernet, copy_weights: bool = True) -> BranchedModel:
    """The extracted tree as a `BranchedModel`, optionally with the supernet's weights.

    Learning to Branch retrains the extracted tree from scratch
    (`build_model(extract_spec(net), ...)`); this function instead keeps the
    trained weights of the nodes, stem and heads the tree uses, so the
    returned model computes exactly what the supernet computes at
    inference (where every BranchPoint is a fixed selection). Useful to
    inspect or fine-tune the search result, and to check that equality.

    Args:
        model: a `BranchingSupernet`.
        copy_weights: copy the supernet's weights into the tree.

    Returns:
        A `BranchedModel` over `extract_spec(model)`.
    """
    routes = _node_routes(model)
    spec = extract_spec(model)
    tree = build_model(spec, model.backbone, model.tasks, name="ltb_tree")
    if copy_weights:
        for task in model.tasks:
            for d, (block, node) in enumerate(zip(spec.route(task.name), routes[task.name])):
                tree.get_layer(block_name(d, block)).set_weights(
                    model.get_layer(node_name(d, node)).get_weights()
                )
            tree.get_layer(f"head_{task.key}").set_weights(
                model.get_layer(f"head_{task.key}").get_weights()
            )
        if model.backbone.stem_config is not None:
            tree.get_layer("stem").set_weights(model.get_layer("stem").get_weights())
    return tree


def train_supernet(
    model: BranchingSupernet,
    data: MultiTaskData,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    schedule: Any = "sqrt_decay",
    warmup_epochs: int | None = None,
    verbose: int | str = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Trains a supernet's weights and branching logits together with `model.fit`.

    Compiles with `keras_branch.compiling.compile_model` (masked per-task
    losses, one Adam optimizer for weights and logits) unless the model is
    already compiled, and anneals the temperature with a
    `TemperatureScheduler`.

    Args:
        model: the supernet.
        data: multi-task data holding the supernet's tasks (`train`, and
            `validation` if present).
        epochs, batch_size, learning_rate: the recipe.
        seed: shuffling seed.
        schedule: temperature schedule (see `TemperatureScheduler`).
        warmup_epochs: epochs of uniform mixing first; default about 1% of
            the epochs, at least 1 (0 when `epochs` is 1).
        verbose: Keras progress level.
        callbacks: extra callbacks.

    Returns:
        The Keras history, `{metric: [value per epoch]}`, with the
        temperature of every epoch under `"temperature"`.
    """
    check_int(epochs, "epochs", minimum=1, error=SearchError)
    if warmup_epochs is None:
        # About 1% of the epochs, at least one, but never the whole run.
        warmup_epochs = min(max(1, math.ceil(0.01 * epochs)), epochs - 1)
    check_int(warmup_epochs, "warmup_epochs", minimum=0, error=SearchError)
    if warmup_epochs >= epochs:
        raise SearchError(
            f"`warmup_epochs` must be smaller than `epochs` ({epochs}). "
            f"Received: warmup_epochs={warmup_epochs!r}"
        )
    names = [t.name for t in model.tasks]
    missing = [n for n in names if n not in data.task_names]
    if missing:
        raise SearchError(f"The data lacks the supernet's task(s) {missing}; it has {data.task_names}.")
    if names != data.task_names:
        data = data.select_tasks(names)
    if not model.compiled:
        compile_model(model, model.tasks, learning_rate=learning_rate)
    scheduler = TemperatureScheduler(schedule, epochs=epochs, warmup_epochs=warmup_epochs)
    validation = data.dataset("validation", 256) if "validation" in data.splits else None
    history = model.fit(
        data.dataset("train", batch_size, shuffle=True, seed=seed),
        validation_data=validation,
        epochs=epochs,
        verbose=verbose,
        callbacks=[scheduler, *callbacks],
        shuffle=False,  # the dataset shuffles itself, deterministically
    )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def undecided(branching: Sequence[Mapping[str, Any]], min_margin: float = MIN_MARGIN) -> list[str]:
    """The used nodes whose choice of parent has a margin below `min_margin`, as text.

    Args:
        branching: a branching report (`branching_report`, or a search
            result's `scores["branching"]`).
        min_margin: the margin under which a choice counts as undecided.
    """
    return [
        f"{_stage_label(stage['stage'])} node {n['node']}: parent {n['parent']} "
        f"(p={max(n['probabilities']):.2f}, margin {n['margin']:.2f})"
        for stage in branching
        for n in stage["nodes"]
        if n["used"] and n["margin"] < min_margin
    ]


def _choice(node: int, probs: np.ndarray, used: bool) -> dict[str, Any]:
    """One child's entry in a branching report."""
    top = np.sort(probs)[::-1]
    margin = float(top[0] - top[1]) if len(top) > 1 else 1.0  # one parent: no choice to make
    return {
        "node": node, "probabilities": [round(float(p), 6) for p in probs],
        "parent": int(np.argmax(probs)), "margin": round(margin, 6), "used": used,
    }


def _stage_label(stage: int | str) -> str:
    return "heads" if stage == "heads" else f"stage {stage}"


def branching_report(model: BranchingSupernet) -> list[dict[str, Any]]:
    """Every child's distribution over parents, its choice, margin and use (see `learn_to_branch`).

    Stages are numbered from 1 (the BranchPoint feeding stage d is entry
    `"stage": d`); the BranchPoint through which heads pick a last-stage
    node, when the supernet has one, is `"stage": "heads"` (heads are
    always used; node j there is task j's head).
    """
    routes = _node_routes(model)
    used = {(d, node) for route in routes.values() for d, node in enumerate(route)}
    report = []
    for d, probs in enumerate(model.branching_probabilities(), start=1):
        rows = np.asarray(probs, dtype="float64")
        heads = d == len(model.widths)
        report.append({
            "stage": "heads" if heads else d + 1,
            "nodes": [_choice(j, row, heads or (d, j) in used) for j, row in enumerate(rows)],
        })
    return report


def widths_for_budget(backbone: Backbone, tasks: Sequence[Task], budget: int | float | str) -> list[int]:
    """Supernet widths whose largest tree fits `budget` parameters.

    The largest tree a supernet can produce uses every node, so it costs
    `budget_for_blocks(backbone, tasks, widths)`. Widths grow from the
    leaves: the last stage gets as many nodes as fit (at most one per
    task; fewer than the tasks means the heads choose), then the stage
    before it, and so on, never wider than the stage after. Sharing is
    given up first where features are most task specific.

    Args:
        backbone, tasks: the supernet's backbone and tasks.
        budget: parameters, or a multiple of the fully shared model ("2x").

    Returns:
        One width per stage.

    Raises:
        SearchError: a budget below the fully shared model.

    Example:
    >>> widths_for_budget(backbones.mlp(100, (64, 64, 16)), planted_groups().tasks, "1.5x")
    [1, 1, 6]
    """
    from keras_branch.search.tree_search import resolve_budget, shared_params
    from keras_branch.search.workflow import budget_for_blocks

    tasks = as_tasks(tasks)
    limit = resolve_budget(budget, shared_params(backbone, tasks))
    widths = [1] * backbone.num_stages
    cap = len(tasks)
    for d in range(backbone.num_stages - 1, -1, -1):
        while widths[d] < cap and budget_for_blocks(
            backbone, tasks, widths[:d] + [widths[d] + 1] + widths[d + 1:]
        ) <= limit:
            widths[d] += 1
        cap = widths[d]
    return widths


def _positive_number(value: Any, field: str) -> float:
    return check_number(value, field, minimum=0, error=SearchError)


def learn_to_branch(
    data: MultiTaskData,
    backbone: Backbone,
    widths: Sequence[int] | None = None,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    logits_learning_rate: float | None = None,
    budget: int | float | str | None = None,
    schedule: Any = "sqrt_decay",
    warmup_epochs: int | None = None,
    hard: bool = False,
    per_example: bool = False,
    balance: float = DEFAULT_BALANCE,
    tie_init: bool = True,
    shared_noise: bool = True,
    verbose: int | str = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> SearchResult:
    """Runs Learning to Branch on `data` and returns the tree it found.

    Builds the supernet (seeded initialisation), trains weights and logits
    together, and extracts the argmax tree. Retrain the tree from scratch
    with `keras_branch.training.fit_spec(result.spec, backbone, data)` or
    `keras-branch train --spec`.

    The branching logits have their own learning rate. Adam's per-variable
    state makes one Adam with two learning rates the same as two Adams: the
    logits are stored divided by `logits_learning_rate / learning_rate` (the
    BranchPoints' `logit_scale`), and Adam's steps do not depend on the
    gradient's scale.

    Args:
        data: multi-task data; every task gets a leaf.
        backbone: the backbone whose stages the tree routes through.
        widths: supernet nodes per stage (default 2, 4, 8, ..., T). The
            last stage has at most one node per task; with fewer, every
            head picks one of them too.
        epochs: search epochs.
        seed: seed of the initialisation, the Gumbel noise and shuffling.
        batch_size, learning_rate: the recipe (learning_rate: the weights').
        logits_learning_rate: Adam learning rate of the branching logits
            (default `10 * learning_rate`).
        budget: instead of `widths`, a parameter budget (a count, or a
            multiple of the fully shared model such as `"2x"`): the widths
            come from `widths_for_budget`, so every tree the search can
            return fits it.
        schedule: temperature schedule (`"sqrt_decay"`, `"constant"` or a
            callable; see `TemperatureScheduler`).
        warmup_epochs: epochs of uniform mixing first, while only the
            weights learn (default about 1%, at least 1).
        hard: straight-through hard Gumbel samples.
        per_example: one Gumbel sample per example instead of per batch.
        balance: strength of the usage balance on the logits (see
            `UsageBalance`; 0 turns it off).
        tie_init: start the nodes of a stage from equal weights (see
            `BranchingSupernet`).
        shared_noise: one Gumbel draw per parent shared by all children
            (see `BranchingSupernet`).
        verbose: Keras progress level.
        callbacks: extra Keras callbacks for the search's `fit`.

    Returns:
        A `SearchResult` (method `"ltb"`): the extracted `TreeSpec`
        (`.spec`); scores `settings`, `history` and `branching` (every
        choice's probabilities and margin; `undecided(result.branching)`
        lists the weak ones); artifact `supernet` (the trained
        `BranchingSupernet`); file `branching.json`.

    Example (the planted benchmark's setting, about 15 s):
    >>> data = planted_groups(group_sizes=(3, 3, 2), seed=0)
    >>> result = learn_to_branch(data, backbones.mlp(100, (64, 64, 16)), widths=(1, 3, 8))
    >>> result.spec.partition(1)     # the task groups at the middle stage
    [['g0_t0', 'g0_t1', 'g0_t2'], ['g1_t0', 'g1_t1', 'g1_t2'], ['g2_t0', 'g2_t1']]

    Reference:
        Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
        ICML 2020, arXiv:2006.01895.
    """
    if not isinstance(data, MultiTaskData):
        raise SearchError(f"`data` must be a MultiTaskData. Received: {type(data).__name__}")
    if not isinstance(backbone, Backbone):
        raise SearchError(f"`backbone` must be a Backbone. Received: {type(backbone).__name__}")
    learning_rate = _positive_number(learning_rate, "learning_rate")
    if logits_learning_rate is None:
        logits_learning_rate = DEFAULT_LOGITS_LR_FACTOR * learning_rate
    logits_learning_rate = _positive_number(logits_learning_rate, "logits_learning_rate")
    check_number(balance, "balance", minimum=0, inclusive=True, error=SearchError)
    if budget is not None:
        if widths is not None:
            raise SearchError(
                f"Give `widths` or `budget`, not both. Received: widths={widths!r}, budget={budget!r}"
            )
        widths = widths_for_budget(backbone, data.tasks, budget)
    with seeded_layers(seed):
        model = build_supernet(
            backbone, data.tasks, widths=widths, hard=hard, seed=seed,
            logit_scale=logits_learning_rate / learning_rate, per_example=per_example,
            balance=balance, tie_init=tie_init, shared_noise=shared_noise,
        )
    start = time.perf_counter()
    history = train_supernet(
        model, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        seed=seed, schedule=schedule, warmup_epochs=warmup_epochs, verbose=verbose,
        callbacks=callbacks,
    )
    seconds = {"search": time.perf_counter() - start}
    settings = {
        "widths": list(model.widths), "epochs": epochs, "seed": seed, "batch_size": batch_size,
        "learning_rate": learning_rate, "logits_learning_rate": logits_learning_rate,
        "schedule": schedule if isinstance(schedule, str) else repr(schedule),
        "warmup_epochs": warmup_epochs, "hard": hard, "per_example": per_example,
        "balance": float(balance), "tie_init": tie_init, "shared_noise": shared_noise,
        "budget": budget,
    }
    branching = branching_report(model)
    scores = {"settings": settings, "branching": branching, "history": history}
    files = {"branching.json": lambda path: atomic_write_json(path, {
        "min_margin": MIN_MARGIN, "undecided": undecided(branching), "stages": branching,
    })}
    return SearchResult("ltb", extract_spec(model), scores, {"supernet": model}, seconds, files)


def format_branching(model: BranchingSupernet, digits: int = 2) -> str:
    """The branching probabilities of a supernet, one line per node.

    Example output::

        stage 2 node 0 <- parents [0.91 0.09]  (argmax 0)
    """
    lines = []
    for d, probs in enumerate(model.branching_probabilities(), start=2):
        label = "head" if d > len(model.widths) else f"stage {d} node"
        for j, row in enumerate(probs):
            values = " ".join(f"{p:.{digits}f}" for p in row)
            lines.append(f"{label} {j} <- parents [{values}]  (argmax {int(np.argmax(row))})")
    return "\n".join(lines)


def partition_ari(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> float:
    """Adjusted Rand index of two partitions given as groups of names (1.0: identical).

    A thin front of `keras_branch.search.partitions.adjusted_rand_index`
    for partitions written the way `TreeSpec.partition` and
    `planted_groups(...).info["partition"]` write them.

    Args:
        a, b: partitions of the same names, as lists of groups.

    Returns:
        ARI in [-1, 1]; 1.0 exactly when the partitions agree.

    Example:
    >>> partition_ari([["a", "b"], ["c"]], [["c"], ["b", "a"]])
    1.0
    """
    return adjusted_rand_index(*_partition_labels(a, b))


def partition_is_pure(found: Sequence[Sequence[str]], planted: Sequence[Sequence[str]]) -> bool:
    """True when no group of `found` mixes names of two groups of `planted` (splits allowed).

    Example:
    >>> partition_is_pure([["a"], ["b"], ["c", "d"]], [["a", "b"], ["c", "d"]])
    True
    >>> partition_is_pure([["a", "c"], ["b", "d"]], [["a", "b"], ["c", "d"]])
    False
    """
    return refines(*_partition_labels(found, planted))


def _partition_labels(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """Group labels of two partitions of the same names, over the names in sorted order."""
    names_a = sorted(n for group in a for n in group)
    names_b = sorted(n for group in b for n in group)
    if names_a != names_b:
        raise SearchError(f"Partitions cover different items: {names_a} vs {names_b}.")
    return labels_from_groups(names_a, a), labels_from_groups(names_a, b)
