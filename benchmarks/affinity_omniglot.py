"""Affinity search on Omniglot: search cost, and the found tree against baselines.

For each seed: the affinity search (probe training + tree search) at a budget
of 2x the fully shared model, then the found tree, the fully shared network
and the independent networks are trained under one recipe. Prints the search
wall time as a multiple of one training of the found tree (goal: at most 2x)
and a table of mean test error over seeds.

    python benchmarks/affinity_omniglot.py --data ../shared/data/omniglot/images_background_small1.zip
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from keras_branch import TreeSpec, backbones
from keras_branch.data import load_omniglot
from keras_branch.evaluation import mean_metric
from keras_branch.search import affinity_search
from keras_branch.training import fit_spec


def main(
    data_path: str,
    seeds: tuple[int, ...] = (0, 1, 2),
    image_size: int = 28,
    epochs: int = 20,
    probe_epochs: int = 20,
    budget: str = "2x",
    batch_size: int = 32,
    out: str | None = None,
) -> dict:
    data = load_omniglot(data_path, image_size=image_size)
    bb = backbones.convnet4((image_size, image_size, 1))
    names = data.task_names
    rows: dict[str, list] = {"found tree": [], "fully shared": [], "independent": []}
    params: dict[str, list] = {k: [] for k in rows}
    ratios, trees = [], []
    for seed in seeds:
        start = time.perf_counter()
        search = affinity_search(data, bb, budget, probe_epochs=probe_epochs, seed=seed,
                                 batch_size=batch_size, log=None)
        search_seconds = time.perf_counter() - start
        trees.append(search.spec.to_dict())
        print(f"seed {seed}: search {search_seconds:.1f} s; tree {search.spec.blocks_per_stage()}")
        print(search.spec)
        for label, spec in (("found tree", search.spec),
                            ("fully shared", TreeSpec.shared(names, bb.num_stages)),
                            ("independent", TreeSpec.independent(names, bb.num_stages))):
            t0 = time.perf_counter()
            run = fit_spec(spec, bb, data, epochs=epochs, batch_size=batch_size, seed=seed, verbose=0)
            seconds = time.perf_counter() - t0
            error = mean_metric(run.metrics["test"], "error")
            rows[label].append(error)
            params[label].append(spec.count_params(bb, data.tasks))
            print(f"  {label:<13} test error {error:.4f}  ({seconds:.1f} s)")
            if label == "found tree":
                ratios.append(search_seconds / seconds)
                print(f"  search / training of the found tree = {ratios[-1]:.2f}x")
    print()
    print(f"Omniglot ({len(names)} alphabets), convnet4 at {image_size}x{image_size}, {epochs} epochs, "
          f"batch {batch_size}, Adam 1e-3, seeds {list(seeds)}; budget {budget} of the shared model")
    print(f"{'model':<14} {'parameters':>11} {'mean test error':>16} {'std':>7}")
    for label, errors in rows.items():
        print(f"{label:<14} {int(np.mean(params[label])):>11,} {np.mean(errors):>16.4f} {np.std(errors):>7.4f}")
    print(f"search wall time / one training of the found tree: "
          f"{np.mean(ratios):.2f}x (per seed: {', '.join(f'{r:.2f}' for r in ratios)})")
    result = {"errors": rows, "params": params, "ratios": ratios, "trees": trees}
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Omniglot zip or folder")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--probe-epochs", type=int, default=20)
    parser.add_argument("--budget", default="2x")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args()
    main(args.data, tuple(int(s) for s in args.seeds.split(",")), args.image_size, args.epochs,
         args.probe_epochs, args.budget, out=args.out)
