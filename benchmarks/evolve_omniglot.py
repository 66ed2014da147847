"""muNet evolution on Omniglot: a root pretrained on some alphabets grown to all.

1. The root: a 4-block convnet trained on the first alphabets pooled into one
   classification task (all but `--new` alphabets).
2. Evolution from that root to every alphabet, one run per `--scales` value.
3. Baselines under the same epochs: fine-tuning the whole root per task (a
   copy of every block per task) and independent networks from scratch.

Prints one table: mean test error, per-task test errors, parameters per
task (accounted: shared blocks divided by their users) and the system's
total parameters.

    python benchmarks/evolve_omniglot.py --data ../shared/data/omniglot/images_background_small1.zip
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

from keras_branch import TreeSpec, backbones
from keras_branch.build import BranchedModel, block_name
from keras_branch.compiling import compile_model
from keras_branch.data import load_omniglot, pool_tasks
from keras_branch.evaluation import mean_metric
from keras_branch.search.evolution import evolve
from keras_branch.training import fit_spec, train


def _single_task(spec_task, backbone, root=None):
    spec = TreeSpec.shared([spec_task.name], backbone.num_stages)
    model = BranchedModel(spec, backbone, [spec_task])
    if root is not None:  # start every block from the root's
        for d in range(backbone.num_stages):
            model.get_layer(block_name(d, 0)).set_weights(root.get_layer(block_name(d, 0)).get_weights())
    return model


def baseline(data, backbone, epochs, seed, root=None):
    """Per task: a single-task network (from the root when given), all layers trained."""
    errors, params = {}, {}
    for task in data.tasks:
        keras.utils.set_random_seed(seed)
        model = _single_task(task, backbone, root)
        compile_model(model)
        run = train(model, data.select_tasks([task.name]), epochs=epochs, seed=seed, verbose=0,
                    eval_splits=("test",), log=None)
        errors[task.name] = run.metrics["test"][task.name]["error"]
        params[task.name] = model.count_params()
    return errors, params


def main(data_path, alphabets=None, new=1, image_size=28, root_epochs=30, epochs=20,
         scales=(1.0, 0.5, 0.2), passes=2, candidates=8, candidate_epochs=4, seed=0, out=None):
    data = load_omniglot(data_path, image_size=image_size, alphabets=alphabets)
    names = data.task_names
    old = names[:-new]
    bb = backbones.convnet4((image_size, image_size, 1))
    print(f"root: convnet4 on {old} pooled ({image_size}x{image_size}, {root_epochs} epochs); "
          f"new task(s): {names[-new:]}")
    t0 = time.perf_counter()
    pooled = pool_tasks(data, old)
    root = fit_spec(TreeSpec.shared(["pooled"], bb.num_stages), bb, pooled, epochs=root_epochs,
                    seed=seed, verbose=0, log=None)
    print(f"root test error (pooled {pooled.tasks[0].classes} classes): "
          f"{root.metrics['test']['pooled']['error']:.4f}  ({time.perf_counter() - t0:.0f} s)")
    rows = {}
    for scale in scales:
        t0 = time.perf_counter()
        result = evolve(root.model, names, data, scale=scale, passes=passes, candidates=candidates,
                        candidate_epochs=candidate_epochs, seed=seed)
        system = result.system
        per_task = system.describe()["params_per_task"]
        errors = {t: result.metrics["test"][t]["error"] for t in names}
        rows[f"evolved s={scale}"] = {
            "errors": errors, "params_per_task": per_task,
            "total_params": int(result.model.count_params()),
            "spec": system.spec.to_dict(), "seconds": time.perf_counter() - t0,
        }
        print(f"evolved s={scale}: mean test error {np.mean(list(errors.values())):.4f}, "
              f"params/task {np.mean(list(per_task.values())):,.0f} "
              f"({time.perf_counter() - t0:.0f} s)")
        print(system.spec)
    for label, start in (("fine-tuned root", root.model), ("independent", None)):
        t0 = time.perf_counter()
        errors, params = baseline(data, bb, epochs, seed, start)
        rows[label] = {"errors": errors, "params_per_task": params,
                       "total_params": int(sum(params.values())),
                       "seconds": time.perf_counter() - t0}
        print(f"{label}: mean test error {np.mean(list(errors.values())):.4f} "
              f"({time.perf_counter() - t0:.0f} s)")

    print()
    print(f"Omniglot, {len(names)} alphabets, convnet4 {image_size}x{image_size}, seed {seed}; "
          f"evolution: {passes} passes x {candidates} candidates x {candidate_epochs} epochs; "
          f"baselines: {epochs} epochs per task")
    short = {n: n[:8] for n in names}
    print(f"{'model':<18} {'mean err':>8} {'params/task':>12} {'total':>9}  "
          + " ".join(f"{short[n]:>8}" for n in names))
    for label, row in rows.items():
        e = row["errors"]
        print(f"{label:<18} {np.mean(list(e.values())):>8.4f} "
              f"{np.mean(list(row['params_per_task'].values())):>12,.0f} {row['total_params']:>9,}  "
              + " ".join(f"{e[n]:>8.4f}" for n in names))
    result = {"config": {"alphabets": names, "new": names[-new:], "image_size": image_size,
                         "root_epochs": root_epochs, "epochs": epochs, "scales": list(scales),
                         "passes": passes, "candidates": candidates,
                         "candidate_epochs": candidate_epochs, "seed": seed},
              "root_test_error": root.metrics["test"]["pooled"]["error"], "rows": rows}
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Omniglot zip or folder")
    parser.add_argument("--alphabets", help="comma-separated alphabets (default: all)")
    parser.add_argument("--new", type=int, default=1, help="alphabets left out of the root")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--root-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20, help="baseline epochs per task")
    parser.add_argument("--scales", default="1.0,0.5,0.2")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--candidate-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results as JSON")
    a = parser.parse_args()
    main(a.data, a.alphabets.split(",") if a.alphabets else None, a.new, a.image_size,
         a.root_epochs, a.epochs, tuple(float(s) for s in a.scales.split(",")), a.passes,
         a.candidates, a.candidate_epochs, a.seed, a.out)
