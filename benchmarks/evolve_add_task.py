"""Adding a task to an evolved Omniglot-5 system, against evolving every task together.

muNet grows a deployed system task by task. For each seed this benchmark
takes the root of `benchmarks/omniglot.py` (`_root`: convnet4 pretrained on
all but the last alphabet pooled, the common recipe) and the recipe's
`evolve_*` settings (`omniglot.evolve_kwargs`), and runs:

- `together`: every alphabet evolved in one call (the data's order), as the
  benchmark's `evolved` method does;
- per `--late` alphabet L: the other alphabets evolved in one call, the
  system saved and loaded again (what `keras-branch evolve --system DIR
  --add-task L` reads), then L added. Under a budget (`evolve_budget`, a
  fraction of the fine-tuned system) the first evolution gets that
  fraction of the other alphabets' fine-tuned system, the growth that of
  all of them.

With `--reference omniglot.json` (a `benchmarks/omniglot.py` result with an
`evolved` row under the same recipe, tasks and seeds) `together` is read
from it instead of evolved again: the evolution is deterministic on one
machine, so it is the same system, and a seed costs one evolution less. A
reference from another CPU is refused (evolution installs other paths
there), and one from another commit is named in the log.

It prints, per seed and late alphabet, L's test error added later and
evolved together, and whether the old alphabets' outputs on every test
image are bit-identical before and after L was added, in Keras and in the
exported TFLite file (each task's signature). Without a budget, with one
pass, the last alphabet of the data sees the same system either way (the
same candidates: its errors must be equal); under one, the first
evolution's parts differ from those of all five, and a late alphabet gets
its own part where, visited last together, it may use what the others
left. An earlier alphabet is visited later than in `together`, with more
paths to draw parents from.

    python benchmarks/evolve_add_task.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --seeds 0,1,2 --late Balinese,Latin --out benchmarks/results/evolve_add_task
    python benchmarks/evolve_add_task.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --seeds 0,1,2 --late Balinese,Latin \\
        --reference benchmarks/results/evolved_intel/must_show_budget.json --out /tmp/add

`--evolve-finalists N`, `--evolve-candidate-start inherited|equal`,
`--evolve-candidate-hparams own|final`, `--evolve-adapters between|any`,
`--evolve-norms frozen|task` and `--evolve-final-batch-size N|none` run
both under those settings (a reference must have been run with the same
`omniglot.py` flags).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import omniglot as common  # noqa: E402  (benchmarks/omniglot.py: recipe, root)

from keras_branch import backbones  # noqa: E402
from keras_branch.data import MultiTaskData, load_omniglot  # noqa: E402
from keras_branch.export import export_model, litert_runner  # noqa: E402
from keras_branch.search.evolution import EvolvedSystem, evolve  # noqa: E402
from keras_branch.zoo.cli import parse_seeds  # noqa: E402
from keras_branch.zoo.measure import machine_info  # noqa: E402


def old_outputs_identical(before: keras.Model, after: keras.Model, old: Sequence[str],
                          x: np.ndarray, workdir: str) -> dict[str, bool]:
    """Whether every old task's outputs on `x` are the same bytes before and after a task was added.

    Returns:
        `{"keras": bool, "tflite": bool}`: Keras `predict` and the exported
        TFLite file's per-task signatures (every output of every old task).
    """
    keras_before, keras_after = before.predict(x, verbose=0), after.predict(x, verbose=0)
    same_keras = all(np.array_equal(keras_before[k], keras_after[k]) for k in old)
    runs = {}
    for label, model in (("before", before), ("after", after)):
        out = export_model(model, os.path.join(workdir, label), formats=["tflite"])
        runs[label] = litert_runner.run_all(os.path.join(out.out_dir, out.files["tflite"]), x)
    same_tflite = all(np.array_equal(value, runs["after"][k][output])
                      for k in old for output, value in runs["before"][k].items())
    return {"keras": bool(same_keras), "tflite": bool(same_tflite)}


def add_later(root: keras.Model, data: MultiTaskData, late: str, kwargs: dict[str, Any],
              workdir: str, first_budget: int | None = None) -> dict[str, Any]:
    """Evolves every task but `late`, saves and reloads the system, then adds `late`.

    With a budget, the first evolution gets `first_budget` (the recipe's
    fraction of the other tasks' fine-tuned system: what a user evolving
    them alone would state) and the growth `kwargs["budget"]` (that of every
    task): `kwargs`' budget alone would let the first tasks spend the late
    one's part.

    Returns:
        `{"error", "old_identical", "seconds", "path", "system_params",
        "spec", "history"}`: `late`'s test error, the bit-identity of the old
        tasks' outputs (`old_outputs_identical`), the seconds of the two
        evolutions, the path `late` got, the grown system's parameters and
        spec (which task owns which block), and the growth's search records
        (its candidates and final training: what ranked the installed path).
    """
    start = time.perf_counter()
    others = [n for n in data.task_names if n != late]
    base = evolve(root, others, data, out_dir=os.path.join(workdir, "system"),
                  **{**kwargs, "budget": first_budget})
    grown = evolve(EvolvedSystem.load(os.path.join(workdir, "system")), [late], data, **kwargs)
    seconds = time.perf_counter() - start
    old = [t.key for t in data.tasks if t.name != late]
    identical = old_outputs_identical(base.model, grown.model, old, data.split("test").x, workdir)
    return {"error": grown.metrics["test"][late]["error"], "old_identical": identical,
            "seconds": seconds, "path": grown.system.path(late).to_dict(),
            "system_params": grown.system.params(), "spec": grown.system.spec.to_dict(),
            "history": grown.scores["history"]}


#: Evolution settings added to the recipe after some results were written, with
#: the value that gives the behaviour from before (a result without the key ran so).
ADDED_LATER = {"evolve_finalists": 1, "evolve_final_start": "inherited",
               "evolve_candidate_start": "inherited", "evolve_adapters": "any",
               "evolve_final_batch_size": None, "evolve_candidate_hparams": "own",
               "evolve_norms": "frozen"}


def _bearing(recipe: dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings of `recipe` that the root and the evolution depend on."""
    if recipe is None:
        return None
    return common.evolution_settings({**ADDED_LATER, **recipe})


