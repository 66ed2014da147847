"""Tree search: exact against beam on random affinities, and beam speed at 40 tasks.

Prints two tables, measured in one run:
1. On 100 random affinity tensors (2-7 tasks, 2-4 stages, random stage sizes
   and budgets): how often the beam search (default settings, and with
   clustering candidates only) finds a tree as cheap as the exact search.
2. Beam search wall time for 40 tasks and 4 stages at several budgets.

    python benchmarks/tree_search.py
"""

from __future__ import annotations

import time

import numpy as np

from keras_branch.search.tree_search import _beam_trees, _exhaustive_trees, _Sizes, dissimilarity
from keras_branch.testing import random_affinity


def main(cases: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    variants = {"beam (default)": 1000, "beam, clustering candidates only": 0}
    equal = {k: 0 for k in variants}
    excess = {k: [] for k in variants}
    seconds = {"exhaustive": 0.0, **{k: 0.0 for k in variants}}
    for _ in range(cases):
        tasks, stages = int(rng.integers(2, 8)), int(rng.integers(2, 5))
        dis = dissimilarity(random_affinity(rng, stages, tasks))
        sizes = _Sizes(int(rng.integers(0, 500)), tuple(int(x) for x in rng.integers(100, 5000, stages)))
        budget = int(sizes.shared * rng.uniform(1, 3))
        t = time.perf_counter()
        exact = min(c for c, p, _ in _exhaustive_trees(dis, sizes) if p <= budget)
        seconds["exhaustive"] += time.perf_counter() - t
        for label, limit in variants.items():
            t = time.perf_counter()
            found = min(c for c, _, _ in _beam_trees(dis, sizes, budget, 32, 400, limit))
            seconds[label] += time.perf_counter() - t
            equal[label] += found <= exact + 1e-12
            excess[label].append(max(0.0, found - exact))
    print(f"{cases} random affinity tensors, 2-7 tasks, 2-4 stages")
    print(f"{'method':<34} {'equal to exact':>15} {'mean excess cost':>17} {'total s':>8}")
    print(f"{'exhaustive (exact)':<34} {cases:>15} {0.0:>17.4f} {seconds['exhaustive']:>8.2f}")
    for label in variants:
        print(f"{label:<34} {equal[label]:>15} {np.mean(excess[label]):>17.4f} {seconds[label]:>8.2f}")

    print()
    stage_params = (5_000, 20_000, 80_000, 300_000)
    sizes = _Sizes(1_000, stage_params)
    dis = dissimilarity(random_affinity(np.random.default_rng(seed), 4, 40))
    print(f"beam search, 40 tasks, 4 stages (block sizes {stage_params})")
    print(f"{'budget':>16} {'seconds':>8} {'best cost':>10}")
    for multiple in (2, 5, 10, 30):
        t = time.perf_counter()
        trees = _beam_trees(dis, sizes, sizes.shared * multiple, 32, 400, 1000)
        elapsed = time.perf_counter() - t
        print(f"{f'{multiple}x shared':>16} {elapsed:>8.2f} {min(c for c, _, _ in trees):>10.4f}")


if __name__ == "__main__":
    main()
