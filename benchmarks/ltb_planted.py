"""Learning to Branch on planted task groups: does the search find the planted tree?

Planted groups (`--groups`, default 3-3-2): regression tasks whose right
grouping is known. For every group layout, middle width and seed the script
runs `learn_to_branch` with its default settings on the demo's MLP
(64-64-16) with supernet widths (1, MIDDLE, T), and scores the middle-stage
partition it extracts against the planted groups:

* ARI, the adjusted Rand index (1.0: the planted groups exactly), the goal
  when the middle stage has one node per group;
* purity: no middle block serves tasks of two planted groups (a group may
  be split over several blocks), the goal when the middle stage is wider.

It also reports the smallest margin of a used routing choice (top parent's
probability minus the runner-up's). With `--retrain-epochs N` it retrains
the found tree and the planted tree from scratch and prints both test MSEs.

    python benchmarks/ltb_planted.py                            # 3-3-2, widths 3 and 6, seeds 0-5
    python benchmarks/ltb_planted.py --groups 2-3-3,4-2-2 --seeds 6,7,8,9,10,11
    python benchmarks/ltb_planted.py --search-arg tie_init=false     # an ablation
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def tree_from_middle(names, middle):
    from keras_branch.spec import TreeSpec

    return TreeSpec.from_partitions([[list(names)], middle, [[n] for n in names]])


def _int_list(text: str, flag: str, separator: str = ",") -> list[int]:
    try:
        values = [int(v) for v in text.split(separator)]
    except ValueError:
        raise SystemExit(f"{flag} must be integers separated by {separator!r}. Received: {text!r}")
    if not values or min(values) < 0:
        raise SystemExit(f"{flag} must be non-negative integers. Received: {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--groups", default="3-3-2",
                        help="comma-separated group layouts, each sizes joined by '-'")
    parser.add_argument("--middle", default="groups,6",
                        help="middle-stage widths; 'groups' means one node per planted group")
    parser.add_argument("--stages", default="64,64,16", help="MLP units per stage (the demo's)")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--epochs", type=int, help="search epochs (default: learn_to_branch's)")
    parser.add_argument("--search-arg", action="append", default=[], metavar="KEY=JSON",
                        help="override a learn_to_branch argument, e.g. balance=0 or "
                             "tie_init=false (ablations)")
    parser.add_argument("--retrain-epochs", type=int, default=0,
                        help="retrain the found and the planted tree for this many epochs (0: skip)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_branch import backbones
    from keras_branch.cli_args import key_values
    from keras_branch.data import planted_groups
    from keras_branch.search.learn_to_branch import (
        learn_to_branch,
        partition_ari,
        partition_is_pure,
    )
    from keras_branch.evaluation import mean_metric
    from keras_branch.training import fit_spec

    seeds = _int_list(args.seeds, "--seeds")
    layouts = [tuple(_int_list(g, "--groups", "-")) for g in args.groups.split(",")]
    stages = _int_list(args.stages, "--stages")
    search_kwargs = key_values(args.search_arg, "--search-arg", SystemExit)
    if args.epochs is not None:
        search_kwargs["epochs"] = args.epochs
    start = time.perf_counter()
    print(f"planted groups {args.groups}, {args.num_train} training samples; MLP stages {stages}; "
          f"learn_to_branch defaults{''.join(f', {k}={v}' for k, v in search_kwargs.items())}; "
          f"seeds {seeds}")

    def retrain(spec, data, seed):
        run = fit_spec(spec, backbones.mlp(data.input_shape[0], stages), data,
                       epochs=args.retrain_epochs, batch_size=64, seed=seed, verbose=0)
        return mean_metric(run.metrics["test"], "mse")

    rows = []
    for layout in layouts:
        middles = [len(layout) if m == "groups" else int(m) for m in args.middle.split(",")]
        for middle in middles:
            for seed in seeds:
                data = planted_groups(group_sizes=layout, num_train=args.num_train, seed=seed)
                widths = (1, middle, len(data.task_names))
                t = time.perf_counter()
                result = learn_to_branch(data, backbones.mlp(data.input_shape[0], stages),
                                         widths=widths, seed=seed, **search_kwargs)
                seconds = time.perf_counter() - t
                found, planted = result.spec.partition(1), data.info["partition"]
                margins = [n["margin"] for s in result.branching for n in s["nodes"] if n["used"]]
                row = {
                    "layout": "-".join(map(str, layout)), "middle": middle, "seed": seed,
                    "ari": partition_ari(found, planted), "pure": partition_is_pure(found, planted),
                    "min_margin": min(margins), "seconds": seconds, "found": found,
                }
                if args.retrain_epochs:
                    row["found_mse"] = retrain(result.spec, data, seed)
                    row["planted_mse"] = retrain(tree_from_middle(data.task_names, planted), data, seed)
                rows.append(row)
                groups = " ".join("{" + ",".join(g) + "}" for g in found)
                print(f"groups {row['layout']} middle {middle} seed {seed}: ARI {row['ari']:.3f}, "
                      f"pure {row['pure']}, min margin {row['min_margin']:.2f}, {seconds:.1f} s: {groups}")
                sys.stdout.flush()

    retrained = " test MSE found | test MSE planted |" if args.retrain_epochs else ""
    print(f"\n| groups | middle width | seed | ARI | pure | min margin | search s |{retrained}")
    print("|---|---:|---:|---:|---|---:|---:|" + ("---:|---:|" if args.retrain_epochs else ""))
    for r in rows:
        extra = f" {r['found_mse']:.4f} | {r['planted_mse']:.4f} |" if args.retrain_epochs else ""
        print(f"| {r['layout']} | {r['middle']} | {r['seed']} | {r['ari']:.3f} | "
              f"{'yes' if r['pure'] else 'no'} | {r['min_margin']:.2f} | {r['seconds']:.1f} |{extra}")
    summary = {}
    print("\n| groups | middle width | ARI 1.0 | pure | seeds |")
    print("|---|---:|---:|---:|---:|")
    for key in dict.fromkeys((r["layout"], r["middle"]) for r in rows):
        group = [r for r in rows if (r["layout"], r["middle"]) == key]
        exact, pure = sum(r["ari"] == 1.0 for r in group), sum(r["pure"] for r in group)
        summary[key] = {"exact": exact, "pure": pure, "seeds": len(group)}
        print(f"| {key[0]} | {key[1]} | {exact} | {pure} | {len(group)} |")
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
