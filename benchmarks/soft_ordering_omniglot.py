"""Soft layer ordering on Omniglot: single-task, parallel, permuted and soft ordering.

Meyerson & Miikkulainen (ICLR 2018, arXiv 1711.00108) report that soft
ordering beats parallel ordering (ordinary hard sharing) and single-task
learning on Omniglot. This script checks that claim on the 5-alphabet
"background small 1" split (one task per alphabet), with 3 seeds and the
same recipe (epochs, batch size, learning rate) for every model:

* soft, parallel, permuted: per-task encoder, one shared pool of D conv
  layers, per-task head; identical parameter counts except soft ordering's
  T x D x D mixing logits (100 scalars here);
* single task: every task its own pool, at the width whose total parameter
  count is closest to the shared models' (same parameter count).

Prints the table of mean test error (1 - accuracy, averaged over the 5
tasks, then over seeds) and whether soft ordering beat parallel ordering.

    python benchmarks/soft_ordering_omniglot.py                 # the full run
    python benchmarks/soft_ordering_omniglot.py --epochs 1 --seeds 0   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"
ORDERINGS = ("single_task", "parallel", "permuted", "soft")
LABELS = {
    "single_task": "single task",
    "parallel": "parallel ordering",
    "permuted": "permuted ordering",
    "soft": "soft ordering",
}


def matched_single_task_width(data, depth: int, width: int) -> tuple[int, int, int]:
    """The single-task width whose parameter count is closest to the shared models'.

    Returns:
        (width, its parameter count, the parallel model's parameter count).
    """
    from keras_branch.soft_ordering_model import build_soft_ordering_model

    target = build_soft_ordering_model(
        data.tasks, data.input_shape, "parallel", depth=depth, width=width
    ).count_params()
    best = None
    for w in range(1, width + 1):
        count = build_soft_ordering_model(
            data.tasks, data.input_shape, "single_task", depth=depth, width=w
        ).count_params()
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (w, count)
        if count > target:
            break
    return best[0], best[1], target


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Omniglot zip or folder")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="filters of encoders and pool layers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--orderings", default=",".join(ORDERINGS))
    parser.add_argument("--plot", help="draw seed 0's soft-ordering mixing weights to this PNG")
    parser.add_argument("--json", help="write all measurements to this JSON file")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_branch.data import load_omniglot
    from keras_branch.soft_ordering_model import (
        fit_soft_ordering,
        format_mixing_weights,
        plot_mixing_weights,
    )
    from keras_branch.training import mean_metric

    seeds = [int(s) for s in args.seeds.split(",")]
    orderings = [o for o in args.orderings.split(",") if o]
    start = time.perf_counter()
    data = load_omniglot(args.data, image_size=args.image_size)
    sizes = {s: len(data.split(s)) for s in data.splits}
    print(f"data: {data.name}, {len(data.tasks)} tasks (alphabets), classes "
          f"{[t.classes for t in data.tasks]}, images {sizes}, {args.image_size}x{args.image_size}")
    single_width, single_params, shared_params = matched_single_task_width(
        data, args.depth, args.width
    )
    print(f"recipe: {args.epochs} epochs, batch {args.batch_size}, Adam {args.learning_rate}, "
          f"depth {args.depth}, width {args.width} (single task: width {single_width}, "
          f"{single_params:,} parameters vs {shared_params:,} shared), seeds {seeds}")
    sys.stdout.flush()

    results: dict[str, list[dict]] = {o: [] for o in orderings}
    for seed in seeds:
        for ordering in orderings:
            width = single_width if ordering == "single_task" else args.width
            t = time.perf_counter()
            run = fit_soft_ordering(
                data, ordering, depth=args.depth, width=width, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.learning_rate, seed=seed,
                verbose=0,
            )
            seconds = time.perf_counter() - t
            entry = {
                "seed": seed,
                "params": run.model.count_params(),
                "test_error": mean_metric(run.metrics["test"], "error"),
                "validation_error": mean_metric(run.metrics["validation"], "error"),
                "per_task_test_error": {k: v["error"] for k, v in run.metrics["test"].items()},
                "seconds": seconds,
            }
            results[ordering].append(entry)
            print(f"seed {seed} {LABELS[ordering]:<18} test error {entry['test_error']:.4f}  "
                  f"val error {entry['validation_error']:.4f}  ({seconds:.0f} s)")
            sys.stdout.flush()
            if ordering == "soft" and seed == seeds[0]:
                print(format_mixing_weights(run.model))
                if args.plot:
                    print(f"mixing weights drawn to {plot_mixing_weights(run.model, args.plot)}")

    import numpy as np

    print()
    print(f"Omniglot, {len(data.tasks)} alphabets, {args.epochs} epochs, seeds {seeds}: "
          f"mean test error over tasks (lower is better)")
    header = f"| {'model':<18} | {'parameters':>10} | {'mean test error':>15} | {'std':>6} | per seed |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    summary = {}
    for ordering in orderings:
        errors = [e["test_error"] for e in results[ordering]]
        summary[ordering] = float(np.mean(errors))
        per_seed = ", ".join(f"{v:.4f}" for v in errors)
        print(f"| {LABELS[ordering]:<18} | {results[ordering][0]['params']:>10,} | "
              f"{np.mean(errors):>15.4f} | {np.std(errors):>6.4f} | {per_seed} |")
    if "soft" in summary and "parallel" in summary:
        wins = sum(
            s["test_error"] < p["test_error"] for s, p in zip(results["soft"], results["parallel"])
        )
        holds = summary["soft"] < summary["parallel"]
        print(f"claim 'soft ordering beats parallel ordering': "
              f"{'HOLDS' if holds else 'DOES NOT HOLD'} here (mean {summary['soft']:.4f} vs "
              f"{summary['parallel']:.4f}; soft better in {wins} of {len(seeds)} seeds)")
    if "soft" in summary and "single_task" in summary:
        print(f"soft ordering vs single task: {summary['soft']:.4f} vs {summary['single_task']:.4f}")
    print(f"total time {time.perf_counter() - start:.0f} s")
    report = {"args": vars(args), "single_task_width": single_width, "results": results,
              "mean_test_error": summary}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
