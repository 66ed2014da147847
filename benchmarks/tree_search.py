"""Tree search: exact against beam on random affinities, and beam speed before and after issue 20.

Prints three tables, measured in one run:
1. On 100 random affinity tensors (2-7 tasks, 2-4 stages, random stage sizes
   and budgets): how often the beam search (default settings, and with
   clustering candidates only) finds a tree as cheap as the exact search.
2. The same 100 cases, beam search before and after the speed-up of issue 20
   (item 3): wall time of each, and a check that both return the same trees
   with the same float costs (every tree the beam returns, not only the best).
3. Beam search at 40 and 100 tasks, 4 stages, before and after, side by side,
   with the same check. The 100-task cases are the issue's target (5x the
   shared model, under 10 s).

"Before" is `keras_branch/search/tree_search.py` as of commit `BEFORE` (the
last one that changed it before issue 20), read with `git show`; outside a git
checkout tables 2 and 3 show the current code only.

    python benchmarks/tree_search.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import ModuleType

import numpy as np

from keras_branch import Task, backbones
from keras_branch.search.tree_search import _beam_trees, _exhaustive_trees, _Sizes, _sizes, dissimilarity
from keras_branch.testing import random_affinity
from keras_branch.zoo.measure import machine_info

BEFORE = "b00ef364b2e2d24bca2724db5c33f112ec6ab6a8"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def before_module() -> ModuleType | None:
    """The tree search as of commit BEFORE, imported under another name (None without git)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:keras_branch/search/tree_search.py"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"(no comparison with the code before issue 20: git show {BEFORE[:7]} failed: {err})")
        return None
    name = "tree_search_before_issue_20"
    module = ModuleType(name)
    module.__file__ = f"{BEFORE[:7]}:keras_branch/search/tree_search.py"
    sys.modules[name] = module  # dataclasses look their module up here
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def machine() -> str:
    info = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{info['cpu']}, {info['cpu_cores']} cores, load average {load:.1f} at the start "
            f"(shared machine); the search is NumPy on the CPU, no GPU")


def random_cases(cases: int, seed: int):
    """The 100 random cases of tables 1 and 2: (dissimilarity, sizes, budget)."""
    rng = np.random.default_rng(seed)
    for _ in range(cases):
        tasks, stages = int(rng.integers(2, 8)), int(rng.integers(2, 5))
        dis = dissimilarity(random_affinity(rng, stages, tasks))
        sizes = _Sizes(int(rng.integers(0, 500)), tuple(int(x) for x in rng.integers(100, 5000, stages)))
        yield dis, sizes, int(sizes.shared * rng.uniform(1, 3))


def timed(beam, dis, sizes, budget, max_refinements=1000):
    start = time.perf_counter()
    trees = beam(dis, sizes, budget, 32, 400, max_refinements)
    return trees, time.perf_counter() - start


def best_cost(trees) -> float:
    return min(c for c, _, _ in trees)


def exact_against_beam(cases: int, seed: int) -> None:
    variants = {"beam (default)": 1000, "beam, clustering candidates only": 0}
    equal = {k: 0 for k in variants}
    excess = {k: [] for k in variants}
    seconds = {"exhaustive": 0.0, **{k: 0.0 for k in variants}}
    for dis, sizes, budget in random_cases(cases, seed):
        t = time.perf_counter()
        exact = min(c for c, p, _ in _exhaustive_trees(dis, sizes) if p <= budget)
        seconds["exhaustive"] += time.perf_counter() - t
        for label, limit in variants.items():
            trees, elapsed = timed(_beam_trees, dis, sizes, budget, limit)
            seconds[label] += elapsed
            equal[label] += best_cost(trees) <= exact + 1e-12
            excess[label].append(max(0.0, best_cost(trees) - exact))
    print(f"{cases} random affinity tensors, 2-7 tasks, 2-4 stages")
    print(f"{'method':<34} {'equal to exact':>15} {'mean excess cost':>17} {'total s':>8}")
    print(f"{'exhaustive (exact)':<34} {cases:>15} {0.0:>17.4f} {seconds['exhaustive']:>8.2f}")
    for label in variants:
        print(f"{label:<34} {equal[label]:>15} {np.mean(excess[label]):>17.4f} {seconds[label]:>8.2f}")


def before_and_after(before: ModuleType | None, cases: int, seed: int) -> bool:
    """Tables 2 and 3; True when every case gave the same trees before and after."""
    beams = {"after": _beam_trees} if before is None else {"before": before._beam_trees, "after": _beam_trees}
    all_same = True

    def compare(dis, sizes, budget, max_refinements=1000):
        nonlocal all_same
        results = {label: timed(beam, dis, sizes, budget, max_refinements) for label, beam in beams.items()}
        same = before is None or results["before"][0] == results["after"][0]  # exact: trees, params, float costs
        all_same &= same
        return results, same

    seconds = {label: 0.0 for label in beams}
    same_cases = 0
    for dis, sizes, budget in random_cases(cases, seed):
        for limit in (1000, 0):
            results, same = compare(dis, sizes, budget, limit)
            same_cases += same
            for label in beams:
                seconds[label] += results[label][1]
    print(f"beam search before and after issue 20 on the same {cases} cases "
          f"(default candidates and clustering only: {2 * cases} searches)")
    if before is not None:
        print(f"  identical results (every tree and its float cost): {same_cases} of {2 * cases}")
    print("  total s: " + ", ".join(f"{label} {s:.2f}" for label, s in seconds.items()))
    print()

    big = [(40, "blocks 5k, 20k, 80k, 300k", _Sizes(1_000, (5_000, 20_000, 80_000, 300_000)), m)
           for m in (2, 5, 10, 30)]
    heads = [Task(f"attr{i}", "binary") for i in range(100)]
    mlp_sizes = _sizes(backbones.mlp(16, widths=(16, 16, 16, 16)), heads)
    big += [(100, "blocks 5k, 20k, 80k, 300k", big[0][2], 5),
            (100, "mlp(16, 16-16-16-16), 100 heads", mlp_sizes, 5)]
    print("beam search, 4 stages, random affinity (seed 0), before and after issue 20")
    header = f"{'tasks':>5} {'sizes':<32} {'budget':>7} {'best cost':>19} {'same trees':>10}"
    print(header + "".join(f" {label + ' s':>9}" for label in beams) + (f" {'speed-up':>8}" if before else ""))
    for tasks, label, sizes, multiple in big:
        dis = dissimilarity(random_affinity(np.random.default_rng(seed), 4, tasks))
        results, same = compare(dis, sizes, sizes.shared * multiple)
        times = [results[b][1] for b in beams]
        row = (f"{tasks:>5} {label:<32} {f'{multiple}x':>7} {best_cost(results['after'][0]):>19.16f} "
               f"{('yes' if same else 'NO') if before else '-':>10}")
        print(row + "".join(f" {t:>9.2f}" for t in times) + (f" {times[0] / times[1]:>7.1f}x" if before else ""))
    return all_same


def main(cases: int = 100, seed: int = 0) -> None:
    print(f"machine: {machine()}")
    print()
    exact_against_beam(cases, seed)
    print()
    if not before_and_after(before_module(), cases, seed):
        raise SystemExit("The beam search returned other trees than before issue 20.")


if __name__ == "__main__":
    main()