def together_from(reference: dict[str, Any], recipe: dict[str, Any], tasks: Sequence[str],
                  seeds: Sequence[int], machine: dict[str, Any] | None = None,
                  log=print) -> dict[int, dict[str, Any]]:
    """Per seed, `together`'s test errors and seconds from an omniglot.json's `evolved` row.

    Args:
        machine: this run's `machine_info()`; when given, the reference must
            have run on the same CPU (model, and vector extension where both
            record it), and another commit (`code`) is logged.

    Raises:
        SystemExit: the reference has no `evolved` row, or another recipe,
            other tasks, another CPU or lacks a seed (its systems would not
            be this run's).
    """
    row = reference["methods"].get("evolved")
    if row is None:
        raise SystemExit("--reference: the result has no 'evolved' row; run benchmarks/omniglot.py "
                         "with --methods evolved.")
    theirs_at = reference.get("machine") or {}
    if machine is not None and theirs_at:
        # The CPU's rounding moves candidates' validation scores, and with
        # them the paths evolution installs (docs/evolution.md).
        keys = [k for k in ("cpu", "simd") if theirs_at.get(k) and machine.get(k)]
        if any(theirs_at[k] != machine[k] for k in keys):
            raise SystemExit(
                "--reference: it ran on another CPU ("
                + ", ".join(f"{k} {theirs_at[k]!r} against {machine[k]!r}" for k in keys)
                + "); evolution installs other paths there, so its systems are not this run's.")
        if theirs_at.get("code") and machine.get("code") and theirs_at["code"] != machine["code"]:
            log(f"--reference ran commit {theirs_at['code']}, this run {machine['code']}: its "
                f"systems are this run's only if evolution did not change between them.")
    for field, theirs, mine in (("recipe", _bearing(reference.get("recipe")), _bearing(recipe)),
                                ("tasks", reference.get("tasks"), list(tasks))):
        if theirs != mine:
            raise SystemExit(f"--reference: its `{field}` differs from this run's: "
                             f"{theirs!r} against {mine!r}.")
    missing = [s for s in seeds if s not in reference["seeds"]]
    if missing:
        raise SystemExit(f"--reference: no evolved run of seeds {missing}; it has {reference['seeds']}.")
    return {s: {"together": dict(row["task_errors"][reference["seeds"].index(s)]),
                "together_seconds": row["seconds"][reference["seeds"].index(s)]} for s in seeds}


