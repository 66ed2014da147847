"""TAG on 40 planted tasks (8 groups of 5): its cost against one training, and the groups it finds.

For every backbone and seed, on `planted_groups(group_sizes=(5,) * 8, dim=100)`
(4000 training samples, every sample labelled for every task):

* `TAG s`: `tag_affinity` (Adam, `--epochs`, batch 64, lookahead every
  `--every` steps at rate `--lookahead-lr`), wall time, tracing included;
* `loop s`: the same call with one lookahead only (`every` beyond the run):
  TAG's training loop alone, so `TAG s - loop s` is the lookaheads' cost;
* `shared s`: one training of the fully shared model as the library does it,
  `fit_spec(TreeSpec.shared(...))` (`model.fit` with per-task metrics, same
  epochs, batch, learning rate and seed; no validation and no scoring);
* `ratio`: `TAG s / shared s` (issue 20's target: at most 1.5);
* `separable`: the stages at which every within-group affinity exceeds every
  across-group one (1-based);
* the tree search (`branch`) on TAG's affinity with a budget that buys one
  block per stage, 8 at the group stage and 40 at the last (`[1, 8, 40]`, or
  `[1, 1, 8, 40]` for the 4-stage MLP): the blocks per stage it chose and the
  adjusted Rand index of its group-stage partition against the planted groups
  (1.0: the groups exactly);
* with `--rsa`, the RSA affinity search (`probe_epochs` 3, the demo's) under
  the same budget: its blocks, ARI and wall time, for comparison.

Prints one table, side by side; the machine is named above it.

    python benchmarks/tag_planted.py                     # both MLPs, seeds 0, 1, 2
    python benchmarks/tag_planted.py --stages 64,64,16 --rsa
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

from keras_branch import TreeSpec, backbones
from keras_branch.data import MultiTaskData, planted_groups
from keras_branch.search import (
    adjusted_rand_index,
    affinity_search,
    branch,
    budget_for_blocks,
    tag_affinity,
)
from keras_branch.search.partitions import labels_from_groups
from keras_branch.training import fit_spec
from keras_branch.zoo.measure import machine_info

GROUPS = (5,) * 8


def machine() -> str:
    info = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{info['cpu']}, {info['cpu_cores']} cores, no GPU, shared with other jobs "
            f"(load average {load:.1f} at the start)")


def group_blocks(num_stages: int) -> list[int]:
    """One block per stage, 8 at the group stage (the one before the last), 40 at the last."""
    return [1] * (num_stages - 2) + [len(GROUPS), sum(GROUPS)]


def separable_stages(values: np.ndarray, planted: list[int]) -> list[int]:
    """1-based stages where every within-group affinity exceeds every across-group one."""
    same = np.equal.outer(planted, planted)
    within = same & ~np.eye(len(planted), dtype=bool)
    return [d + 1 for d, a in enumerate(values) if a[within].min() > a[~same].max()]


def timed(function, *args, **kwargs):
    # The previous run's objects are freed here, not inside the next timed call.
    gc.collect()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(widths: tuple[int, ...], seed: int, args: argparse.Namespace) -> dict:
    data = planted_groups(group_sizes=GROUPS, dim=100, seed=seed)
    train_only = MultiTaskData(data.tasks, {"train": data.split("train")}, data.info, data.name)
    bb = backbones.mlp(100, widths)
    names = data.task_names
    planted = labels_from_groups(names, data.info["partition"])
    recipe = dict(epochs=args.epochs, batch_size=64, learning_rate=1e-3, seed=seed)
    affinity, tag_s = timed(tag_affinity, data, bb, every=args.every,
                            lookahead_lr=args.lookahead_lr, log=None, **recipe)
    steps = args.epochs * data.steps("train", 64)
    _, loop_s = timed(tag_affinity, data, bb, every=steps, lookahead_lr=args.lookahead_lr,
                      log=None, **recipe)
    _, shared_s = timed(fit_spec, TreeSpec.shared(names, bb.num_stages), bb, train_only,
                        verbose=0, eval_splits=(), log=None, **recipe)
    blocks = group_blocks(bb.num_stages)
    budget = budget_for_blocks(bb, data.tasks, blocks)
    stage = len(blocks) - 2
    tree = branch(affinity, bb, data.tasks, budget)
    row = {
        "widths": "-".join(map(str, widths)), "seed": seed, "tag_s": tag_s, "loop_s": loop_s,
        "shared_s": shared_s, "lookaheads": affinity.info["measured_steps"],
        "separable": separable_stages(affinity.values, planted),
        "blocks": tree.spec.blocks_per_stage(),
        "ari": adjusted_rand_index(labels_from_groups(names, tree.spec.partition(stage)), planted),
    }
    if args.rsa:
        rsa, row["rsa_s"] = timed(affinity_search, data, bb, budget, probe_epochs=3, seed=seed,
                                  log=None)
        row["rsa_blocks"] = rsa.spec.blocks_per_stage()
        row["rsa_ari"] = adjusted_rand_index(labels_from_groups(names, rsa.spec.partition(stage)),
                                             planted)
    return row


def warm_up() -> None:
    """One tiny TAG run and one tiny fit, so TensorFlow's one-off start-up costs neither column."""
    data = planted_groups(group_sizes=(2, 2), num_train=64, num_validation=8, num_test=8)
    bb = backbones.mlp(100, (8, 8))
    tag_affinity(data, bb, epochs=1, log=None)
    fit_spec(TreeSpec.shared(data.task_names, 2), bb, data, epochs=1, verbose=0, eval_splits=(),
             log=None)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", action="append",
                        help="MLP widths, comma-separated; repeat for several "
                             "(default: 64,64,16 (the demo's) and 64,64,64,16)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lookahead-lr", type=float, default=0.01)
    parser.add_argument("--rsa", action="store_true", help="also run the RSA search (40 probes)")
    args = parser.parse_args(argv)
    stages = [tuple(int(w) for w in s.split(",")) for s in (args.stages or ["64,64,16", "64,64,64,16"])]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine()}")
    print(f"planted groups {GROUPS} (40 regression tasks), dim 100, 4000 training samples; "
          f"{args.epochs} epochs, batch 64, Adam 1e-3; TAG every {args.every} steps, "
          f"lookahead rate {args.lookahead_lr}")
    warm_up()
    header = (f"{'MLP':<12} {'seed':>4} {'TAG s':>7} {'loop s':>7} {'shared s':>8} {'ratio':>6} "
              f"{'lookaheads':>10} {'separable':>10} {'TAG tree':>14} {'ARI':>6}")
    if args.rsa:
        header += f" {'RSA tree':>14} {'ARI':>6} {'RSA s':>7}"
    print(header)
    rows = []
    for widths in stages:
        for seed in seeds:
            row = run(widths, seed, args)
            rows.append(row)
            line = (f"{row['widths']:<12} {seed:>4} {row['tag_s']:>7.1f} {row['loop_s']:>7.1f} "
                    f"{row['shared_s']:>8.1f} {row['tag_s'] / row['shared_s']:>6.2f} "
                    f"{row['lookaheads']:>10} {','.join(map(str, row['separable'])) or '-':>10} "
                    f"{str(row['blocks']):>14} {row['ari']:>6.3f}")
            if args.rsa:
                line += f" {str(row['rsa_blocks']):>14} {row['rsa_ari']:>6.3f} {row['rsa_s']:>7.1f}"
            print(line, flush=True)
    return rows


if __name__ == "__main__":
    main()
