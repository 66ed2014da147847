"""The ceiling of evolution on Omniglot-5: fixed paths from the root, trained long.

Evolution (`keras_branch.search.evolve`) ranks paths after a few epochs on
the validation split and then trains the installed one further. This
benchmark asks what the paths themselves are worth, with no search: for each
seed, the root of `benchmarks/omniglot.py` (`_root`: convnet4 pretrained on
all but the last alphabet pooled, the common recipe) and, per alphabet, one
fixed path trained `--epochs` epochs (cosine from the recipe's rate,
augmentation) as evolution's final training trains an installed path. The
validation and test errors are recorded along the way (`--checkpoints`), so
the table also says how well a short run's validation error ranks the paths.

Paths (`PATHS`; stages 1-based; "clone" = a task-owned trainable copy of the
root's block, the other stages frozen):

- `head`: every stage frozen, a new head;
- `clone4`, `clone34`, `clone234`: the top one, two or three stages cloned
  (the suffix clones evolution makes);
- `clone3_depth3`: stages 1-2 frozen, stage 3 cloned, no stage 4 (a depth
  move down);
- `clone4_adapters`: `clone4` with adapters (width 16) after stages 1-3;
- `clone4_adapter3`: `clone4` with one adapter (width 16) after stage 3
  (the path evolving all five alphabets installed for Balinese, seed 0);
- `clone4_adapter4`: `clone4` with one adapter (width 16) after stage 4,
  before the head (what `adapters="any"` lets evolution insert);
- `norms`, `clone4_norms`: `head` / `clone4` with the batch normalization of
  every frozen stage trainable (its scale, offset and statistics). This is
  not a component evolution has: it probes what task-owned normalization
  (128 parameters per stage) would buy.

Parameters per task are the path's own (clones, adapters, trainable
normalizations, head), mean over the alphabets.

    python benchmarks/evolve_paths.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --seeds 0,1,2 --out benchmarks/results/evolve_paths
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import omniglot as common  # noqa: E402  (benchmarks/omniglot.py: recipe, root)

from keras_branch import backbones  # noqa: E402
from keras_branch.augment import make_augment  # noqa: E402
from keras_branch.build import adapter_name, block_name  # noqa: E402
from keras_branch.compiling import compile_model, make_optimizer  # noqa: E402
from keras_branch.data import load_omniglot  # noqa: E402
from keras_branch.evaluation import evaluate  # noqa: E402
from keras_branch.search.evolution.candidates import candidate_model  # noqa: E402
from keras_branch.search.evolution.system import (  # noqa: E402
    DEFAULT_HPARAMS, EvolvedSystem, TaskPath,
)
from keras_branch.zoo.cli import parse_seeds  # noqa: E402
from keras_branch.zoo.measure import machine_info  # noqa: E402

#: name -> (cloned stages, depth, adapter width per stage, trainable normalization of frozen stages)
PATHS: dict[str, tuple[tuple[int, ...], int, tuple[int, ...], bool]] = {
    "head": ((), 4, (0, 0, 0, 0), False),
    "clone4": ((4,), 4, (0, 0, 0, 0), False),
    "clone34": ((3, 4), 4, (0, 0, 0, 0), False),
    "clone234": ((2, 3, 4), 4, (0, 0, 0, 0), False),
    "clone3_depth3": ((3,), 3, (0, 0, 0, 0), False),
    "clone4_adapters": ((4,), 4, (16, 16, 16, 0), False),
    "clone4_adapter3": ((4,), 4, (0, 0, 16, 0), False),
    "clone4_adapter4": ((4,), 4, (0, 0, 0, 16), False),
    "norms": ((), 4, (0, 0, 0, 0), True),
    "clone4_norms": ((4,), 4, (0, 0, 0, 0), True),
}


def path_model(system: EvolvedSystem, task, name: str, seed: int) -> keras.Model:
    """The one-task model of path `name` on `system`'s root (own components trainable)."""
    clones, depth, adapters, norms = PATHS[name]
    route = [1 if d + 1 in clones else 0 for d in range(system.backbone.num_stages)]
    path = TaskPath(route, depth, list(adapters), dict(DEFAULT_HPARAMS))
    owned: dict[str, Any] = {f"head_{task.key}": None}
    for stage in clones:
        owned[block_name(stage - 1, 1)] = system.weights[block_name(stage - 1, 0)]
    owned.update({adapter_name(d, task.key): None for d, dim in enumerate(adapters[:depth]) if dim})
    model = candidate_model(system, task, path, owned, layer_seed=seed * 1000 + 7)
    if norms:
        for d in range(depth):
            if route[d] == 0:
                block = model.get_layer(block_name(d, 0))
                block.trainable = True
                for layer in block.layers:
                    layer.trainable = isinstance(layer, keras.layers.BatchNormalization)
    return model


