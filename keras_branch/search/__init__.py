"""Searches that produce TreeSpecs: task affinity (RSA, TAG), Learning to Branch, evolution."""

import warnings

from keras_branch.search.affinity import TaskAffinity, rdm, rdm_affinity, spearman, task_affinity
from keras_branch.search.evolution import (
    EvolvedSystem,
    TaskPath,
    evolve,
    mutate,
    pretrain_and_evolve,
)
from keras_branch.search.learn_to_branch import (
    BranchingSupernet,
    build_supernet,
    extract_model,
    extract_spec,
    learn_to_branch,
    partition_ari,
    partition_is_pure,
)
from keras_branch.search.partitions import adjusted_rand_index
from keras_branch.search.tree_search import BranchResult, Tree, branch, pareto_front, tree_cost
from keras_branch.search.result import SearchResult
from keras_branch.search.tag import LookaheadMeter, affinity_from_z, tag_affinity
from keras_branch.search.workflow import affinity_search, budget_for_blocks

__all__ = [
    "BranchingSupernet",
    "BranchResult",
    "EvolvedSystem",
    "LookaheadMeter",
    "SearchResult",
    "TaskAffinity",
    "TaskPath",
    "Tree",
    "adjusted_rand_index",
    "affinity_from_z",
    "affinity_search",
    "branch",
    "budget_for_blocks",
    "build_supernet",
    "evolve",
    "extract_model",
    "extract_spec",
    "learn_to_branch",
    "mutate",
    "partition_ari",
    "partition_is_pure",
    "pareto_front",
    "pretrain_and_evolve",
    "rdm",
    "rdm_affinity",
    "spearman",
    "tag_affinity",
    "task_affinity",
    "tree_cost",
]


def __getattr__(name: str):
    # `Path`, TaskPath's old name, shadowed `pathlib.Path`: a deprecated alias only.
    if name == "Path":
        warnings.warn("`Path` is deprecated; use `TaskPath`.", DeprecationWarning, stacklevel=2)
        return TaskPath
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
