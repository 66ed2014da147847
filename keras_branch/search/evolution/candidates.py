"""Candidates: a child path's own components, its model, and its short training.

A candidate is a one-task model on the child's path: blocks shared with the
system are frozen and carry the system's weights; the candidate's own
components (fresh clones, blocks its lineage cloned, adapters, own norms,
head) train.
Layers are constructed under `seeding.seeded_layers(layer_seed)`, so a
candidate's initial weights depend only on the seed it is given, and the
caller's Python `random` is left as it was.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_branch.augment import make_augment
from keras_branch.build import BranchedModel, NormedBlock, adapter_name, block_name, norm_name
from keras_branch.checks import check_choice
from keras_branch.compiling import compile_model, make_optimizer
from keras_branch.data.multitask import MultiTaskData
from keras_branch.evaluation import evaluate
from keras_branch.gradient_registry import released_custom_gradients
from keras_branch.search.evolution.selection import quality
from keras_branch.search.evolution.state import SearchState
from keras_branch.search.evolution.system import EvolvedSystem, TaskPath
from keras_branch.search.evolution.weights import component_layers
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec
from keras_branch.tasks import Task

__all__ = ["CANDIDATE_HPARAMS", "CANDIDATE_STARTS", "FINAL_STARTS", "candidate_model", "child_weights",
           "final_start_weights", "fixed_hparams", "train_candidate"]

Weights = dict[str, list[np.ndarray] | None]

#: Where an installed path's final training starts (`evolve`'s `final_start`):
#: `"inherited"` (the default: the weights its lineage of candidates trained)
#: or `"root"` (its own blocks from the root's block of their stage, adapters
#: and head fresh).
FINAL_STARTS = ("inherited", "root")

#: Where a candidate's own components start (`evolve`'s `candidate_start`):
#: `"inherited"` (the default, muNet's: its parent's trained weights, so a
#: lineage's training adds up over generations) or `"equal"` (the weights its
#: parent started from, so every candidate of a visit has trained
#: `candidate_epochs` from the visit's start and paths are ranked at equal
#: training).
CANDIDATE_STARTS = ("inherited", "equal")

#: Which learning rate and batch size a candidate trains at (`evolve`'s
#: `candidate_hparams`): `"own"` (the default, muNet's: its path's, which
#: mutations move) or `"final"` (the final training's `final_learning_rate`
#: and `final_batch_size` where they are set; those then never mutate).
CANDIDATE_HPARAMS = ("own", "final")


def fixed_hparams(candidate_hparams: str, final_learning_rate: float | None,
                  final_batch_size: int | None) -> dict[str, Any]:
    """The hyperparameters every candidate trains at and no mutation moves.

    With `candidate_hparams="own"` none: each path keeps its own, moved by
    mutations (muNet). With `"final"` the final training's rate and batch,
    where set. Under `"own"` a path is ranked after a few epochs at its own
    rate and batch and the installed one is then trained at the final ones;
    under `"final"` paths are ranked at the hyperparameters they are trained
    at. On Omniglot-5 (AMD EPYC, seeds 0-5) `"final"` installed a head on
    the frozen root for 1 of 30 paths against 3, with the same mean test
    error (7.95% against 7.91%) and half the spread around fine-tuning
    (docs/evolution.md).

    Args:
        candidate_hparams: one of `CANDIDATE_HPARAMS`.
        final_learning_rate, final_batch_size: `evolve`'s (None: not set).

    Returns:
        Hyperparameter name -> value (a subset of `learning_rate` and `batch_size`).

    Example:
    >>> fixed_hparams("final", 3e-3, None)
    {'learning_rate': 0.003}
    >>> fixed_hparams("own", 3e-3, 32)
    {}
    """
    check_choice(candidate_hparams, "candidate_hparams", CANDIDATE_HPARAMS)
    if candidate_hparams == "own":
        return {}
    return {name: value for name, value in (("learning_rate", final_learning_rate),
                                            ("batch_size", final_batch_size)) if value is not None}

_BLOCK = re.compile(r"stage(\d+)_block(\d+)")


def child_weights(system: EvolvedSystem, task: Task, parent: dict, path: TaskPath,
                  state: SearchState, candidate_start: str = "inherited") -> Weights:
    """The child's own components and their starting weights (None: freshly initialised).

    Negative route entries mark fresh clones (`-1 - source block`); they get
    new block ids here (written into `path`), copied from their source. A
    clone of a block the parent already trains keeps training the parent's
    copy. Adapters of the parent's size, own norms on the parent's block of
    the stage and the head (same depth) start from the parent's; own norms
    otherwise start as the block's (`candidate_model`).

    With `candidate_start="equal"` "the parent's" weights are those the
    parent started from (`SearchState.record` keeps them) when the parent is a
    candidate of this visit: its lineage's training does not carry over, and
    every candidate trains from what the visit started with (the system's
    blocks, the task's installed path of an earlier pass, fresh layers).

    Args:
        system: the system (its weights are read, never changed).
        task: the task visited.
        parent: the parent's population entry.
        path: the child's path from `mutate`; clone markers are replaced.
        state: the search state (the parent's weights, the visit's block ids).
        candidate_start: one of `CANDIDATE_STARTS`.

    Returns:
        Layer name -> starting weights of every component the child trains.

    Example (not run as a doctest: a step inside `evolve`, on its search state):
    >>> owned = child_weights(system, task, parent, child_path, state)  # doctest: +SKIP
    """
    check_choice(candidate_start, "candidate_start", CANDIDATE_STARTS)
    # The task's own path of an earlier pass is what this visit started with.
    started = candidate_start == "equal" and not parent["id"].startswith("task:")
    inherited = state.load_weights(parent["id"], state.current, started) if parent.get("trained") else {}
    parent_path = TaskPath.from_dict(parent["path"])
    owned: Weights = {}
    for d in range(path.depth):
        block = path.route[d]
        if block < 0 and block_name(d, -1 - block) in inherited:
            # Cloning what the lineage already trains: keep training it.
            block = path.route[d] = -1 - block
        if block < 0:
            source = block_name(d, -1 - block)
            weights = system.weights[source]
            # One block per stage: the ids other candidates of this visit took
            # are all a new clone must avoid.
            new_id = system.next_block_id(d, state.taken_ids(d))
            path.route[d] = new_id
            owned[block_name(d, new_id)] = weights
        elif block_name(d, block) in inherited:  # a clone the parent trained
            owned[block_name(d, block)] = inherited[block_name(d, block)]
    for d, dim in enumerate(path.adapters[: path.depth]):
        if dim:
            name = adapter_name(d, task.key)
            same = parent_path.adapters[d] == dim and name in inherited
            owned[name] = inherited[name] if same else None
    for d, flag in enumerate(path.norms[: path.depth]):
        if flag:
            same = parent_path.norms[d] and parent_path.route[d] == path.route[d]
            for i in system.backbone.stage_norm_positions(d):
                name = norm_name(d, i, task.key)
                owned[name] = inherited[name] if same and name in inherited else None
    head = f"head_{task.key}"
    owned[head] = inherited.get(head) if parent_path.depth == path.depth else None
    state.claim_ids(path)
    return owned


def final_start_weights(system: EvolvedSystem, owned: Mapping[str, list[np.ndarray]],
                        final_start: str) -> Weights:
    """The starting weights of an installed path's final training.

    With `"root"` the final training forgets what the candidates trained: a
    block the path owns starts from the root's block of its stage, its
    adapters and head start fresh (from the final training's layer seed).
    The search then chooses a structure and its hyperparameters, not
    weights, so a task ends where its structure takes it whichever lineage
    found it (which other tasks the system held, how many generations
    retrained it); a block cloned from another task's clone loses that
    task's training.

    Args:
        system: the system (the root's blocks are read).
        owned: the path's own components (layer name -> trained weights).
        final_start: one of `FINAL_STARTS`.

    Returns:
        Layer name -> starting weights (None: freshly initialised), for
        `train_candidate`.

    Example (not run as a doctest: a step inside `evolve`, on its search state):
    >>> start = final_start_weights(system, owned, "root")  # doctest: +SKIP
    """
    if final_start == "inherited":
        return dict(owned)
    check_choice(final_start, "final_start", FINAL_STARTS)
    start: Weights = {}
    for name in owned:
        block = _BLOCK.fullmatch(name)
        start[name] = system.weights[block_name(int(block.group(1)) - 1, 0)] if block else None
    return start


def candidate_model(system: EvolvedSystem, task: Task, path: TaskPath, owned: Weights,
                    layer_seed: int) -> BranchedModel:
    """The candidate's one-task model: shared blocks frozen, its own components trainable.

    Args:
        system: the system whose weights the shared blocks take.
        task: the task.
        path: the child's path (clone ids assigned by `child_weights`).
        owned: `child_weights`' result.
        layer_seed: seeds the initialisers of the components without
            starting weights (`seeding.seeded_layers`).

    Returns:
        An uncompiled `BranchedModel` named "candidate".

    Example (not run as a doctest: a step inside `evolve`, on its search state):
    >>> model = candidate_model(system, task, path, owned, layer_seed=7)  # doctest: +SKIP
    """
    spec = TreeSpec([task.name], {task.name: path.route}, {task.name: path.depth},
                    {task.name: path.adapters}, {task.name: path.hparams}, {task.name: path.norms})
    with seeded_layers(layer_seed):
        model = BranchedModel(spec, system.backbone, [task], name="candidate")
    layers = component_layers(model)
    for name, layer in layers.items():
        if name in owned:
            if owned[name] is not None:
                layer.set_weights(owned[name])
            layer.trainable = True
        elif name in system.weights:
            layer.set_weights(system.weights[name])
            layer.trainable = False  # frozen: shared with the system
    for normed in (x for x in model.layers if isinstance(x, NormedBlock)):
        # A fresh own norm starts as the norm of the (now loaded) block it replaces.
        for i, norm in zip(normed.positions, normed.norms):
            if norm.name in owned and owned[norm.name] is None:
                norm.set_weights(normed.block.layers[i].get_weights())
    return model


def train_candidate(system: EvolvedSystem, task: Task, path: TaskPath, owned: Weights,
                    data: MultiTaskData, epochs: int, augment: Mapping[str, float] | None,
                    layer_seed: int, order_seed: int, schedule: str = "constant",
                    ) -> tuple[float, dict[str, list[np.ndarray]]]:
    """Trains a candidate's own components and judges it on the validation split.

    Args:
        system, task, path, owned, layer_seed: as in `candidate_model`.
        data: the task's data (train and validation splits).
        epochs: training epochs (the candidate's budget).
        augment: image augmentation of the training batches, or None.
        layer_seed: seeds the fresh components' initial weights.
        order_seed: seeds the batch order and the augmentation.
        schedule: the learning-rate schedule over `epochs` (`"constant"` for
            a candidate, `"cosine"` for the installed path's final training;
            see `compiling.make_optimizer`), from the path's learning rate.

    Returns:
        The candidate's quality (`selection.quality` on validation) and the
        trained weights of its own components. The model itself is not
        returned: once the caller drops it, `gc.collect()` frees it, and the
        custom gradients its training registered are already out of
        TensorFlow's registry (`gradient_registry`), so its traced graph
        goes too.

    Example (not run as a doctest: a step inside `evolve`, on its search state):
    >>> q, weights = train_candidate(system, task, path, owned, data, 3, None, 1, 2)  # doctest: +SKIP
    """
    model = candidate_model(system, task, path, owned, layer_seed)
    batch_size = int(path.hparams["batch_size"])
    steps = data.steps("train", batch_size)
    compile_model(model, optimizer=make_optimizer(float(path.hparams["learning_rate"]), schedule,
                                                  epochs=epochs, steps_per_epoch=steps))
    # The model dies with this call: its train step's custom gradients must
    # not keep its graph alive in TensorFlow's global registry.
    with released_custom_gradients():
        model.fit(
            data.epoch_dataset("train", batch_size, order_seed, 0, epochs,
                               make_augment(augment, seed=order_seed)),
            epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
        )
    value = quality(task, evaluate(model, data, "validation")[task.name])
    weights = {name: [np.array(w) for w in layer.get_weights()]
               for name, layer in component_layers(model).items() if name in owned}
    return value, weights
