import itertools

import numpy as np
import pytest

from keras_branch import SearchError, Task, backbones, build_model
from keras_branch.search import branch, pareto_front, tree_cost
from keras_branch.search.partitions import (
    adjusted_rand_index,
    all_partitions,
    bell,
    canonical,
    refinements,
    refines,
)
from keras_branch.search.tree_search import _beam_trees, _exhaustive_trees, _Sizes, dissimilarity
from keras_branch.testing import random_affinity


def test_partition_enumeration():
    assert [sum(1 for _ in all_partitions(n)) for n in range(1, 8)] == [bell(n) for n in range(1, 8)]
    assert [bell(n) for n in range(1, 8)] == [1, 2, 5, 15, 52, 203, 877]
    coarse = (0, 0, 1, 1, 1)
    fine = list(refinements(coarse))
    assert len(fine) == len(set(fine)) == 2 * 5
    assert all(refines(f, coarse) for f in fine)
    assert sum(refines(p, coarse) for p in all_partitions(5)) == 10
    assert canonical([7, 7, 3, 9]) == (0, 0, 1, 2)


def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == 1.0
    # A reference value (sklearn's adjusted_rand_score gives 0.24242...)
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.242424, abs=1e-6)


def brute_force(dis, sizes, budget):
    """Every nested chain, enumerated directly."""
    tasks = dis.shape[1]
    best = np.inf
    for chain in itertools.product(list(all_partitions(tasks)), repeat=dis.shape[0]):
        if not all(refines(chain[d + 1], chain[d]) for d in range(len(chain) - 1)):
            continue
        if sizes.params([max(p) + 1 for p in chain]) > budget:
            continue
        best = min(best, tree_cost(1.0 - dis, chain))
    return best


def test_exhaustive_equals_brute_force_on_small_cases():
    rng = np.random.default_rng(7)
    for _ in range(12):
        tasks, stages = int(rng.integers(2, 5)), int(rng.integers(1, 4))
        dis = dissimilarity(random_affinity(rng, stages, tasks))
        sizes = _Sizes(10, tuple(int(x) for x in rng.integers(10, 100, stages)))
        budget = int(sizes.shared * rng.uniform(1, 3))
        exact = min(c for c, p, _ in _exhaustive_trees(dis, sizes) if p <= budget)
        assert exact == pytest.approx(brute_force(dis, sizes, budget), abs=1e-12)


def test_beam_matches_exhaustive_on_100_random_tensors():
    rng = np.random.default_rng(0)
    for _ in range(100):
        tasks, stages = int(rng.integers(2, 8)), int(rng.integers(2, 5))
        dis = dissimilarity(random_affinity(rng, stages, tasks))
        sizes = _Sizes(int(rng.integers(0, 500)), tuple(int(x) for x in rng.integers(100, 5000, stages)))
        budget = int(sizes.shared * rng.uniform(1, 3))
        exact = min(c for c, p, _ in _exhaustive_trees(dis, sizes) if p <= budget)
        beam = min(c for c, _, _ in _beam_trees(dis, sizes, budget, 32, 400, 1000))
        assert beam == pytest.approx(exact, abs=1e-12)


def test_branch_result_is_buildable_and_within_budget():
    rng = np.random.default_rng(3)
    tasks = [Task(f"t{i}", "regression") for i in range(5)]
    bb = backbones.mlp(6, widths=(8, 8, 4))
    for method in ("exhaustive", "beam"):
        result = branch(random_affinity(rng, 3, 5), bb, tasks, "2x", method=method)
        model = build_model(result.spec, bb, tasks)
        assert model.count_params() == result.params <= result.budget
        assert result.budget == int(2 * result.shared_params)
        assert result.spec.is_tree
        assert result.cost == pytest.approx(sum(result.stage_costs))


def test_pareto_front_is_monotone_and_contains_the_budgeted_choice():
    rng = np.random.default_rng(4)
    tasks = [Task(f"t{i}", "binary") for i in range(5)]
    bb = backbones.mlp(6, widths=(8, 8, 4))
    affinity = random_affinity(rng, 3, 5)
    front = pareto_front(affinity, bb, tasks)
    params = [t.params for t in front]
    costs = [t.cost for t in front]
    assert params == sorted(params) and all(a > b for a, b in zip(costs, costs[1:]))
    assert front[0].blocks_per_stage == [1, 1, 1]
    assert front[-1].cost == 0.0  # every task alone at every stage
    for tree in front[1:-1]:
        chosen = branch(affinity, bb, tasks, tree.params)
        assert chosen.cost == pytest.approx(tree.cost) and chosen.params == tree.params


def test_forty_tasks_four_stages_beam():
    rng = np.random.default_rng(5)
    tasks = [Task(f"attr{i}", "binary") for i in range(40)]
    bb = backbones.mlp(16, widths=(16, 16, 16, 16))
    result = branch(random_affinity(rng, 4, 40), bb, tasks, "3x")
    assert result.method == "beam"
    assert result.params <= result.budget
    assert result.spec.is_tree and result.spec.num_tasks == 40


@pytest.mark.parametrize(
    "affinity, budget, fragment",
    [
        (np.ones((3, 4, 4)), "0.5x", "No tree fits `budget`='0.5x'"),
        (np.ones((3, 4, 4)), 10, "the fully shared model, the smallest tree, has"),
        (np.ones((3, 4, 4)), "lots", "Received: 'lots'"),
        (np.ones((3, 4, 3)), "2x", "shape [stages, tasks, tasks]. Received shape (3, 4, 3)"),
        (np.ones((4, 4)), "2x", "Received shape (4, 4)"),
        (np.where(np.eye(4) > 0, np.nan, 1.0)[None].repeat(3, 0), "2x", "non-finite value nan"),
        (np.ones((2, 4, 4)), "2x", "has 2 stage(s) but backbone 'mlp' has 3"),
        (np.ones((3, 5, 5)), "2x", "covers 5 tasks but 4 tasks were given"),
    ],
)
def test_bad_search_input(affinity, budget, fragment):
    tasks = [Task(f"t{i}", "regression") for i in range(4)]
    with pytest.raises(SearchError) as err:
        branch(affinity, backbones.mlp(6, widths=(8, 8, 4)), tasks, budget)
    assert fragment in str(err.value)


def test_exhaustive_refuses_many_tasks():
    tasks = [Task(f"t{i}", "regression") for i in range(12)]
    with pytest.raises(SearchError, match="use method='beam'"):
        branch(np.ones((3, 12, 12)), backbones.mlp(6, widths=(8, 8, 4)), tasks, "2x", method="exhaustive")