def run(data_path: str, seeds: Sequence[int], paths: Sequence[str], epochs: int,
        checkpoints: Sequence[int], log=print, train_seeds: Sequence[int] | None = None,
        trained: Sequence[str] | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Trains every path on every alphabet per seed; returns the errors along the way.

    `train_seeds` (default: each root's seed) draw the new weights, the
    batches and the augmentation; with them every root trains each path
    once per train seed, recorded under `"<seed>/<train seed>"`: one root
    and path under several give the spread of the path's error that
    training alone makes. `trained` limits the alphabets trained (the root
    still pools the recipe's alphabets). `batch_size` (default: the
    recipe's) is the paths' batch; the root keeps the recipe's.

    Returns:
        `{"machine", "recipe", "tasks", "seeds", "epochs", "checkpoints", "paths": {name:
        {"params_per_task", "errors": {seed: {epoch: [validation, test]}},
        "task_errors": {seed: {task: {epoch: [validation, test]}}}}}}`
        (errors are means over the alphabets trained; with `train_seeds` the
        keys of `errors` and `task_errors` are `result["runs"]`).
    """
    recipe = common.make_recipe()
    batch = recipe["batch_size"] if batch_size is None else batch_size
    size = recipe["image_size"]
    data = load_omniglot(data_path, image_size=size)
    backbone = backbones.convnet4((size, size, 1), filters=recipe["filters"])
    marks = sorted({*checkpoints, epochs})
    unknown = sorted(set(trained or ()) - set(data.task_names))
    if unknown:
        raise SystemExit(f"--alphabets: unknown {unknown}; the data has {data.task_names}")
    tasks = [t for t in data.tasks if trained is None or t.name in trained]
    runs = [(s, s, str(s)) for s in seeds] if train_seeds is None else \
        [(s, t, f"{s}/{t}") for s in seeds for t in train_seeds]
    result: dict[str, Any] = {"machine": machine_info(), "recipe": recipe,
                              "tasks": data.task_names, "seeds": list(seeds),
                              "epochs": epochs, "checkpoints": marks, "batch_size": batch,
                              "runs": [key for _, _, key in runs],
                              "paths": {p: {"errors": {}, "task_errors": {}} for p in paths}}
    for seed, draws, key in runs:
        root, _ = common._root(data, backbone, recipe, seed)  # trained once per seed
        system = EvolvedSystem.from_root(root)
        for name in paths:
            row = result["paths"][name]
            per_task, params = {}, []
            for task in tasks:
                single = data.select_tasks([task.name])
                model = path_model(system, task, name, draws)
                params.append(own_params(model))
                steps = single.steps("train", batch)
                compile_model(model, optimizer=make_optimizer(
                    recipe["learning_rate"], "cosine", epochs=epochs, steps_per_epoch=steps))
                curve: dict[str, list[float]] = {}

                class Checkpoints(keras.callbacks.Callback):
                    def on_epoch_end(self, epoch, logs=None, model=model, single=single,
                                     task=task, curve=curve):
                        if epoch + 1 in marks:
                            curve[str(epoch + 1)] = [evaluate(model, single, split)[task.name]["error"]
                                                for split in ("validation", "test")]

                start = time.perf_counter()
                model.fit(single.epoch_dataset("train", batch, draws, 0, epochs,
                                               make_augment(recipe["augment"], seed=draws)),
                          epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
                          callbacks=[Checkpoints()])
                per_task[task.name] = curve
                log(f"seed {key} {name} {task.name}: validation/test error at {epochs} epochs "
                    f"{curve[str(epochs)][0]:.4f}/{curve[str(epochs)][1]:.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
            row["params_per_task"] = float(np.mean(params))
            row["task_errors"][key] = per_task
            row["errors"][key] = {
                str(e): np.mean([curve[str(e)] for curve in per_task.values()], axis=0).tolist()
                for e in marks}
    return result


def own_params(model: keras.Model) -> int:
    """The path's own parameters: every weight (statistics too) of its trainable layers.

    In a frozen block whose normalization is trainable (`norms`) only the
    normalization counts.
    """
    own = []
    for layer in model.layers:
        if not layer.trainable:
            continue
        parts = [sub for sub in layer.layers if sub.trainable] if hasattr(layer, "layers") else [layer]
        own += [w for part in parts for w in part.weights]
    return sum(int(np.prod(w.shape)) for w in own)


def table(result: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """Markdown: per path, test error (%) at the last epoch per seed and mean, and validation errors."""
    seeds = result.get("runs", [str(s) for s in result["seeds"]])
    last, first = result["epochs"], result["checkpoints"][0]
    lines = [f"| path | own params per task | test error %, seeds {', '.join(seeds)} | mean test % "
             f"| mean validation % | mean validation % at {first} epochs |",
             "|---|---:|---|---:|---:|---:|"]
    for name, row in result["paths"].items():
        def at(epoch: int, split: int) -> list[float]:
            return [row["errors"][s][str(epoch)][split] for s in seeds]

        test = at(last, 1)
        lines.append(f"| {name} | {row['params_per_task']:,.0f} | "
                     f"{', '.join(f'{100 * x:.2f}' for x in test)} | {100 * np.mean(test):.2f} | "
                     f"{100 * np.mean(at(last, 0)):.2f} | {100 * np.mean(at(first, 0)):.2f} |")
    if reference:
        for method in ("finetuned", "evolved"):
            if method in reference.get("methods", {}):
                row = reference["methods"][method]
                lines.append(f"| {method} (reference run) | | "
                             f"{', '.join(f'{100 * x:.2f}' for x in row['errors'])} | "
                             f"{100 * row['mean_error']:.2f} | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS)}")
    parser.add_argument("--epochs", type=int, default=80, help="training epochs per path")
    parser.add_argument("--checkpoints", default="4,16", help="epochs at which errors are also recorded")
    parser.add_argument("--reference", help="a benchmarks/omniglot.py result with finetuned/evolved rows")
    parser.add_argument("--train-seeds",
                        help="seeds of the new weights, batches and augmentation, each trained "
                             "on every root (default: the root's seed)")
    parser.add_argument("--alphabets", help="alphabets to train the paths on (default: all)")
    parser.add_argument("--batch-size", type=int,
                        help="the paths' batch size (default: the recipe's; the root keeps the recipe's)")
    parser.add_argument("--out", help="folder for evolve_paths.json")
    args = parser.parse_args(argv)
    trained = args.alphabets.split(",") if args.alphabets else None
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown}; known: {list(PATHS)}")
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1. Received: {args.epochs}")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1. Received: {args.batch_size}")
    reference = common.read_reference(args.reference)
    result = run(args.data, parse_seeds(args.seeds), paths, args.epochs,
                 [int(e) for e in args.checkpoints.split(",") if e],
                 train_seeds=parse_seeds(args.train_seeds) if args.train_seeds else None,
                 trained=trained, batch_size=args.batch_size)
    print(table(result, reference))
    if args.out:
        print("wrote", common.write_json(args.out, "evolve_paths.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
