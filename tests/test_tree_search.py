import itertools

import numpy as np
import pytest

from keras_branch import SearchError, Task, backbones, build_model
from keras_branch.search import branch, pareto_front, tree_cost
from keras_branch.search.partitions import (
    adjusted_rand_index,
    all_partitions,
    bell,
    block_refinements,
    canonical,
    count_block_refinements,
    count_refinements,
    from_blocks,
    groups,
    members,
    refinements,
    refines,
    to_blocks,
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


def test_blocks_are_a_canonical_form_with_the_same_refinements_in_the_same_order():
    assert to_blocks((0, 0, 1, 0, 2)) == (0b1011, 0b100, 0b10000)
    assert members(0b1011) == [0, 1, 3] and members(1 << 99) == [99]
    for p in all_partitions(6):
        assert from_blocks(to_blocks(p), 6) == p
    for coarse in [(0, 0, 1, 1, 1), (0, 1, 0, 2, 1, 0, 0), (0,) * 6, tuple(range(5))]:
        fine = [to_blocks(q) for q in refinements(coarse)]
        assert list(block_refinements(to_blocks(coarse))) == fine  # the beam keeps this order
        assert count_block_refinements(to_blocks(coarse)) == count_refinements(coarse) == len(fine)


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


def best_beam_tree(dis, sizes, budget, max_refinements=1000):
    """The tree `branch` would pick from the beam: cheapest, ties to the smaller."""
    trees = _beam_trees(dis, sizes, budget, 32, 400, max_refinements)
    return min(trees, key=lambda t: (round(t[0], 12), t[1]))


def test_beam_on_a_hand_checked_case():
    # Stage 1: two clear pairs {0, 1} and {2, 3} (dissimilarity 0.2 inside, 1.5
    # across); stage 0: all alike. The budget buys one block at stage 0 and two
    # at stage 1, so the best tree shares stage 0 and splits the pairs:
    # cost 0 + (0.2 + 0.2) / 2 = 0.2. (Two blocks at stage 0 would need 220.)
    affinity = np.ones((2, 4, 4))
    affinity[1] = -0.5
    affinity[1, :2, :2] = affinity[1, 2:, 2:] = 0.8
    for d in range(2):
        np.fill_diagonal(affinity[d], 1.0)
    cost, params, chain = best_beam_tree(dissimilarity(affinity), _Sizes(0, (10, 100)), 210)
    assert chain == ((0, 0, 0, 0), (0, 0, 1, 1))
    assert params == 210 and cost == pytest.approx(0.2, abs=1e-12)


def test_beam_matches_exhaustive_at_eight_tasks():
    # 8 tasks is the exhaustive search's limit. The root has Bell(8) = 4140
    # refinements: with max_refinements >= 4140 the beam enumerates them all and
    # must find the exact optimum (the default 1000 clusters instead and may not).
    # The two sum a tree's stage costs in different orders: equal to 1e-12.
    rng = np.random.default_rng(21)
    for stages in (2, 3):
        dis = dissimilarity(random_affinity(rng, stages, 8))
        sizes = _Sizes(int(rng.integers(0, 500)), tuple(int(x) for x in rng.integers(100, 5000, stages)))
        budget = int(sizes.shared * rng.uniform(1.5, 3))
        exact = min(c for c, p, _ in _exhaustive_trees(dis, sizes) if p <= budget)
        cost, params, _ = best_beam_tree(dis, sizes, budget, max_refinements=bell(8))
        assert params <= budget and cost == pytest.approx(exact, abs=1e-12)


def multi_task_groups(chain):
    return [[g for g in groups(p) if len(g) > 1] for p in chain]


# Chosen trees and costs of the beam search before its speed-up (issue 20, the
# code of commit b00ef36), recorded with that code: the faster one must return
# the same, float for float. (benchmarks/tree_search.py compares every tree the
# two return on 100 random cases and at 40 and 100 tasks.)
@pytest.mark.parametrize(
    "seed, tasks, sizes, multiple, cost, params, big_group, stage0_pair, count, cost_sum",
    [
        (11, 12, _Sizes(300, (1000, 2000, 4000)), 3, 2.44341575926891, 20300,
         [0, 1, 2, 3, 4, 6, 7, 8, 9, 11], [5, 10], 49, 210.50729450863372),
        (12, 30, _Sizes(1000, (5000, 20000, 80000, 300000)), 5, 1.6240921681020515, 2021000,
         [t for t in range(29) if t not in (10, 13, 15)], [10, 15], 400, 1935.9611741201045),
    ],
)
def test_beam_returns_the_trees_it_returned_before_the_speed_up(
    seed, tasks, sizes, multiple, cost, params, big_group, stage0_pair, count, cost_sum
):
    dis = dissimilarity(random_affinity(np.random.default_rng(seed), len(sizes.stages), tasks))
    trees = _beam_trees(dis, sizes, sizes.shared * multiple, 32, 400, 1000)
    found_cost, found_params, chain = min(trees, key=lambda t: (round(t[0], 12), t[1]))
    assert (found_cost, found_params) == (cost, params)  # exact float
    # Stage 0: one big group and one pair; deeper: the big group only; the rest alone.
    assert multi_task_groups(chain) == [[big_group, stage0_pair]] + [[big_group]] * (len(sizes.stages) - 1)
    assert len(trees) == count and sum(t[0] for t in trees) == pytest.approx(cost_sum, abs=1e-9)


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
    # As before the speed-up of issue 20 (recorded with the code of commit b00ef36):
    assert (result.cost, result.params) == (1.921041310972236, 5304)
    assert result.stage_costs == [0.6638140969437617, 0.4823629910112305, 0.38962295087201565, 0.38524127214522813]
    shared = [f"attr{i}" for i in range(1, 39) if i != 6]
    assert [[g for g in result.spec.partition(d) if len(g) > 1] for d in range(4)] == [
        [["attr0"] + shared], [shared], [[n for n in shared if n != "attr31"]], [[n for n in shared if n != "attr31"]]
    ]


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