def run(data_path: str, seeds: Sequence[int], late: Sequence[str],
        alphabets: Sequence[str] | None = None, recipe: dict[str, Any] | None = None,
        reference: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Per seed: one evolution of every task, and one per late task added later.

    Args:
        data_path: the Omniglot zip or folder.
        seeds: the seeds (one root each).
        late: the alphabets added later, one at a time.
        alphabets: the alphabets (tasks) to use (default: all).
        recipe: overrides of `omniglot.DEFAULT_RECIPE`.
        reference: an omniglot.json result (`omniglot.read_reference`) whose
            `evolved` row stands for `together` (`together_from`).

    Returns:
        `{"machine", "recipe", "tasks", "seeds", "late", "runs": {seed: {"together":
        {task: test error}, "together_seconds", "added": {task: add_later's
        result}}}}`.
    """
    recipe = common.make_recipe(**(recipe or {}))
    size = recipe["image_size"]
    data = load_omniglot(data_path, image_size=size, alphabets=alphabets)
    unknown = [n for n in late if n not in data.task_names]
    if unknown:
        raise SystemExit(f"--late: unknown alphabets {unknown}; the data has {data.task_names}")
    where = machine_info()
    read = together_from(reference, recipe, data.task_names, seeds, where, log) if reference else {}
    backbone = backbones.convnet4((size, size, 1), filters=recipe["filters"])
    result: dict[str, Any] = {"machine": where, "recipe": recipe,
                              "tasks": data.task_names, "seeds": list(seeds),
                              "late": list(late), "together_read": bool(reference), "runs": {}}
    for seed in seeds:
        root, _ = common._root(data, backbone, recipe, seed)
        kwargs = common.evolve_kwargs(recipe, seed, data, backbone)
        if seed in read:
            entry: dict[str, Any] = {**read[seed], "added": {}}
        else:
            start = time.perf_counter()
            together = evolve(root, data.task_names, data, **kwargs)
            entry = {"together": {n: together.metrics["test"][n]["error"] for n in data.task_names},
                     "together_seconds": time.perf_counter() - start,
                     "together_params": together.system.params(), "added": {}}
        for name in late:
            others = data.select_tasks([n for n in data.task_names if n != name])
            first = common.evolve_budget_params(recipe, others, backbone)
            with tempfile.TemporaryDirectory() as workdir:
                added = add_later(root, data, name, kwargs, workdir, first)
            entry["added"][name] = added
            log(f"seed {seed} {name}: added later {100 * added['error']:.2f}%, together "
                f"{100 * entry['together'][name]:.2f}%, old outputs identical "
                f"{added['old_identical']} ({added['seconds']:.0f} s)")
        result["runs"][str(seed)] = entry
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: per late task, its test error (%) added later and together, per seed and mean."""
    seeds = [str(s) for s in result["seeds"]]
    lines = [f"| added later | test error % added, seeds {', '.join(seeds)} | together | "
             "mean added | mean together | difference | old outputs bit-identical (Keras, TFLite) |",
             "|---|---|---|---:|---:|---:|---|"]
    for name in result["late"]:
        added = [result["runs"][s]["added"][name]["error"] for s in seeds]
        together = [result["runs"][s]["together"][name] for s in seeds]
        same = [result["runs"][s]["added"][name]["old_identical"] for s in seeds]
        keras_same = "yes" if all(x["keras"] for x in same) else "NO"
        tflite_same = "yes" if all(x["tflite"] for x in same) else "NO"
        lines.append(
            f"| {name} | {', '.join(f'{100 * e:.2f}' for e in added)} | "
            f"{', '.join(f'{100 * e:.2f}' for e in together)} | {100 * np.mean(added):.2f} | "
            f"{100 * np.mean(together):.2f} | {100 * (np.mean(added) - np.mean(together)):+.2f} | "
            f"{keras_same}, {tflite_same} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__)
    parser.add_argument("--late", default="Balinese,Latin",
                        help="alphabets added to a system evolved on the others")
    parser.add_argument("--reference", help="omniglot.json with an 'evolved' row of the same "
                                            "recipe: read 'together' from it instead of evolving")
    parser.add_argument("--evolve-finalists", type=int,
                        help="evolution's finalists per visit (benchmarks/omniglot.py's flag; "
                             "default: the recipe's)")
    parser.add_argument("--evolve-candidate-start", choices=common.CANDIDATE_STARTS,
                        help="where a candidate's own components start (benchmarks/omniglot.py's "
                             "flag; default: the recipe's)")
    parser.add_argument("--evolve-candidate-hparams", choices=common.CANDIDATE_HPARAMS,
                        help="the rate and batch candidates train at (benchmarks/omniglot.py's "
                             "flag; default: the recipe's)")
    parser.add_argument("--evolve-adapters", choices=common.ADAPTER_STAGES,
                        help="after which stages an adapter mutation may insert one "
                             "(benchmarks/omniglot.py's flag; default: the recipe's)")
    parser.add_argument("--evolve-norms", choices=common.NORM_RULES,
                        help="whose batch norms a shared block runs (benchmarks/omniglot.py's "
                             "flag; default: the recipe's)")
    parser.add_argument("--evolve-final-batch-size", type=common.final_batch_size,
                        default=argparse.SUPPRESS,
                        help="batch size of the installed path's final training, none: each "
                             "path's own (benchmarks/omniglot.py's flag; default: the recipe's)")
    parser.add_argument("--out", help="folder for evolve_add_task.json")
    args = parser.parse_args(argv)
    late = [n for n in args.late.split(",") if n]
    if not late:
        raise SystemExit(f"--late must name at least one alphabet. Received: {args.late!r}")
    reference = common.read_reference(args.reference)
    recipe = {key: value for key, value in (("evolve_finalists", args.evolve_finalists),
                                            ("evolve_candidate_start", args.evolve_candidate_start),
                                            ("evolve_candidate_hparams",
                                             args.evolve_candidate_hparams),
                                            ("evolve_adapters", args.evolve_adapters),
                                            ("evolve_norms", args.evolve_norms))
              if value is not None}
    recipe.update(common.given_none_settings(args))
    result = run(args.data, parse_seeds(args.seeds), late, recipe=recipe, reference=reference)
    print(table(result))
    if args.out:
        print("wrote", common.write_json(args.out, "evolve_add_task.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
