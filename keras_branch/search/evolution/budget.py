"""The parameter budget of an evolution: each task's part, and children that fit it.

`ceiling` is the most the system may hold once a call has placed its new
tasks, `allowance` what one visit may add, and `draw_child` draws a
candidate slot's child (parent and mutations) until one fits the visit's
part, trimming redundant adapters first.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_branch.search.evolution.mutations import apply_norm_rule, mutate
from keras_branch.search.evolution.selection import select_parent
from keras_branch.search.evolution.system import EvolvedSystem, TaskPath
from keras_branch.tasks import Task

__all__ = ["DRAWS_PER_SLOT", "allowance", "ceiling", "draw_child", "trim_to_fit"]

#: How many children a candidate slot draws at most before it is recorded as
#: over the budget (drawing costs no training).
DRAWS_PER_SLOT = 16


def ceiling(system: EvolvedSystem, held: int, placing: int, everyone: Sequence[Task],
            limit: int) -> int:
    """The most parameters `system` may hold once this call has placed its `placing` new tasks.

    `held` is what the system holds now with a head for each of them.

    Every task's part of the budget is its head plus an equal share of what
    the budget leaves beyond the root and every task's head. One call
    pools the parts of the tasks it places; the parts of tasks placed
    before it (a system grown with `--add-task`) are theirs even where they
    left some unspent. Without that, a task added later could spend
    everything the earlier ones left: on Omniglot it then cloned every
    stage (4-epoch validation ranks the whole clone best) and after final
    training generalised like fine-tuning the whole root (Balinese seed 2,
    docs/evolution.md). Evolving every task in one call, the ceiling is the
    budget.

    Args:
        system: the system before this call.
        held: its parameters with a head for each new task.
        placing: how many new tasks this call places.
        everyone: the system's tasks and the new ones.
        limit: the budget, in parameters.

    Returns:
        The ceiling, in parameters.
    """
    spare = max(0, limit - system.root_params - sum(system.head_params(t) for t in everyone))
    return min(limit, held + spare * placing // len(everyone))


def allowance(system: EvolvedSystem, task: Task, everyone: Sequence[Task],
              ceiling: int) -> tuple[int, int]:
    """(the system's parameters without `task`, the most a path of `task` may add).

    Every task not yet on a path is sure of its head (a frozen path's
    cost); what `ceiling` leaves beyond those heads is shared equally among
    them, so the tasks visited first cannot spend the later ones' part.
    Once every task is placed (a second pass) a task may take all that the
    others leave under the ceiling.
    """
    base = system.params_with(task, None)
    unplaced = [t for t in everyone if t.name == task.name or t.name not in system.task_names]
    spare = ceiling - base - sum(system.head_params(t) for t in unplaced)
    return base, system.head_params(task) + max(0, spare) // len(unplaced)


def trim_to_fit(system: EvolvedSystem, task: Task, path: TaskPath, mutations: list[str],
                part: tuple[int, int]) -> int:
    """Drops adapters on the stages `path` clones, deepest first, until it fits `part`.

    An adapter on a stage the task trains itself adds nothing the block
    cannot learn, yet a child inherits its parent's adapters: the paths of
    other tasks, a late task's parents, carry them, and on Omniglot-5 the one
    child of seed 0's Balinese growth that cloned only stage 4 kept three
    and was 1,808 parameters over its part (docs/evolution.md, "Adding a
    task later"). A child within its part is left as drawn.

    Args:
        system: the system (not changed).
        task: the task visited.
        path: the child from `mutations.mutate` (clones marked by negative
            route entries); its adapters are changed in place.
        mutations: the child's description; each drop is appended as
            `drop adapter(stage d)`.
        part: `allowance`'s (parameters without the task, most it may add).

    Returns:
        The parameters the child adds, after trimming (over `part[1]` when
        dropping every such adapter is not enough).

    Example (not run as a doctest: needs an evolved system):
    >>> added = trim_to_fit(system, task, child, mutations, allowance(...))  # doctest: +SKIP
    """
    added = system.params_with(task, path) - part[0]
    for d in reversed(range(path.depth)):
        if added <= part[1]:
            break
        if path.route[d] < 0 and path.adapters[d]:
            path.adapters[d] = 0
            mutations.append(f"drop adapter(stage {d + 1})")
            added = system.params_with(task, path) - part[0]
    return added


def draw_child(system: EvolvedSystem, task: Task, population: list[dict],
               rng: np.random.Generator, num_stages: int, prob: float, clones: str,
               depths: Sequence[int], part: tuple[int, int] | None,
               adapters: str = "between", hparams: Sequence[str] | None = None,
               norms: str = "frozen",
               ) -> tuple[dict, TaskPath, list[str], int | None, list[dict]]:
    """A candidate slot's parent and child: drawn again while the child is over `part`.

    Each draw selects a parent (`selection.select_parent`), mutates it
    (`mutations.mutate`) and trims it (`trim_to_fit`). Under a budget a
    child still over the visit's part is not trained; drawing another from
    the slot's generator, up to `DRAWS_PER_SLOT` times, keeps the slot. Where
    a late task's parents carry other tasks' adapters, 18 of 24 single
    draws were over the part on Omniglot-5 (docs/evolution.md).

    Args:
        system: the system (not changed).
        task: the task visited.
        population: the visit's population (`select_parent` reads it).
        rng: the slot's generator: every draw comes from it.
        num_stages, prob, clones, depths, adapters, hparams: `mutations.mutate`'s
            arguments.
        norms: the rule setting the child's own norms (`mutations.apply_norm_rule`),
            applied before its size is checked.
        part: `allowance`'s pair, or None without a budget (one draw).

    Returns:
        (parent, child, mutations, parameters the child adds or None without
        a budget, the refused draws before it as dicts of `parent`,
        `mutations` and `added`). The child is over `part` only when every
        draw was.
    """
    refused: list[dict] = []
    while True:
        parent = select_parent(population, rng)
        path, mutations = mutate(TaskPath.from_dict(parent["path"]), num_stages, rng, prob,
                                 clones, depths, adapters, hparams)
        apply_norm_rule(system, path, norms)
        if part is None:
            return parent, path, mutations, None, refused
        added = trim_to_fit(system, task, path, mutations, part)
        if added <= part[1] or len(refused) == DRAWS_PER_SLOT - 1:
            return parent, path, mutations, added, refused
        refused.append({"parent": parent["id"], "mutations": mutations, "added": added})
