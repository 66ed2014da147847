"""TAG on 40 planted tasks (8 groups of 5): its cost against one training, and the groups it finds.

For every backbone and seed, on `planted_groups(group_sizes=GROUPS, dim=100)`
(`--groups`, default 8 groups of 5; 4000 training samples, every sample
labelled for every task):

* `TAG s`: `tag_affinity` (Adam, `--epochs`, batch 64, lookahead every
  `--every` steps at rate `--lookahead-lr`, default the training's 1e-3),
  wall time, tracing included;
* `loop s` (with `--loop`): the same call with one lookahead only (`every`
  beyond the run): TAG's training loop alone, so `TAG s - loop s` is the
  lookaheads' cost;
* `shared s`: one training of the fully shared model as the library does it,
  `fit_spec(TreeSpec.shared(...))` (`model.fit` with per-task metrics, same
  epochs, batch, learning rate and seed; no validation and no scoring);
* `tree s`: the tree search on TAG's affinity;
* `ratio`: `(TAG s + tree s) / shared s`, the whole search against one
  training (issue 20's target: at most 1.5);
* `separable`: the stages at which every within-group affinity exceeds every
  across-group one (1-based);
* the tree search (`branch`) on TAG's affinity with a budget that buys one
  block per stage, one per group at the group stage and one per task at the
  last (`[1, 8, 40]`, or `[1, 1, 8, 40]` for the 4-stage MLP): the blocks per
  stage it chose and the adjusted Rand index of its group-stage partition
  against the planted groups (1.0: the groups exactly);
* with `--rsa`, the RSA affinity search (`probe_epochs` 3, the demo's) under
  the same budget: its blocks, ARI and wall time, for comparison.

Prints one table, side by side; the machine is named above it; `--json`
writes the rows.

    python benchmarks/tag_planted.py                     # both MLPs, seeds 0, 1, 2
    python benchmarks/tag_planted.py --stages 64,64,16 --rsa
    python benchmarks/tag_planted.py --groups 4-4-6-6-4-6-5-5 --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json

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
from planted_common import group_blocks, machine, timed, warm_up

GROUPS = (5,) * 8


def separable_stages(values: np.ndarray, planted: list[int]) -> list[int]:
    """1-based stages where every within-group affinity exceeds every across-group one."""
    same = np.equal.outer(planted, planted)
    within = same & ~np.eye(len(planted), dtype=bool)
    return [d + 1 for d, a in enumerate(values) if a[within].min() > a[~same].max()]


def run(widths: tuple[int, ...], seed: int, args: argparse.Namespace) -> dict:
    groups = args.groups
    data = planted_groups(group_sizes=groups, dim=100, seed=seed)
    train_only = MultiTaskData(data.tasks, {"train": data.split("train")}, data.info, data.name)
    bb = backbones.mlp(100, widths)
    names = data.task_names
    planted = labels_from_groups(names, data.info["partition"])
    recipe = dict(epochs=args.epochs, batch_size=64, learning_rate=1e-3, seed=seed)
    affinity, tag_s = timed(tag_affinity, data, bb, every=args.every,
                            lookahead_lr=args.lookahead_lr, log=None, **recipe)
    loop_s = None  # not measured (JSON null)
    if args.loop:
        steps = args.epochs * data.steps("train", 64)
        _, loop_s = timed(tag_affinity, data, bb, every=steps, lookahead_lr=args.lookahead_lr,
                          log=None, **recipe)
    _, shared_s = timed(fit_spec, TreeSpec.shared(names, bb.num_stages), bb, train_only,
                        verbose=0, eval_splits=(), log=None, **recipe)
    blocks = group_blocks(bb.num_stages, groups)
    budget = budget_for_blocks(bb, data.tasks, blocks)
    stage = len(blocks) - 2
    tree, tree_s = timed(branch, affinity, bb, data.tasks, budget)
    row = {
        "widths": "-".join(map(str, widths)), "groups": list(groups), "seed": seed,
        "tag_s": tag_s, "loop_s": loop_s, "tree_s": tree_s,
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", action="append",
                        help="MLP widths, comma-separated; repeat for several "
                             "(default: 64,64,16 (the demo's) and 64,64,64,16)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lookahead-lr", type=float, default=None,
                        help="lookahead rate (default: the training's, 1e-3)")
    parser.add_argument("--groups", default="-".join(map(str, GROUPS)),
                        help="planted group sizes, e.g. 4-4-6-6-4-6-5-5")
    parser.add_argument("--loop", action="store_true",
                        help="also time TAG's training loop alone (one more training per row)")
    parser.add_argument("--rsa", action="store_true", help="also run the RSA search (40 probes)")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.groups = tuple(int(g) for g in args.groups.split("-"))
    stages = [tuple(int(w) for w in s.split(",")) for s in (args.stages or ["64,64,16", "64,64,64,16"])]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine()}")
    print(f"planted groups {args.groups} ({sum(args.groups)} regression tasks), dim 100, 4000 "
          f"training samples; {args.epochs} epochs, batch 64, Adam 1e-3; TAG every {args.every} "
          f"steps, lookahead rate {args.lookahead_lr or 'the training rate'}")
    warm_up()
    header = (f"{'MLP':<12} {'seed':>4} {'TAG s':>7} {'loop s':>7} {'tree s':>6} {'shared s':>8} "
              f"{'ratio':>6} "
              f"{'lookaheads':>10} {'separable':>10} {'TAG tree':>14} {'ARI':>6}")
    if args.rsa:
        header += f" {'RSA tree':>14} {'ARI':>6} {'RSA s':>7}"
    print(header)
    rows = []
    for widths in stages:
        for seed in seeds:
            row = run(widths, seed, args)
            rows.append(row)
            ratio = (row['tag_s'] + row['tree_s']) / row['shared_s']
            loop = "-" if row["loop_s"] is None else f"{row['loop_s']:.1f}"
            line = (f"{row['widths']:<12} {seed:>4} {row['tag_s']:>7.1f} {loop:>7} "
                    f"{row['tree_s']:>6.1f} {row['shared_s']:>8.1f} {ratio:>6.2f} "
                    f"{row['lookaheads']:>10} {','.join(map(str, row['separable'])) or '-':>10} "
                    f"{str(row['blocks']):>14} {row['ari']:>6.3f}")
            if args.rsa:
                line += f" {str(row['rsa_blocks']):>14} {row['rsa_ari']:>6.3f} {row['rsa_s']:>7.1f}"
            print(line, flush=True)
            if args.json:  # rows so far survive an interrupted run
                with open(args.json, "w") as f:
                    json.dump({"machine": machine(), "settings": {
                        k: v for k, v in vars(args).items() if k != "json"}, "rows": rows}, f,
                        indent=1)
    return rows


if __name__ == "__main__":
    main()
