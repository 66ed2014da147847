"""Searches that produce TreeSpecs: task affinity, Learning to Branch, evolution."""

from keras_branch.search.affinity import TaskAffinity, rdm, rdm_affinity, spearman, task_affinity
from keras_branch.search.evolve import (
    EvolvedSystem,
    EvolveResult,
    Path,
    evolve,
    mutate,
    pretrain_and_evolve,
)
from keras_branch.search.learn_to_branch import (
    BranchingResult,
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
from keras_branch.search.workflow import (
    AffinitySearchResult,
    affinity_search,
    budget_for_blocks,
    save_search,
)

__all__ = [
    "AffinitySearchResult",
    "BranchingResult",
    "BranchingSupernet",
    "BranchResult",
    "EvolveResult",
    "EvolvedSystem",
    "Path",
    "TaskAffinity",
    "Tree",
    "adjusted_rand_index",
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
    "save_search",
    "spearman",
    "task_affinity",
    "tree_cost",
]
