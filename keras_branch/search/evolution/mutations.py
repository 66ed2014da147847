"""Mutations: a child path from its parent's, each change drawn with one probability.

`mutate(path, num_stages, rng, prob, clones, depths, adapters)` makes the
child. With probability `prob`, independently:

- per used stage: clone its block (a trainable copy of a frozen one). With
  `clones="suffix"` (the default) a clone drawn at stage d also clones every
  later used stage, so the path's own blocks are a suffix and frozen blocks
  never sit above trained ones (as in fine-tuning the top of a pretrained
  network); with `clones="layer"` (muNet's rule) only the drawn stages;
- per used stage without an adapter: insert a zero-initialised adapter of
  the path's `adapter_dim`. With `adapters="between"` (the default) not
  after the path's last stage: there an adapter adapts nothing a later
  stage reads, it only deepens the task's own head (and a path left with
  one there, by a depth move or from an earlier system, drops it); with
  `adapters="any"` (muNet's rule) after any used stage;
- once: change the depth by one (up or down, reflected at the ends and at
  depths the path may not take, `depths`);
- once: move one hyperparameter, drawn uniformly from `HPARAM_LISTS`, one
  step along its list (reflected at the ends), so each of the three moves
  with probability `prob / 3`; a drawn one that may not move (not in
  `hparams`) stays. Evolution holds the learning rate and batch size with
  `candidate_hparams="final"`: candidates then train at the final
  training's, and only `adapter_dim` moves.

Every draw comes from the generator it is given, and both clone rules make
the same draws (so a seed gives the same hyperparameter and depth moves).

Why no adapter after the last stage by default: on Omniglot-5 (an AMD EPYC
with AVX-512, seeds 0-2) the stage-4 clone trained 160 epochs reached 7.56%
mean test error, and the same path with an adapter after stage 4 8.52%,
worse on every seed (validation too). After a candidate's 4 epochs the two
are within the validation split's noise, and no mutation removes an
adapter, so lineages kept it: evolution installed one there on 9 of 15
paths (`docs/evolution.md`).

Why suffix by default: on Omniglot-5 (seed 0, the benchmark's recipe) the
layer rule installed paths that train middle stages under frozen tops
(another task's clone) and reached 8.05% test error at 305k parameters; the
suffix rule 7.70% at 225k (`docs/evolution.md`).

Not a mutation but a rule on every child (`apply_norm_rule`): with
`norms="task"` the task owns the batch norms of every block it shares
(frozen blocks the system holds); with `"frozen"` (muNet's) it owns none.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from keras_branch.checks import check_choice
from keras_branch.build import block_name
from keras_branch.search.evolution.system import EvolvedSystem, TaskPath

__all__ = ["ADAPTER_STAGES", "CLONE_RULES", "DEPTH_MOVES", "HPARAM_LISTS", "MUTATIONS", "NORM_RULES",
           "allowed_depths", "apply_norm_rule", "mutate"]

#: Whose batch norms a block shared with the system runs (`evolve`'s `norms`):
#: `"frozen"` (muNet's: the block's, frozen with it) or `"task"` (the task's own
#: copies, trained with its path: scale, offset and statistics of its data).
NORM_RULES = ("frozen", "task")

#: Per-task hyperparameters and the lists a mutation moves them along.
HPARAM_LISTS: dict[str, tuple] = {
    "learning_rate": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adapter_dim": (4, 8, 16, 32, 64),
    "batch_size": (16, 32, 64),
}
#: The kinds of mutation, as `mutate` names them in its description.
MUTATIONS = ("clone", "adapter", "depth", "hparam")
#: How a clone mutation extends (`mutate`'s `clones`).
CLONE_RULES = ("suffix", "layer")
#: Which depths a depth mutation may reach (`allowed_depths`).
DEPTH_MOVES = ("shape", "any")
#: After which stages an adapter mutation may insert an adapter (`mutate`'s `adapters`).
ADAPTER_STAGES = ("between", "any")


def allowed_depths(feature_sizes: Sequence[int], rule: str = "shape") -> list[int]:
    """The depths a path may take: with `"shape"`, those whose head input has the full depth's size.

    muNet's depth mutation adds or removes a transformer layer: every depth
    feeds the head a token of one size, so a child at another depth keeps a
    head of the same shape and a few epochs rank it fairly. Where stages
    change what the head receives (a convnet that halves its resolution, its
    features flattened), a depth move gives the head another input: a new,
    larger head on less pooled features, which after a candidate's few
    epochs looks better than it ends (on Omniglot-5 the stage-3 heads rank
    among the best on validation and generalise worst to new drawers,
    `docs/evolution.md`). `"shape"` keeps depth moves among the depths
    whose head input has the full depth's size; `"any"` allows every depth
    (muNet's move, on any backbone).

    Args:
        feature_sizes: the head's input width at depths 1..num_stages
            (`Backbone.feature_size`).
        rule: `"shape"` or `"any"`.

    Returns:
        The allowed depths, ascending; the full depth is always one.

    Example:
    >>> allowed_depths([4096, 1024, 256])  # convnet stages, features flattened
    [3]
    >>> allowed_depths([16, 16, 16])  # an MLP of equal widths
    [1, 2, 3]
    >>> allowed_depths([4096, 1024, 256], rule="any")
    [1, 2, 3]
    """
    check_choice(rule, "depth_moves", DEPTH_MOVES)
    return [d + 1 for d, size in enumerate(feature_sizes)
            if rule == "any" or size == feature_sizes[-1]]


def mutate(path: TaskPath, num_stages: int, rng: np.random.Generator,
           prob: float, clones: str = "suffix",
           depths: Sequence[int] | None = None,
           adapters: str = "between",
           hparams: Sequence[str] | None = None) -> tuple[TaskPath, list[str]]:
    """A child path: each mutation applied with probability `prob`.

    Args:
        path: the parent's path (not modified).
        num_stages: stages of the backbone (the largest depth).
        rng: every draw comes from it.
        prob: the probability of each mutation (`mutation_prob`).
        clones: `"suffix"`: a clone drawn at stage d clones stages d to the
            path's depth (described as `clone(stage d)` and
            `clone(stage e, suffix)` for each later one); `"layer"`: only the
            drawn stages (muNet). The draws are the same either way.
        depths: the depths the path may take (`allowed_depths`; default:
            1 to `num_stages`). A drawn step towards a depth outside them is
            reflected, and dropped when the other way is outside too; the
            draws are the same either way.
        adapters: `"between"`: adapters only after stages that feed
            another stage of the path (one drawn after the last stage is
            not inserted, and one the path has there after its depth move
            is dropped, described as `drop adapter(stage d, last)`);
            `"any"`: after any used stage (muNet). The draws are the same
            either way.
        hparams: the hyperparameters that may move (names of
            `HPARAM_LISTS`; default all of them, muNet). The move draws from
            all of them either way, so each one that may moves with the
            same probability and the draws are the same.

    Returns:
        The child and a description of the mutations (empty: the child
        continues training its parent's components). A cloned stage's route
        entry is `-1 - block` until the child gets a new block id; a depth
        change resets the stages past the new depth to the root.

    Example:
    >>> child, done = mutate(TaskPath.root(4), 4, np.random.default_rng(0), prob=1.0)

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """
    check_choice(clones, "clones", CLONE_RULES)
    check_choice(adapters, "adapters", ADAPTER_STAGES)
    movable = set(HPARAM_LISTS) if hparams is None else set(hparams)
    if not movable <= set(HPARAM_LISTS):
        raise ValueError(f"`hparams` must name hyperparameters of {sorted(HPARAM_LISTS)}. "
                         f"Received: hparams={list(hparams or ())!r}")
    child = copy.deepcopy(path)
    done: list[str] = []

    def clone(d: int, note: str = "") -> None:
        # `-1 - block` marks a clone of `block`; a stage marked already stays so.
        done.append(f"clone(stage {d + 1}{note})")
        child.route[d] = -1 - child.route[d] if child.route[d] >= 0 else child.route[d]

    drawn = [d for d in range(child.depth) if rng.random() < prob]
    for d in drawn:
        clone(d)
    for d in range(child.depth):
        if rng.random() < prob and not child.adapters[d]:
            child.adapters[d] = int(child.hparams["adapter_dim"])
            done.append(f"adapter(stage {d + 1}, {child.adapters[d]})")
    reachable = set(range(1, num_stages + 1) if depths is None else depths)
    if rng.random() < prob:
        step = int(rng.choice([-1, 1]))
        if child.depth + step not in reachable:
            step = -step
        if child.depth + step in reachable:
            old = child.depth
            child.depth += step
            for d in range(child.depth, num_stages):
                child.route[d], child.adapters[d] = 0, 0  # past the depth: back to the root
            done.append(f"depth({old}->{child.depth})")
    last = child.depth - 1
    if adapters == "between" and child.adapters[last]:
        inserted = f"adapter(stage {last + 1}, {child.adapters[last]})"
        if inserted in done:
            done.remove(inserted)
        else:
            done.append(f"drop adapter(stage {last + 1}, last)")
        child.adapters[last] = 0
    if rng.random() < prob:
        name = str(rng.choice(sorted(HPARAM_LISTS)))
        values = HPARAM_LISTS[name]
        i = values.index(child.hparams[name]) if child.hparams[name] in values else 0
        j = i + int(rng.choice([-1, 1]))
        j = j if 0 <= j < len(values) else i - (j - i)
        if name in movable:
            child.hparams[name] = values[j]
            done.append(f"{name}({values[i]}->{values[j]})")
    if clones == "suffix" and drawn:
        # After the depth move, so a stage it adds above a clone is cloned
        # too. A stage the lineage already trains is marked as well:
        # `child_weights` keeps training it rather than copying it again.
        for d in range(drawn[0] + 1, child.depth):
            if d not in drawn:
                clone(d, ", suffix")
    return child, done


def apply_norm_rule(system: EvolvedSystem, path: TaskPath, norms: str) -> TaskPath:
    """Sets `path.norms` by the rule `norms` (one of `NORM_RULES`), in place.

    With `"task"`, 1 at every used stage whose block the system holds (a
    block the path shares, frozen; not a clone the path trains itself) and
    has batch norms (`Backbone.stage_norm_positions`): there the task trains
    its own copies of them. The
    stage-4 clone with task-owned norms on stages 1-3 reached 7.57% mean
    test error on Omniglot-5 against 7.81% for the clone alone (fixed paths,
    80 epochs; 7.48% against 7.56% at 160 epochs on another CPU), for 256
    parameters per stage (docs/evolution.md, "The ceiling"). Evolution with
    the rule installed that path on every alphabet and gave 8.10% mean test
    error over seeds 0-5 against 7.95% without it (AMD EPYC with AVX2;
    7.84% against 8.06% on seeds 0-2, 8.36% against 7.83% on seeds 3-5):
    no gain beyond the final training's noise, so it is not the default.

    Args:
        system: the system (which blocks it holds).
        path: a child path (route entries of fresh clones negative).
        norms: one of `NORM_RULES`.

    Returns:
        `path`.

    Example (not run as a doctest: needs an evolved system):
    >>> path = apply_norm_rule(system, TaskPath.root(4), "task")  # doctest: +SKIP
    >>> path.norms  # doctest: +SKIP
    [1, 1, 1, 1]
    """
    check_choice(norms, "norms", NORM_RULES)
    path.norms = [
        int(norms == "task" and d < path.depth and b >= 0 and block_name(d, b) in system.weights
            and bool(system.backbone.stage_norm_positions(d)))
        for d, b in enumerate(path.route)
    ]
    return path
