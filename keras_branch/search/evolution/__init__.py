"""muNet evolution: grow a trained root into a multi-task system, task by task.

Every task gets a *path* through the system (`TaskPath`): per stage a block
id (shared and frozen, or a task-owned trainable clone), residual adapters, a
depth, its own head and its own hyperparameters. The system
(`EvolvedSystem`) is an evolved `TreeSpec` (routes + `depths`, `adapters`,
`hparams`) plus one weight per component, so it builds with the same builder
as any tree.

Per task visit (round robin over the tasks, `passes` times):

1. The population is the root path, every other task's path and the task's
   own current path (on a later pass).
2. A parent is drawn: sorted by score, each accepted with probability
   `0.5 ** children`; when none is, a random one (`select_parent`).
3. The child applies each mutation with probability `mutation_prob`: clone
   a block (a trainable copy of a frozen one; with `clones="suffix"`, the
   default, every later stage too), insert a zero-initialised adapter
   (with `adapters="between"`, the default, not after the path's last
   stage), change the depth by one (with `depth_moves="shape"`, the default, only
   among depths whose head input has the full depth's size,
   `allowed_depths`), move one hyperparameter one step along its list
   (`mutate`; with `candidate_hparams="final"` the learning rate and batch
   size stay at the final training's, `fixed_hparams`). With `norms="task"`
   the child then owns the batch norms of every block it shares
   (`apply_norm_rule`).
4. With a `budget`, a child that would add more parameters than its
   task's part of the budget (`EvolvedSystem.params_with`) first drops the
   adapters on stages it clones, then is drawn again (steps 2-3, up to
   `DRAWS_PER_SLOT` times, `draw_child`); a slot whose every draw is over
   is recorded and not trained.
5. The child trains its own components (clones, adapters, head) for
   `candidate_epochs` on the task's data; frozen blocks never change.
   It is scored `quality * scale ** (accounted_params / root_params)`
   (`score`; shared blocks divided by their users, the root counting as a
   user of its own) and joins the population when it beats its parent.
6. At the end of the visit the best path is installed. Components already
   in the system are never modified, so old tasks never change (their
   outputs stay bit-identical).

The search writes its whole state after every candidate (`state_dir`); a
rerun with the same arguments resumes where it stopped, keeping every scored
candidate.

Modules: `system` (EvolvedSystem, TaskPath), `mutations`, `selection`
(parent selection and the score), `budget` (each task's part of the
budget, children drawn to fit it), `candidates` (a candidate's model and its
training), `state` (the resumable state folder), `weights` (component weight
files), `loop` (`evolve`, `pretrain_and_evolve`), `cli` (`keras-branch
evolve`).

Example (not run as a doctest: evolution trains candidate networks for
minutes; `docs/evolution.md` runs a small one):
>>> from keras_branch.search.evolution import evolve
>>> result = evolve(root_model, ["Latin"], data, scale=0.9, candidates=8)  # doctest: +SKIP

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022.
"""

from __future__ import annotations

import warnings

from keras_branch.search.evolution.budget import DRAWS_PER_SLOT, draw_child, trim_to_fit
from keras_branch.search.evolution.candidates import (
    CANDIDATE_HPARAMS,
    CANDIDATE_STARTS,
    FINAL_STARTS,
    fixed_hparams,
)
from keras_branch.search.evolution.loop import (
    check_evolve_args,
    evolve,
    pretrain_and_evolve,
    pretrain_root,
)
from keras_branch.search.evolution.mutations import (
    ADAPTER_STAGES,
    CLONE_RULES,
    DEPTH_MOVES,
    HPARAM_LISTS,
    MUTATIONS,
    NORM_RULES,
    allowed_depths,
    apply_norm_rule,
    mutate,
)
from keras_branch.search.evolution.selection import candidate_rng, quality, score, select_parent
from keras_branch.search.evolution.state import STATE_FILE, SearchState
from keras_branch.search.evolution.system import (
    DEFAULT_HPARAMS,
    SYSTEM_FILES,
    EvolvedSystem,
    TaskPath,
)

__all__ = [
    "ADAPTER_STAGES",
    "CANDIDATE_HPARAMS",
    "CANDIDATE_STARTS",
    "CLONE_RULES",
    "DEFAULT_HPARAMS",
    "DEPTH_MOVES",
    "DRAWS_PER_SLOT",
    "FINAL_STARTS",
    "HPARAM_LISTS",
    "MUTATIONS",
    "NORM_RULES",
    "STATE_FILE",
    "SYSTEM_FILES",
    "EvolvedSystem",
    "SearchState",
    "TaskPath",
    "allowed_depths",
    "apply_norm_rule",
    "candidate_rng",
    "check_evolve_args",
    "draw_child",
    "evolve",
    "fixed_hparams",
    "mutate",
    "pretrain_and_evolve",
    "pretrain_root",
    "quality",
    "score",
    "select_parent",
    "trim_to_fit",
]


def __getattr__(name: str):
    # `Path` was TaskPath's name; it shadowed `pathlib.Path`, so it is kept
    # only as a deprecated alias (never exported by `import *`).
    if name == "Path":
        warnings.warn("`Path` is deprecated; use `TaskPath`.", DeprecationWarning, stacklevel=2)
        return TaskPath
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
