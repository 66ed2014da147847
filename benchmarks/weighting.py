"""Task weighting methods side by side: test error, spread and step time.

For each setting and seed, the same model is trained once per weighting
(`keras_branch.weighting`), everything else equal (architecture, recipe,
initialisation, data order), and one table is printed: mean test error (or
MSE) +/- std over seeds, the difference to `equal` in units of equal's std,
and the training step time relative to `equal` in the same setting (the
median epoch time without validation, first epoch excluded: it traces).

Settings:

* `omniglot/shared`: convnet4 fully shared, the common recipe of
  `benchmarks/omniglot.py` (`--epochs` overrides its 40).
* `omniglot/affinity_2x`: the 2x-budget affinity tree of each seed, read
  from `--tree-specs` (an `omniglot.json` of `benchmarks/omniglot.py`);
  a seed missing there is searched (probes, then the tree search).
* `planted/conflict`: planted groups 3-3-3 whose last group takes the
  shared root direction reversed (`planted_groups(conflicting_groups=1)`),
  regression (test MSE), an MLP fully shared, the demo's recipe.

`fixed` weighs each task by 1 / its loss at initialisation, rescaled to mean
1: 1 / log(classes) for Omniglot's alphabets, 1 for the standardised
planted targets (where it is `equal`).

Usage:
    python benchmarks/weighting.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --seeds 0,1,2 --tree-specs benchmarks/results/omniglot.json --out benchmarks/results/weighting
    python benchmarks/weighting.py --data omniglot.zip --settings planted/conflict --seeds 0 \\
        --methods equal,pcgrad --epochs 2 --out /tmp/weighting
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# benchmarks/omniglot.py holds the common recipe; loaded by path (e.g. from a
# test), this folder is not on sys.path by itself.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import omniglot  # noqa: E402  (benchmarks/omniglot.py: the common recipe)
from keras_branch import TreeSpec, backbones  # noqa: E402
from keras_branch.data import MultiTaskData, load_omniglot, planted_groups  # noqa: E402
from keras_branch.evaluation import mean_metric  # noqa: E402
from keras_branch.files import atomic_write_json  # noqa: E402
from keras_branch.search.tree_search import branch  # noqa: E402
from keras_branch.training import fit_spec  # noqa: E402
from keras_branch.weighting import WEIGHTINGS, Fixed, parse_weighting  # noqa: E402
from keras_branch.zoo.cli import parse_seeds  # noqa: E402
from keras_branch.zoo.measure import machine_info, mean_and_std  # noqa: E402

SETTINGS = ("omniglot/shared", "omniglot/affinity_2x", "planted/conflict")
#: The demo's recipe for the planted setting.
PLANTED_RECIPE = {"epochs": 20, "batch_size": 32, "learning_rate": 1e-3}


class TrainTimer(keras.callbacks.Callback):
    """Seconds of each epoch's training part (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs=None):  # validation starts: the training part is over
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()


def initial_loss_weights(data: MultiTaskData) -> dict[str, float]:
    """`fixed`'s weights: 1 / the loss of an uninformed prediction, mean 1."""
    raw = {t.key: 1.0 / math.log(t.classes) if t.kind == "multiclass" else 1.0 for t in data.tasks}
    mean = float(np.mean(list(raw.values())))
    return {key: value / mean for key, value in raw.items()}


def make_weighting(method: str, data: MultiTaskData):
    return Fixed(initial_loss_weights(data)) if method == "fixed" else parse_weighting(method)


class Setting:
    """Data, backbone, recipe and the spec of each seed for one benchmark setting."""

    def __init__(self, name: str, args: argparse.Namespace, log: Callable[[str], None]):
        self.name = name
        if name.startswith("omniglot/"):
            self.recipe = omniglot.make_recipe(epochs=args.epochs)
            size = self.recipe["image_size"]
            self.data = load_omniglot(args.data, image_size=size)
            self.backbone = backbones.convnet4((size, size, 1), filters=self.recipe["filters"])
            self.metric = "error"
        else:
            self.recipe = dict(PLANTED_RECIPE, epochs=args.epochs or PLANTED_RECIPE["epochs"])
            self.data = planted_groups((3, 3, 3), num_train=args.planted_train, conflicting_groups=1,
                                       seed=0)
            self.backbone = backbones.mlp(self.data.input_shape[0], widths=(64, 64, 32))
            self.metric = "mse"
        self.stored = _stored_specs(args.tree_specs) if name == "omniglot/affinity_2x" else {}
        self.log = log

    def spec(self, seed: int) -> TreeSpec:
        if self.name != "omniglot/affinity_2x":
            return TreeSpec.shared(self.data.task_names, self.backbone.num_stages)
        if seed in self.stored:
            return self.stored[seed]
        self.log(f"  seed {seed}: no stored 2x tree; searching (probes {self.recipe['probe_epochs']} "
                 "epochs)")
        affinity, _ = omniglot._affinity(self.data, self.backbone, self.recipe, seed)
        return branch(affinity, self.backbone, self.data.tasks, "2x").spec

    def fit_kwargs(self) -> dict[str, Any]:
        if self.name.startswith("omniglot/"):
            return omniglot._fit_kwargs(self.recipe)
        return dict(self.recipe)


def _stored_specs(path: str | None) -> dict[int, TreeSpec]:
    if not path:
        return {}
    with open(path) as f:
        stored = json.load(f)
    row = stored["methods"]["affinity_2x"]
    return {int(seed): TreeSpec.from_dict(spec) for seed, spec in zip(stored["seeds"], row["specs"])}


