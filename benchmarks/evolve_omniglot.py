"""muNet's scale control on Omniglot-5: evolved systems at several s, beside fine-tuning.

For each seed, one root (`benchmarks/omniglot.py`'s `_root`: convnet4
pretrained on all but the last alphabet pooled, the common recipe) is
evolved to every alphabet once per `--scales` value, with the `evolve_*`
settings of `omniglot.DEFAULT_RECIPE` but no parameter budget (each
installed path trained `evolve_final_epochs` further). The same root fine-tuned per task
(`finetuned`) is the baseline. Prints one table (mean test error, the
system's parameters per task, the accounted ones, search seconds and
single-task epochs) and draws
parameters per task against mean test error, with the rows of a
`benchmarks/omniglot.py` result (`--reference`, e.g. the shared model and the
affinity trees, at their total parameters over the tasks) beside them.

    python benchmarks/evolve_omniglot.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --scales 1.0,0.7,0.5,0.3 --seeds 0 --reference benchmarks/results/omniglot.json \\
        --out benchmarks/results/evolve_scales
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import omniglot as common  # noqa: E402  (benchmarks/omniglot.py: recipe, root, methods)

from keras_branch import backbones  # noqa: E402
from keras_branch.data import load_omniglot  # noqa: E402
from keras_branch.zoo.cli import parse_seeds  # noqa: E402


def sweep(data_path: str, scales: Sequence[float], seeds: Sequence[int],
          recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evolves at every scale and fine-tunes, per seed; returns the rows.

    Args:
        data_path: the Omniglot zip or folder.
        scales: the scale factors s in (0, 1].
        seeds: the seeds (one root each).
        recipe: overrides of `omniglot.DEFAULT_RECIPE`.

    Returns:
        `{"recipe", "seeds", "rows"}`; a row per `evolved s=...` and
        `finetuned`: per seed, mean test error, the system's parameters per
        task, seconds (and, evolved, the mean accounted parameters per task
        and single-task epochs).
    """
    recipe = {**common.DEFAULT_RECIPE, **(recipe or {})}
    data = load_omniglot(data_path, image_size=recipe["image_size"])
    backbone = backbones.convnet4((recipe["image_size"],) * 2 + (1,), filters=recipe["filters"])
    rows: dict[str, dict[str, list]] = {}
    for seed in seeds:
        for scale in scales:
            # The scale factor alone holds the size back here: no budget.
            model, _, extra = common.method_evolved(
                data, backbone, {**recipe, "evolve_scale": scale, "evolve_budget": None}, seed)
            row = rows.setdefault(f"evolved s={scale}", {"errors": [], "params_per_task": [],
                                                          "accounted_per_task": [],
                                                          "seconds": [], "task_epochs": []})
            row["errors"].append(common.mean_metric(extra["metrics"], "error"))
            # The system's parameters over its tasks, as for every other point of
            # the plot; the accounted ones leave out the root's share of its blocks.
            row["params_per_task"].append(model.count_params() / len(data.tasks))
            row["accounted_per_task"].append(
                float(np.mean(list(extra["params_per_task"].values()))))
            row["seconds"].append(extra["evolution_seconds"])
            row["task_epochs"].append(extra["task_epochs"])
            print(f"seed {seed} s={scale}: test error {row['errors'][-1]:.4f}, params/task "
                  f"{row['params_per_task'][-1]:,.0f} ({row['seconds'][-1]:.0f} s)", flush=True)
        model, _, extra = common.method_finetuned(data, backbone, recipe, seed)
        row = rows.setdefault("finetuned", {"errors": [], "params_per_task": [], "seconds": []})
        row["errors"].append(common.mean_metric(extra["metrics"], "error"))
        row["params_per_task"].append(model.count_params() / len(data.tasks))
        print(f"seed {seed} finetuned: test error {row['errors'][-1]:.4f}", flush=True)
    return {"recipe": recipe, "seeds": list(seeds), "rows": rows}


def plot(result: dict[str, Any], reference: dict[str, Any] | None, path: str,
         reference_methods: Sequence[str] = ("shared", "affinity_1.5x", "affinity_2x")) -> str:
    """Parameters per task against mean test error (mean over seeds, std as error bars).

    `reference_methods` picks the rows of `reference` drawn beside the sweep.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    evolved = [(n, r) for n, r in result["rows"].items() if n.startswith("evolved")]
    xs = [np.mean(r["params_per_task"]) for _, r in evolved]
    ys = [np.mean(r["errors"]) for _, r in evolved]
    ax.plot(xs, ys, "-", color="tab:blue", alpha=0.5)
    points = list(result["rows"].items())
    num_tasks = len(next(iter(reference["methods"].values()))["mean_task_errors"]) \
        if reference else None
    for name, row in (reference or {}).get("methods", {}).items():
        if name not in reference_methods:
            continue
        points.append((name, {"params_per_task": [row["params"] / num_tasks],
                              "errors": row["errors"]}))
    for name, row in points:
        x, y = np.mean(row["params_per_task"]), np.mean(row["errors"])
        style = "o" if name.startswith("evolved") else "s"
        ax.errorbar(x, y, yerr=np.std(row["errors"], ddof=1) if len(row["errors"]) > 1 else 0,
                    fmt=style, capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    return common.save_figure(fig, ax, "parameters per task (the system's over its tasks)",
                              "mean test error",
                              f"Omniglot-5: muNet scale control, seeds {result['seeds']}", path)


def table(result: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    lines = ["| model | mean test error | std | params per task | accounted per task | search s "
             "| single-task epochs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        errors = row["errors"]
        std = np.std(errors, ddof=1) if len(errors) > 1 else 0.0
        seconds = f"{np.mean(row['seconds']):.0f}" if row["seconds"] else ""
        epochs = f"{np.mean(row['task_epochs']):.0f}" if row.get("task_epochs") else ""
        accounted = (f"{np.mean(row['accounted_per_task']):,.0f}"
                     if row.get("accounted_per_task") else "")
        lines.append(f"| {name} | {np.mean(errors):.4f} | {std:.4f} | "
                     f"{np.mean(row['params_per_task']):,.0f} | {accounted} | {seconds} | {epochs} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, seeds="0")
    parser.add_argument("--scales", default="1.0,0.7,0.5,0.3")
    parser.add_argument("--reference", help="a benchmarks/omniglot.py omniglot.json to plot beside")
    parser.add_argument("--reference-methods", default="shared,affinity_1.5x,affinity_2x",
                        help="the --reference rows to draw")
    parser.add_argument("--out", help="folder for evolve_scales.json and evolve_scales.png")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    bad = [s for s in scales if not 0 < s <= 1]
    if bad:
        raise SystemExit(f"--scales must be in (0, 1]. Received: {bad}")
    reference = common.read_reference(args.reference)
    result = sweep(args.data, scales, parse_seeds(args.seeds))
    print(table(result))
    if args.out:
        common.write_json(args.out, "evolve_scales.json", result)
        print("wrote", plot(result, reference, os.path.join(args.out, "evolve_scales.png"),
                            args.reference_methods.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
