"""Learning to Branch on planted task groups: does the search find the planted tree?

Planted groups (3, 3, 2): 8 regression tasks whose right grouping is known.
For each seed the script runs `learn_to_branch` on a 3-stage MLP, extracts
the tree, and compares its middle-stage partition with the planted groups
(adjusted Rand index; 1.0 means the groups were recovered exactly). It then
retrains the found tree from scratch and, for reference, the planted tree,
with the same recipe.

With `--landscape` it first trains fixed trees (planted middle partition,
three random partitions of the same sizes, one shared middle block) for
half and for all of the retraining epochs, to show how much the loss
prefers the planted tree at this data size: a gradient search can only
find a structure the loss prefers.

    python benchmarks/ltb_planted.py                  # seeds 0, 1, 2
    python benchmarks/ltb_planted.py --seeds 0,1,2,3,4,5,6 --landscape
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def tree_from_middle(names, middle):
    from keras_branch.spec import TreeSpec

    return TreeSpec.from_partitions([[list(names)], middle, [[n] for n in names]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30, help="search epochs")
    parser.add_argument("--retrain-epochs", type=int, default=30)
    parser.add_argument("--widths", default="2,4,8", help="supernet nodes per stage")
    parser.add_argument("--stages", default="32,4,8", help="MLP units per stage")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--landscape", action="store_true",
                        help="also train planted / random / shared trees (seed 0's data)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_branch import backbones
    from keras_branch.data import planted_groups
    from keras_branch.search.learn_to_branch import learn_to_branch, partition_ari
    from keras_branch.training import fit_spec, mean_metric

    seeds = [int(s) for s in args.seeds.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    stages = [int(u) for u in args.stages.split(",")]
    start = time.perf_counter()
    print(f"planted groups (3, 3, 2), {args.num_train} training samples; MLP stages {stages}; "
          f"supernet widths {widths}; search {args.epochs} epochs, batch {args.batch_size}; "
          f"retraining {args.retrain_epochs} epochs")

    def retrain(spec, data, seed, epochs=None):
        bb = backbones.mlp(data.input_shape[0], stages)
        run = fit_spec(spec, bb, data, epochs=epochs or args.retrain_epochs,
                       batch_size=args.batch_size, seed=seed, verbose=0)
        return mean_metric(run.metrics["test"], "mse")

    if args.landscape:
        data = planted_groups(seed=seeds[0], num_train=args.num_train)
        names = data.task_names
        rng = np.random.default_rng(0)
        candidates = {"planted": data.info["partition"], "one shared block": [names]}
        for k in range(3):
            perm = [str(n) for n in rng.permutation(names)]
            candidates[f"random {k + 1}"] = [perm[:3], perm[3:6], perm[6:]]
        print(f"\nloss landscape (seed {seeds[0]} data): fixed trees, stage 1 shared, "
              f"stage 3 per task, middle stage as listed")
        half = max(1, args.retrain_epochs // 2)
        print(f"| {'middle stage':<18} | test MSE, {half} epochs | test MSE, {args.retrain_epochs} epochs |")
        print("|---|---:|---:|")
        for label, middle in candidates.items():
            spec = tree_from_middle(names, middle)
            early = retrain(spec, data, seeds[0], epochs=half)
            late = retrain(spec, data, seeds[0])
            print(f"| {label:<18} | {early:.4f} | {late:.4f} |")
        sys.stdout.flush()

    rows = []
    for seed in seeds:
        data = planted_groups(seed=seed, num_train=args.num_train)
        t = time.perf_counter()
        spec, history = learn_to_branch(
            data, backbones.mlp(data.input_shape[0], stages), widths=widths,
            epochs=args.epochs, seed=seed, batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - t
        ari = partition_ari(spec.partition(1), data.info["partition"])
        found_mse = retrain(spec, data, seed)
        planted_mse = retrain(tree_from_middle(data.task_names, data.info["partition"]), data, seed)
        rows.append((seed, spec, ari, seconds, found_mse, planted_mse))
        print(f"\nseed {seed}: search {seconds:.1f} s, ARI {ari:.3f}")
        print(spec)
        sys.stdout.flush()

    print("\n| seed | middle-stage groups found | ARI | search s | test MSE found tree | test MSE planted tree |")
    print("|---:|---|---:|---:|---:|---:|")
    for seed, spec, ari, seconds, found_mse, planted_mse in rows:
        groups = " ".join("{" + ",".join(g) + "}" for g in spec.partition(1))
        print(f"| {seed} | {groups} | {ari:.3f} | {seconds:.1f} | {found_mse:.4f} | {planted_mse:.4f} |")
    exact = sum(r[2] == 1.0 for r in rows)
    print(f"\nplanted groups recovered exactly (ARI 1.0) in {exact} of {len(rows)} seeds; "
          f"total time {time.perf_counter() - start:.0f} s")
    return {"ari": {r[0]: r[2] for r in rows}, "exact": exact}


if __name__ == "__main__":
    main()
