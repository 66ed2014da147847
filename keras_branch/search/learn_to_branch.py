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
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.build import BranchedModel, block_name, build_model
from keras_branch.callbacks import TemperatureScheduler
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.layers.branch_point import BranchPoint
from keras_branch.search.partitions import adjusted_rand_index, labels_from_groups
from keras_branch.spec import TreeSpec
from keras_branch.tasks import Task, as_tasks
from keras_branch.training import compile_model


def default_widths(num_stages: int, num_tasks: int) -> list[int]:
    """Nodes per stage when none are given: 2, 4, 8, ... capped at the task count, then one per task.

    Example:
    >>> default_widths(3, 8)
    [2, 4, 8]
    >>> default_widths(5, 40)
    [2, 4, 8, 16, 40]
    """
    return [min(num_tasks, 2 ** (d + 1)) for d in range(num_stages - 1)] + [num_tasks]


def _check_widths(widths: Any, num_stages: int, num_tasks: int) -> list[int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise SearchError(
            f"`widths` must be a list with one node count per stage. Received: widths={widths!r}"
        )
    result = []
    for d, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise SearchError(f"`widths[{d}]` must be an integer >= 1. Received: {w!r}")
        result.append(int(w))
    if len(result) != num_stages:
        raise SearchError(
            f"`widths` needs one entry per backbone stage ({num_stages}). "
            f"Received: widths={list(widths)!r}"
        )
    if result[-1] != num_tasks:
        raise SearchError(
            f"The last stage has one node per task: `widths[-1]` must be {num_tasks}. "
            f"Received: widths={result}"
        )
    return result


def node_name(stage: int, node: int) -> str:
    """Layer name of node `node` of `stage` (both 0-based) in a supernet."""
    return f"stage{stage + 1}_node{node}"


def branch_name(stage: int) -> str:
    """Layer name of the BranchPoint feeding `stage` (0-based, >= 1)."""
    return f"branch{stage + 1}"


@keras.saving.register_keras_serializable(package="keras_branch")
class BranchingSupernet(keras.Model):
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
        **kwargs: Any,
    ):
        backbone = backbone if isinstance(backbone, Backbone) else Backbone.from_config(backbone)
        task_list = as_tasks(tasks)
        num_stages = backbone.num_stages
        if widths is None:
            widths = default_widths(num_stages, len(task_list))
        widths = _check_widths(widths, num_stages, len(task_list))

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
                name=branch_name(d),
            )
            for d in range(1, num_stages)
        ]

        # === Functional Model ===
        inputs = keras.Input(shape=backbone.input_shape, name="inputs")
        x = stem(inputs) if stem is not None else inputs
        current = [node(x) for node in nodes[0]]
        for d in range(1, num_stages):
            children = branch_points[d - 1](current)
            current = [node(child) for node, child in zip(nodes[d], children)]
        outputs = {}
        for t, task in enumerate(task_list):
            features = backbone.make_pooling(name=f"features_{task.key}")(current[t])
            head = task.make_head(name=f"head_{task.key}")(features)
            outputs[task.key] = keras.layers.Identity(name=task.key, dtype="float32")(head)
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
        self.branch_points = branch_points

    @property
    def task_keys(self) -> dict[str, str]:
        """Task name -> output key."""
        return {t.name: t.key for t in self.tasks}

    def parent_choices(self) -> list[np.ndarray]:
        """Argmax parent of every node of stages 2..D (one int array per stage)."""
        return [bp.parent_indices() for bp in self.branch_points]

    def branching_probabilities(self) -> list[np.ndarray]:
        """`softmax(logits)` of every BranchPoint: [widths[d], widths[d-1]] per stage d >= 1."""
        return [keras.ops.convert_to_numpy(bp.probabilities()) for bp in self.branch_points]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": self.backbone.get_config(),
            "tasks": [t.get_config() for t in self.tasks],
            "widths": list(self.widths),
            "temperature": self.temperature,
            "hard": self.hard,
            "seed": self.seed,
            "logit_scale": self.logit_scale,
            "per_example": self.per_example,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> BranchingSupernet:
        return cls(**config)


def build_supernet(
    backbone: Backbone,
    tasks: Sequence[Task | Mapping[str, Any]],
    widths: Sequence[int] | None = None,
    temperature: float = 1.0,
    hard: bool = False,
    seed: int | None = 0,
    logit_scale: float = 10.0,
    per_example: bool = False,
    name: str = "ltb_supernet",
) -> BranchingSupernet:
    """Builds the Learning-to-Branch supernet (see `BranchingSupernet`).

    Args:
        backbone: stages to replicate.
        tasks: the tasks, one leaf each.
        widths: nodes per stage, ending with the number of tasks.
        temperature: initial temperature.
        hard: straight-through hard samples.
        seed: Gumbel noise seed.
        logit_scale: branching logits' learning-rate multiplier.
        per_example: one Gumbel sample per example instead of per batch.
        name: model name.

    Returns:
        A `BranchingSupernet`, not compiled.

    Example:
    >>> net = build_supernet(backbones.mlp(10, (8, 8)), [Task("a", "regression"),
    ...                      Task("b", "regression")], widths=(1, 2))
    """
    return BranchingSupernet(
        backbone, tasks, widths=widths, temperature=temperature, hard=hard, seed=seed,
        logit_scale=logit_scale, per_example=per_example, name=name,
    )