def run_one(setting: Setting, method: str, seed: int) -> dict[str, Any]:
    """One training: test score, step seconds, the final weights."""
    timer = TrainTimer()
    spec = setting.spec(seed)
    kwargs = setting.fit_kwargs()
    kwargs.pop("weighting", None)
    result = fit_spec(spec, setting.backbone, setting.data, seed=seed, verbose=0, log=None,
                      callbacks=[timer], weighting=make_weighting(method, setting.data), **kwargs)
    steps = setting.data.steps("train", kwargs["batch_size"])
    timed = timer.seconds[1:] or timer.seconds
    weights = {k[:-len("_weight")]: v[-1] for k, v in result.history.items()
               if k.endswith("_weight") and not k.startswith("val_")}
    return {"score": mean_metric(result.metrics["test"], setting.metric),
            "step_seconds": float(np.median(timed)) / steps, "weights": weights,
            "spec": spec.to_dict()}


def summarise(rows: dict[str, dict[str, Any]]) -> None:
    """Mean, std, distance to equal and step-time ratio per method (in place)."""
    equal = rows.get("equal")
    for row in rows.values():
        row["mean"], row["std"] = mean_and_std(row["scores"])
        row["step_seconds"] = float(np.median(row["step_times"]))
    for row in rows.values():
        if equal is None:
            continue
        row["step_vs_equal"] = row["step_seconds"] / equal["step_seconds"]
        row["delta_vs_equal"] = row["mean"] - equal["mean"]
        # None with one seed (no spread to measure against).
        row["delta_in_equal_std"] = (row["delta_vs_equal"] / equal["std"] if equal["std"] > 0
                                     else None)


def format_table(result: dict[str, Any]) -> str:
    lines = ["| setting | weighting | test error / MSE (mean ± std) | − equal (in equal's std) "
             "| step time vs equal | per seed |",
             "|---|---|---|---|---|---|"]
    for setting, rows in result["settings"].items():
        for method, row in rows.items():
            delta = row.get("delta_vs_equal")
            spread = row.get("delta_in_equal_std")
            rel = "" if delta is None or method == "equal" else (
                f"{delta:+.4f}" + (f" ({spread:+.1f})" if spread is not None else ""))
            ratio = f"{row['step_vs_equal']:.2f}x" if "step_vs_equal" in row else ""
            seeds = ", ".join(f"{s:.4f}" for s in row["scores"])
            lines.append(f"| {setting} | {method} | {row['mean']:.4f} ± {row['std']:.4f} | {rel} "
                         f"| {ratio} | {seeds} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    seeds = parse_seeds(args.seeds)
    methods = args.methods.split(",")
    for method in methods:
        if method not in WEIGHTINGS:
            raise SystemExit(f"--methods: unknown weighting {method!r}; known: {', '.join(WEIGHTINGS)}")
    settings = args.settings.split(",")
    for name in settings:
        if name not in SETTINGS:
            raise SystemExit(f"--settings: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    out = args.out
    if out:
        target = os.path.join(out, "weighting.json")
        if os.path.exists(target) and not args.overwrite:
            raise SystemExit(f"--out: {target} exists; pass --overwrite to replace it.")
        os.makedirs(out, exist_ok=True)
    result: dict[str, Any] = {"seeds": seeds, "methods": methods, "machine": machine_info(),
                              "settings": {}, "recipes": {}}
    for name in settings:
        setting = Setting(name, args, log)
        result["recipes"][name] = setting.fit_kwargs() | {"weighting": "(per row)"}
        rows = {m: {"scores": [], "step_times": [], "weights": []} for m in methods}
        for seed in seeds:
            for method in methods:  # seeds outer: an interrupted run has every method for some seeds
                start = time.perf_counter()
                one = run_one(setting, method, seed)
                rows[method]["scores"].append(one["score"])
                rows[method]["step_times"].append(one["step_seconds"])
                rows[method]["weights"].append(one["weights"])
                log(f"{name} seed {seed} {method:<12} test {setting.metric} {one['score']:.4f}  "
                    f"step {1000 * one['step_seconds']:.1f} ms  ({time.perf_counter() - start:.0f} s)")
                if out:
                    atomic_write_json(os.path.join(out, "weighting.partial.json"),
                                      {**result, "settings": {**result["settings"], name: rows}})
        summarise(rows)
        result["settings"][name] = rows
    log("")
    log(format_table(result))
    if out:
        atomic_write_json(os.path.join(out, "weighting.json"), result)
        partial = os.path.join(out, "weighting.partial.json")
        if os.path.exists(partial):
            os.remove(partial)
        log(f"wrote {os.path.join(out, 'weighting.json')}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Omniglot zip or folder (the omniglot settings)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--methods", default=",".join(WEIGHTINGS),
                        help="comma-separated weightings (default: all, with their default settings)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, help="override every setting's epochs")
    parser.add_argument("--planted-train", type=int, default=4000,
                        help="training samples of the planted setting")
    parser.add_argument("--tree-specs", help="omniglot.json holding the affinity_2x tree per seed")
    parser.add_argument("--out", help="folder for weighting.json (an existing one is refused)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing weighting.json")
    args = parser.parse_args(argv)
    if any(s.startswith("omniglot/") for s in args.settings.split(",")) and not args.data:
        parser.error("--data is required for the omniglot settings")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