def _node_routes(model: BranchingSupernet) -> dict[str, list[int]]:
    """Every task's path as supernet node indices, leaf to root by argmax parents."""
    if not isinstance(model, BranchingSupernet):
        raise SearchError(
            f"Extraction needs a BranchingSupernet. Received: {type(model).__name__}"
        )
    parents = model.parent_choices()
    num_stages = len(model.widths)
    routes: dict[str, list[int]] = {}
    for t, task in enumerate(model.tasks):
        route = [0] * num_stages
        node = t
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
    >>> spec = extract_spec(net)
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

    Compiles with `keras_branch.training.compile_model` (masked per-task
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
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SearchError(f"`epochs` must be a positive int. Received: epochs={epochs!r}")
    if warmup_epochs is None:
        # About 1% of the epochs, at least one, but never the whole run.
        warmup_epochs = min(max(1, math.ceil(0.01 * epochs)), epochs - 1)
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


def learn_to_branch(
    data: MultiTaskData,
    backbone: Backbone,
    widths: Sequence[int] | None = None,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    schedule: Any = "sqrt_decay",
    warmup_epochs: int | None = None,
    hard: bool = False,
    logit_scale: float = 10.0,
    per_example: bool = False,
    verbose: int | str = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[TreeSpec, dict[str, list[float]]]:
    """Runs Learning to Branch on `data` and returns the tree it found.

    Builds the supernet (seeded initialisation), trains weights and logits
    together, and extracts the argmax tree. Retrain the tree from scratch
    with `keras_branch.training.fit_spec(spec, backbone, data)` or
    `keras-branch train --spec`.

    Args:
        data: multi-task data; every task gets a leaf.
        backbone: the backbone whose stages the tree routes through.
        widths: supernet nodes per stage, ending with the number of tasks
            (default 2, 4, 8, ..., T).
        epochs: search epochs.
        seed: seed of the initialisation, the Gumbel noise and shuffling.
        batch_size, learning_rate: the recipe.
        schedule: temperature schedule (`"sqrt_decay"`, `"constant"` or a
            callable; see `TemperatureScheduler`).
        warmup_epochs: epochs of uniform mixing first (default about 1%,
            at least 1).
        hard: straight-through hard Gumbel samples.
        logit_scale: branching logits' learning-rate multiplier (see
            `BranchingSupernet`).
        per_example: one Gumbel sample per example instead of per batch.
        verbose: Keras progress level.
        callbacks: extra Keras callbacks for the search's `fit`.

    Returns:
        `(spec, history)`: the extracted `TreeSpec` (canonical block ids,
        one route per task over the backbone's stages) and the search's
        Keras history.

    Example (the recipe of `benchmarks/ltb_planted.py`):
    >>> data = planted_groups(group_sizes=(3, 3, 2), num_train=1000, seed=0)
    >>> spec, history = learn_to_branch(data, backbones.mlp(100, (32, 4, 8)),
    ...                                 widths=(2, 4, 8), epochs=30, seed=0)
    >>> spec.partition(1)     # the task groups at the middle stage
    [['g0_t0', 'g0_t1', 'g0_t2'], ['g1_t0', 'g1_t1', 'g1_t2'], ['g2_t0', 'g2_t1']]

    Reference:
        Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
        ICML 2020, arXiv:2006.01895.
    """
    if not isinstance(data, MultiTaskData):
        raise SearchError(f"`data` must be a MultiTaskData. Received: {type(data).__name__}")
    if not isinstance(backbone, Backbone):
        raise SearchError(f"`backbone` must be a Backbone. Received: {type(backbone).__name__}")
    keras.utils.set_random_seed(seed)
    model = build_supernet(
        backbone, data.tasks, widths=widths, hard=hard, seed=seed, logit_scale=logit_scale,
        per_example=per_example,
    )
    history = train_supernet(
        model, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        seed=seed, schedule=schedule, warmup_epochs=warmup_epochs, verbose=verbose,
        callbacks=callbacks,
    )
    return extract_spec(model), history


def format_branching(model: BranchingSupernet, digits: int = 2) -> str:
    """The branching probabilities of a supernet, one line per node.

    Example output::

        stage 2 node 0 <- parents [0.91 0.09]  (argmax 0)
    """
    lines = []
    for d, probs in enumerate(model.branching_probabilities(), start=2):
        for j, row in enumerate(probs):
            values = " ".join(f"{p:.{digits}f}" for p in row)
            lines.append(f"stage {d} node {j} <- parents [{values}]  (argmax {int(np.argmax(row))})")
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
    names_a = sorted(n for group in a for n in group)
    names_b = sorted(n for group in b for n in group)
    if names_a != names_b:
        raise SearchError(f"Partitions cover different items: {names_a} vs {names_b}.")
    return adjusted_rand_index(labels_from_groups(names_a, a), labels_from_groups(names_a, b))
