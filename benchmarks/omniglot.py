"""Every Omniglot method under one recipe: one table and one Pareto plot.

For each seed, every requested method is trained under the same recipe
(convnet4 backbone, resolution, epochs, augmentation, learning-rate
schedule) and scored on the test drawers; then one table is printed:
parameters, FLOPs per image, mean test error +/- std over seeds, per-task
errors, LiteRT batch-1 latency (float32 tflite, seed-0 model, median) and
wall time per method. Written to `OUT/omniglot.json` (all numbers, the
specs found per seed, the recipe), `OUT/omniglot_pareto.png`
(parameters vs mean test error, one labelled point per method) and, with
`soft_ordering`, `OUT/omniglot_mixing.png` (the first seed's learned
mixing weights per task).

Methods (`METHODS`, each `method(data, backbone, recipe, seed) ->
(model, spec_or_None, extra)`; add one in a few lines):

* `independent`: one network per task, each trained on its own task's
  samples only (equivalent to the joint model with separate blocks, whose
  every sample would run through every network: 1/T of the cost);
  parameters are the sum, latency and FLOPs are those of the joint
  independent model (every task from one image).
* `shared`: one trunk, one head per task.
* `parallel_ordering`, `permuted_ordering`, `soft_ordering`: one pool of
  three convnet4 blocks (`filters` filters, group normalisation) after a
  conv-block encoder per task, applied in one order for every task, in a
  random order per task, or mixed per task and depth by learned softmax
  scales (Meyerson & Miikkulainen 2018). Trained with each sample routed
  through its own alphabet's path; FLOPs and latency are those of the
  served model, which computes every task's path.
* `ltb`: Learning to Branch supernet search (`ltb_epochs`, no augmentation),
  the extracted tree retrained from scratch under the recipe; with it
  `ltb_<budget>` (one per `--budgets` entry), the same search with supernet
  widths sized so every tree it can return fits the budget.
* `evolved`: muNet evolution (`evolve`, `evolve_*` recipe keys) from a root
  pretrained on all but the last alphabet pooled (`pretrain_root`), each
  installed path trained `evolve_final_epochs` further (at the recipe's rate
  and `evolve_final_batch_size`; with `evolve_candidate_hparams` "final",
  the default, candidates train at them too), depth mutations
  limited by `evolve_depth_moves`, adapters by `evolve_adapters` (none before
  the head by default), task-owned batch norms by `evolve_norms`, the system's parameters by
  `evolve_budget` (a fraction of `finetuned`'s); `finetuned`: the
  same root (trained once per seed for both), every layer fine-tuned per
  task (one network per task), muNet's baseline.
* `affinity_<budget>` (one per `--budgets` entry, e.g. `affinity_1.5x`):
  affinity search (probes `probe_epochs` long, shared by all budgets of a
  seed), the cheapest tree in budget retrained under the recipe.
* `tag_<budget>` (`tag` runs every `--budgets` entry): the same tree search
  and retraining on TAG's affinity (`tag_affinity`: lookahead steps during
  one training of the fully shared model, `tag_epochs` long with Adam at the
  recipe's rate and batch, no augmentation or schedule, a lookahead every
  `tag_every` steps at the training's rate), shared by all budgets of a seed.
  `affinity_seconds` in a method's `extra` is the affinity measurement's
  time (probes or TAG), printed under the table.

Usage:
    python benchmarks/omniglot.py --data ../shared/data/omniglot/images_background_small1.zip \\
        --seeds 0,1,2 --out benchmarks/results
    python benchmarks/omniglot.py --data omniglot.zip --alphabets Korean,Greek --methods shared,ltb \\
        --epochs 5 --seeds 0 --out /tmp/omni
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_branch import TreeSpec, backbones, build_model  # noqa: E402
from keras_branch.build import block_name  # noqa: E402
from keras_branch.augment import check_config  # noqa: E402
from keras_branch.compiling import check_recipe  # noqa: E402
from keras_branch.data import MultiTaskData, load_omniglot  # noqa: E402
from keras_branch.evaluation import evaluate, mean_metric  # noqa: E402
from keras_branch.files import atomic_write_json  # noqa: E402
from keras_branch.plots import plot_mixing_weights  # noqa: E402
from keras_branch.search import (  # noqa: E402
    TaskAffinity, learn_to_branch, tag_affinity, task_affinity,
)
from keras_branch.search.evolution import (  # noqa: E402
    ADAPTER_STAGES,
    CANDIDATE_HPARAMS,
    CANDIDATE_STARTS,
    DEPTH_MOVES,
    FINAL_STARTS,
    NORM_RULES,
    check_evolve_args,
    evolve,
    pretrain_root,
)
from keras_branch.search.learn_to_branch import undecided  # noqa: E402
from keras_branch.search.tree_search import branch  # noqa: E402
from keras_branch.soft_ordering_model import fit_soft_ordering  # noqa: E402
from keras_branch.seeding import seeded_layers  # noqa: E402
from keras_branch.training import fit_spec, train  # noqa: E402
from keras_branch.weighting import parse_weighting  # noqa: E402

from keras_branch.zoo.cli import parse_seeds  # noqa: E402
from keras_branch.zoo.measure import (  # noqa: E402
    count_flops, machine_info, mean_and_std, round_robin,
)
from keras_branch.zoo.registry import ZooError  # noqa: E402

#: The recipe every method trains under (JSON-able; `--epochs` etc. override).
DEFAULT_RECIPE: dict[str, Any] = {
    "image_size": 32,
    "filters": 64,
    "epochs": 40,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "schedule": "cosine",
    "warmup_epochs": 0,
    "weight_decay": 0.0,
    "augment": {"shift": 0.1, "rotation": 10, "zoom": 0.1},
    "probe_epochs": 20,
    "num_inputs": 256,
    # TAG: an eighth of the recipe's training (5 of 40 epochs), a lookahead every
    # other step (108 in all); the lookaheads of a convnet4 cost about two steps each.
    "tag_epochs": 5,
    "tag_every": 2,
    "ltb_epochs": 20,
    "budgets": ["1.5x", "2x"],
    # The budget states the size limit, so quality alone ranks the paths
    # within it (s = 1); at s = 0.7 the size term drove whole seeds to frozen
    # paths (docs/evolution.md).
    "evolve_scale": 1.0,
    # The evolved system's parameters, at most this fraction of the
    # fine-tuned system's (one root network per task, muNet's baseline);
    # None: no budget.
    "evolve_budget": 0.6,
    "evolve_passes": 1,
    # 24 candidates of 4 epochs per alphabet: 6 rarely draw the stage-4 clone
    # (about one child in ten, docs/evolution.md).
    "evolve_candidates": 24,
    "evolve_candidate_epochs": 4,
    # Every candidate trains its 4 epochs from what the visit started with, so
    # paths are ranked at equal training ("inherited", muNet's way, lets a
    # lineage retrained over generations outrank a fresh clone; Omniglot-5,
    # Intel Xeon, seeds 0-2: 7.98% against 8.05%, and Balinese added later
    # within 0.23 point of evolved together against 1.85; docs/evolution.md).
    "evolve_candidate_start": "equal",
    # Candidates train at the final training's rate and batch (the recipe's),
    # which then never mutate, so paths are ranked at the hyperparameters they
    # are trained at ("own", muNet's way, ranks them at their own). AMD EPYC
    # with AVX2, seeds 0-5: the same mean test error (7.95% against 7.91%),
    # a head on the frozen root for 1 of 30 paths against 3, and half the
    # spread around fine-tuning (docs/evolution.md).
    "evolve_candidate_hparams": "final",
    "evolve_clones": "suffix",
    # convnet4's flattened features change size with the depth: no depth moves.
    "evolve_depth_moves": "shape",
    # No adapter before the head: there it only deepens the task's head, and
    # the stage-4 clone trained 160 epochs with one ended 8.52% against
    # 7.56% without (AMD EPYC with AVX-512, seeds 0-2; docs/evolution.md).
    "evolve_adapters": "between",
    # Whose batch norms a shared (frozen) block runs: "frozen" (muNet's, the
    # block's) or "task" (the task's own copies, trained with its path). AMD
    # EPYC with AVX2, seeds 0-5: "task" 8.10% against 7.95%, 7.84% against
    # 8.06% on seeds 0-2 and 8.36% against 7.83% on 3-5 (docs/evolution.md).
    "evolve_norms": "frozen",
    # The installed path's own components train four times the recipe's epochs:
    # with the shared blocks frozen an epoch costs less than the whole network's,
    # and a stage-4 clone still gains from 80 to 160 epochs.
    "evolve_final_epochs": 160,
    # The final training's batch: the recipe's (as its rate is the recipe's,
    # `evolve_kwargs`), not the one a candidate's 4 epochs chose; None: each
    # path's own (results written before this key ran so).
    "evolve_final_batch_size": 32,
    # The visit's best paths of distinct structure that get the final
    # training (the best after it is installed); 1: the best candidate.
    "evolve_finalists": 1,
    # The final training continues the candidates' weights (muNet's way):
    # starting it from the root's blocks measured 0.23 point worse on
    # Omniglot-5 (docs/evolution.md, "Final training from the root").
    "evolve_final_start": "inherited",
    "weighting": "equal",
}

DEFAULT_METHODS = ("independent", "shared", "soft_ordering", "ltb", "affinity", "evolved")

Method = Callable[[MultiTaskData, Any, dict, int], tuple[keras.Model, TreeSpec | None, dict]]


#: The recipe's settings that are `fit_spec` arguments as they stand (`_fit_kwargs`).
FIT_SETTINGS = ("epochs", "batch_size", "learning_rate", "schedule", "warmup_epochs",
                "weight_decay", "augment")

#: What the root (`_root`) depends on: its training and the backbone's settings.
ROOT_SETTINGS = (*FIT_SETTINGS, "weighting", "image_size", "filters")


def evolution_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The settings of `recipe` that `finetuned` and `evolved` depend on: the root's and `evolve_*`.

    Two results whose evolution settings agree hold the same roots and
    systems, whatever their other methods' settings (trees, probes, TAG).
    """
    return {k: v for k, v in recipe.items() if k in ROOT_SETTINGS or k.startswith("evolve_")}


def _fit_kwargs(recipe: dict) -> dict[str, Any]:
    """The `fit_spec` keyword arguments of a recipe."""
    kwargs = {k: recipe[k] for k in FIT_SETTINGS}
    if recipe.get("weighting", "equal") != "equal":  # `NAME[:KEY=VALUE,...]`, keras_branch.weighting
        kwargs["weighting"] = parse_weighting(recipe["weighting"])
    return kwargs


def _fit_tree(spec: TreeSpec, data, backbone, recipe, seed) -> tuple[keras.Model, dict]:
    run = fit_spec(spec, backbone, data, seed=seed, verbose=0, log=None, **_fit_kwargs(recipe))
    return run.model, run.metrics["test"]


# === Methods ===


def method_shared(data, backbone, recipe, seed):
    """Fully shared trunk, one head per task."""
    spec = TreeSpec.shared(data.task_names, backbone.num_stages)
    model, test = _fit_tree(spec, data, backbone, recipe, seed)
    return model, spec, {"metrics": test}


def method_independent(data, backbone, recipe, seed):
    """One network per task, trained on that task's samples only."""
    metrics = {}
    for name in data.task_names:
        single = data.select_tasks([name])
        _, test = _fit_tree(TreeSpec.shared([name], backbone.num_stages), single, backbone,
                            recipe, seed)
        metrics.update(test)
    spec = TreeSpec.independent(data.task_names, backbone.num_stages)
    # The joint independent model (untrained) stands for the T networks in
    # parameter, FLOPs and latency accounting: the same blocks, run on one image.
    with seeded_layers(seed):
        model = build_model(spec, backbone, data.tasks)
    return model, spec, {"metrics": metrics, "cost_model": "untrained joint independent model"}


def ordering_method(ordering: str) -> Method:
    """One pool of convnet4 blocks (`recipe["filters"]` filters), mixed by `ordering`.

    Each task's encoder is a conv block and the pool holds the other
    `num_stages - 1` blocks, so a path is as deep as convnet4 and the
    three orderings differ only in how the pool is mixed.
    """

    def method(data, backbone, recipe, seed):
        run = fit_soft_ordering(data, ordering, depth=backbone.num_stages - 1,
                                width=recipe["filters"], seed=seed, verbose=0,
                                **_fit_kwargs(recipe))
        extra = {"metrics": run.metrics["test"]}
        if ordering == "soft":
            extra["mixing_weights"] = {k: v.tolist() for k, v in run.model.mixing_weights().items()}
        return run.model, None, extra

    method.__doc__ = {
        "soft": "Soft layer ordering (Meyerson & Miikkulainen 2018): learned mixing per task.",
        "parallel": "Parallel ordering: the pool in one order for every task (hard sharing).",
        "permuted": "Permuted ordering: the pool in a fixed random order per task.",
    }[ordering]
    return method


def ltb_method(budget: str | None = None) -> Method:
    """Learning to Branch (unconstrained, or with supernet widths sized for `budget`)."""

    def method(data, backbone, recipe, seed):
        start = time.perf_counter()
        result = learn_to_branch(data, backbone, epochs=recipe["ltb_epochs"], seed=seed,
                                 batch_size=recipe["batch_size"],
                                 learning_rate=recipe["learning_rate"], budget=budget)
        search = time.perf_counter() - start
        model, test = _fit_tree(result.spec, data, backbone, recipe, seed)
        return model, result.spec, {
            "metrics": test, "search_seconds": search, "budget": budget,
            "widths": result.settings["widths"], "undecided": undecided(result.branching),
        }

    method.__doc__ = (
        "Learning to Branch search, then the extracted tree retrained under the recipe"
        + ("." if budget is None else f"; supernet widths sized for budget {budget}.")
    )
    return method


def _measure_rsa(data, backbone, recipe, seed) -> TaskAffinity:
    """RSA: one probe per task, `probe_epochs` long, compared on `num_inputs` held-out images."""
    num_inputs = min(recipe["num_inputs"], len(data.split("validation")))
    return task_affinity(data, backbone, probe_epochs=recipe["probe_epochs"], seed=seed,
                         num_inputs=num_inputs, batch_size=recipe["batch_size"],
                         learning_rate=recipe["learning_rate"], log=None)


def _measure_tag(data, backbone, recipe, seed) -> TaskAffinity:
    """TAG: lookaheads during one training of the fully shared model (`tag_epochs`, `tag_every`)."""
    return tag_affinity(data, backbone, epochs=recipe["tag_epochs"],
                        batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                        every=recipe["tag_every"], seed=seed, log=None)


class Measurement(NamedTuple):
    """How a tree method measures its affinity, and what it adds to its `extra`."""

    measure: Callable[[MultiTaskData, Any, dict, int], TaskAffinity]
    seconds_key: str  # the measurement's time in `extra`, besides `affinity_seconds`
    extra: Callable[[TaskAffinity], dict[str, Any]]
    doc: str  # the method's docstring, `{budget}` filled in


#: Method-name prefix -> the affinity its `<prefix>_<budget>` methods search on.
MEASUREMENTS: dict[str, Measurement] = {
    "affinity": Measurement(_measure_rsa, "probe_seconds", lambda affinity: {},
                            "Affinity search at budget {budget}, the found tree retrained."),
    "tag": Measurement(_measure_tag, "tag_seconds",
                       lambda affinity: {"tag_lookaheads": affinity.info["measured_steps"]},
                       "Tree search on TAG's affinity at budget {budget}, the found tree retrained."),
}

#: Per kind (a measurement, or "root"), the latest (key, (value, seconds)):
#: one seed's value serves every method that needs it, and only the latest is kept.
_LATEST: dict[str, tuple[tuple, tuple[Any, float]]] = {}


def _latest(kind: str, key: tuple, compute: Callable[[], Any]) -> tuple[Any, float]:
    """`compute()` and its seconds, computed once while `key` stays the latest of `kind`."""
    if kind not in _LATEST or _LATEST[kind][0] != key:
        start = time.perf_counter()
        value = compute()
        _LATEST[kind] = (key, (value, time.perf_counter() - start))
    return _LATEST[kind][1]


def _measured(kind: str, data, backbone, recipe, seed) -> tuple[TaskAffinity, float]:
    """The `kind` affinity of one seed and its measurement's seconds, measured once for all budgets."""
    key = (id(data), id(backbone), seed, json.dumps(recipe, sort_keys=True))
    return _latest(kind, key, lambda: MEASUREMENTS[kind].measure(data, backbone, recipe, seed))


def _affinity(data, backbone, recipe, seed) -> tuple[TaskAffinity, float]:
    """The RSA affinity of one seed and its seconds (cached; benchmarks/weighting.py uses it)."""
    return _measured("affinity", data, backbone, recipe, seed)


def tree_method(kind: str, budget: str) -> Method:
    """The tree search at one budget (a parameter count or `"2x"`) on the `kind` affinity.

    `kind` is a key of `MEASUREMENTS` (`"affinity"`: RSA probes, `"tag"`:
    TAG); the cheapest tree in budget is retrained under the recipe.
    """
    measurement = MEASUREMENTS[kind]

    def method(data, backbone, recipe, seed):
        affinity, seconds = _measured(kind, data, backbone, recipe, seed)
        start = time.perf_counter()
        result = branch(affinity, backbone, data.tasks, budget)
        model, test = _fit_tree(result.spec, data, backbone, recipe, seed)
        return model, result.spec, {
            "metrics": test, "budget": budget, "budget_params": result.budget,
            measurement.seconds_key: seconds, "affinity_seconds": seconds,
            **measurement.extra(affinity), "search_seconds": time.perf_counter() - start,
        }

    method.__doc__ = measurement.doc.format(budget=budget)
    return method


def _root(data, backbone, recipe, seed) -> tuple[keras.Model, float]:
    """muNet's root for one seed (`pretrain_root`: all but the last alphabet pooled, the recipe).

    Trained once per seed for `evolved` and `finetuned`; returns the root
    model and its training seconds.
    """
    # The evolution settings do not change the root: a scale sweep trains it once.
    trained = {k: v for k, v in recipe.items() if k in ROOT_SETTINGS}
    key = (id(data), id(backbone), seed, json.dumps(trained, sort_keys=True))
    return _latest("root", key, lambda: pretrain_root(data, backbone, seed=seed,
                                                      **_fit_kwargs(recipe)).model)


def evolve_budget_params(recipe: dict[str, Any], data=None, backbone=None) -> int | None:
    """`evolve_budget` (a fraction of the fine-tuned system) in parameters, or None without one.

    The fine-tuned system is one root network per task of `data`: the
    independent model's parameters, so a budget needs `data` and `backbone`.
    """
    if recipe["evolve_budget"] is None:
        return None
    if data is None or backbone is None:
        raise ValueError("`evolve_budget` is a fraction of the fine-tuned system's parameters: "
                         "pass `data` and `backbone`, or set evolve_budget=None.")
    finetuned = TreeSpec.independent(data.task_names, backbone.num_stages).count_params(
        backbone, data.tasks)
    return int(recipe["evolve_budget"] * finetuned)


#: The recipe's `evolve_<name>` keys that are `evolve`'s argument `<name>` as they stand
#: (`evolve_budget` is a fraction of the fine-tuned system: `evolve_budget_params`).
EVOLVE_SETTINGS = ("scale", "passes", "candidates", "candidate_epochs", "candidate_start",
                   "candidate_hparams", "clones",
                   "depth_moves", "adapters", "norms", "final_epochs", "final_batch_size", "finalists",
                   "final_start")


def evolve_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's `evolve_*` settings under `evolve`'s argument names (all but the budget)."""
    return {name: recipe[f"evolve_{name}"] for name in EVOLVE_SETTINGS}


def evolve_kwargs(recipe: dict[str, Any], seed: int, data=None, backbone=None) -> dict[str, Any]:
    """`evolve`'s arguments under the recipe's `evolve_*` settings (final training at its rate).

    The budget is `evolve_budget_params` (it needs `data` and `backbone`).
    """
    return {**evolve_settings(recipe), "budget": evolve_budget_params(recipe, data, backbone),
            "final_learning_rate": recipe["learning_rate"], "augment": recipe["augment"],
            "seed": seed, "log": None}


def method_evolved(data, backbone, recipe, seed):
    """muNet: the root (`_root`) evolved to every task, each installed path trained further.

    Candidates train `evolve_candidate_epochs` (constant rate) to rank
    paths; the path a visit installs trains `evolve_final_epochs` more under
    a cosine schedule from the recipe's rate (its own components only). The extra holds the
    search's seconds (root excluded), its compute in single-task epochs and
    the accounted parameters per task.
    """
    root, root_seconds = _root(data, backbone, recipe, seed)
    result = evolve(root, data.task_names, data, **evolve_kwargs(recipe, seed, data, backbone))
    history = result.scores["history"]
    return result.model, result.system.spec, {
        "metrics": result.metrics["test"], "evolution_seconds": result.seconds["evolution"],
        "root_seconds": root_seconds,
        "task_epochs": sum(recipe["evolve_candidate_epochs"] for r in history
                           if "final" not in r and "over_budget" not in r)
        + sum(r["epochs"] for r in history if "final" in r),
        "params_per_task": result.system.describe()["params_per_task"],
    }


def method_finetuned(data, backbone, recipe, seed):
    """muNet's baseline: the `evolved` root, every layer fine-tuned per task (one network each).

    The root is `evolved`'s (`_root`: all but the last alphabet pooled, the
    recipe, the seed); each task then gets a copy of
    its stem and stages plus a fresh head, trained on that task's samples
    under the recipe. Parameters, FLOPs and latency are those of the joint
    independent model (T networks on one image), as for `independent`.
    """
    root, _ = _root(data, backbone, recipe, seed)
    trunk = [layer.name for layer in root.layers
             if layer.name == "stem" or layer.name in
             {block_name(d, 0) for d in range(backbone.num_stages)}]
    metrics = {}
    for name in data.task_names:
        single = data.select_tasks([name])
        with seeded_layers(seed):
            model = build_model(TreeSpec.shared([name], backbone.num_stages), backbone,
                                single.tasks)
        for layer in trunk:
            model.get_layer(layer).set_weights(root.get_layer(layer).get_weights())
        run = train(model, single, seed=seed, verbose=0, log=None, **_fit_kwargs(recipe))
        metrics.update(run.metrics["test"])
    spec = TreeSpec.independent(data.task_names, backbone.num_stages)
    with seeded_layers(seed):
        model = build_model(spec, backbone, data.tasks)
    return model, spec, {"metrics": metrics, "cost_model": "untrained joint independent model"}


METHODS: dict[str, Method] = {
    "independent": method_independent,
    "shared": method_shared,
    "parallel_ordering": ordering_method("parallel"),
    "permuted_ordering": ordering_method("permuted"),
    "soft_ordering": ordering_method("soft"),
    "ltb": ltb_method(),
    "evolved": method_evolved,
    "finetuned": method_finetuned,
}


def resolve_methods(names: Sequence[str], budgets: Sequence[str]) -> dict[str, Method]:
    """Method name -> function; `affinity` expands to one method per budget."""
    methods: dict[str, Method] = {}
    for name in names:
        kind, _, budget = name.partition("_")
        if kind in MEASUREMENTS:  # affinity / tag: every budget; affinity_<budget> / tag_<budget>
            for budget in [budget] if budget else budgets:
                methods[f"{kind}_{budget}"] = tree_method(kind, budget)
        elif name == "ltb":
            methods["ltb"] = METHODS["ltb"]
            for budget in budgets:
                methods[f"ltb_{budget}"] = ltb_method(budget)
        elif name.startswith("ltb_"):
            methods[name] = ltb_method(name[len("ltb_"):])
        elif name in METHODS:
            methods[name] = METHODS[name]
        else:
            raise SystemExit(
                f"--methods: unknown method {name!r}; known: {sorted(METHODS)} and "
                "affinity / affinity_<budget>, tag / tag_<budget>, ltb / ltb_<budget>"
            )
    return methods


# === Cost: parameters, FLOPs, LiteRT latency ===


def to_tflite(model: keras.Model, input_shape: Sequence[int], path: str) -> str:
    """Float32, builtins-only TFLite of any dict-output model (one endpoint, "predict").

    The same route for every method (BranchedModel or SoftOrderingModel):
    `keras.export.ExportArchive` -> SavedModel -> `TFLiteConverter`.
    """
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "predict", lambda inputs: model(inputs, training=False),
        input_signature=[keras.InputSpec(shape=(None, *input_shape), dtype="float32")],
    )
    saved = path + ".saved_model"
    archive.write_out(saved, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["predict"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def litert_latency(models: dict[str, keras.Model], x: np.ndarray, runs: int = 200,
                   threads: int = 1) -> dict[str, float]:
    """Median ms of one batch-1 call of each model's float32 tflite, measured round robin."""
    from ai_edge_litert.interpreter import Interpreter

    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in models.items():
            path = to_tflite(model, x.shape[1:], os.path.join(tmp, f"{label}.tflite"))
            interpreter = Interpreter(model_path=path, num_threads=threads)
            runner = interpreter.get_signature_runner("predict")
            calls[label] = (lambda r: lambda: r(inputs=x))(runner)
        medians = round_robin(calls, runs)
    return {k: 1000 * v for k, v in medians.items()}


# === The run ===


#: Recipe keys whose None is a setting (no budget), not "the default".
NONE_IS_A_SETTING = ("evolve_budget", "evolve_final_batch_size")


def make_recipe(**overrides: Any) -> dict[str, Any]:
    """`DEFAULT_RECIPE` with overrides (None values ignored but in `NONE_IS_A_SETTING`), validated."""
    recipe = copy.deepcopy(DEFAULT_RECIPE)
    recipe.update({k: v for k, v in overrides.items() if v is not None or k in NONE_IS_A_SETTING})
    check_recipe(recipe["schedule"], recipe["weight_decay"], recipe["warmup_epochs"],
                 recipe["epochs"])
    parse_weighting(recipe["weighting"])  # a bad name fails before any training
    check_evolve_args(evolve_settings(recipe), prefix="evolve_")
    budget = recipe["evolve_budget"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget <= 1):
        raise ValueError(f"`evolve_budget` must be a fraction in (0, 1] of the fine-tuned "
                         f"system's parameters, or None. Received: evolve_budget={budget!r}")
    recipe["augment"] = check_config(recipe["augment"] or {})
    return recipe


def run(
    data_path: str,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = DEFAULT_METHODS,
    alphabets: Sequence[str] | None = None,
    recipe: dict[str, Any] | None = None,
    out: str | None = None,
    latency_runs: int = 200,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains every method for every seed; returns (and writes) the results.

    Args:
        data_path: an Omniglot zip or folder (any alphabets in its layout).
        seeds: training seeds.
        methods: method names (see `METHODS`; `affinity` = every budget).
        alphabets: the alphabets (tasks) to use (default: all).
        recipe: see `DEFAULT_RECIPE` (`make_recipe` fills the defaults).
        out: a folder for `omniglot.json` and `omniglot_pareto.png`.
        latency_runs: LiteRT calls timed per model (0: no latency).
        log: progress lines.

    Returns:
        `{"recipe", "tasks", "seeds", "methods": {name: {...}}}`.
    """
    if not seeds:
        raise ValueError(f"`seeds` must name at least one seed. Received: seeds={seeds!r}")
    recipe = make_recipe(**(recipe or {}))
    size = recipe["image_size"]
    data = load_omniglot(data_path, image_size=size, alphabets=alphabets)
    backbone = backbones.convnet4((size, size, 1), filters=recipe["filters"])
    chosen = resolve_methods(methods, recipe["budgets"])
    log(f"Omniglot: {len(data.tasks)} alphabets {data.task_names}, {data}")
    log(f"recipe: {json.dumps(recipe)}")
    rows: dict[str, dict[str, Any]] = {
        name: {"errors": [], "task_errors": [], "seconds": [], "specs": [], "extra": []}
        for name in chosen
    }
    cost_models: dict[str, keras.Model] = {}
    partial = os.path.join(out, "omniglot.partial.json") if out else None
    if out:
        os.makedirs(out, exist_ok=True)
    for seed in seeds:
        for name, method in chosen.items():
            start = time.perf_counter()
            model, spec, extra = method(data, backbone, recipe, seed)
            seconds = time.perf_counter() - start
            test = extra.pop("metrics", None)
            if test is None:
                test = evaluate(model, data, "test")
            error = mean_metric(test, "error")
            row = rows[name]
            row["errors"].append(error)
            row["task_errors"].append({t: test[t]["error"] for t in data.task_names})
            row["seconds"].append(seconds)
            row["specs"].append(spec.to_dict() if spec is not None else None)
            row.setdefault("params_per_seed", []).append(int(model.count_params()))
            row["extra"].append(extra)
            if "params" not in row:  # seed 0's (searched trees may differ per seed)
                row["params"] = int(model.count_params())
                row["flops"] = int(count_flops(model))
            if seed == seeds[0]:
                cost_models[name] = model
            shape = f"  blocks per stage {spec.blocks_per_stage()}" if spec is not None else ""
            log(f"seed {seed} {name:<16} test error {error:.4f}  params {model.count_params():,}  "
                f"({seconds:.0f} s){shape}")
            if partial:  # finished runs survive a crash or an interrupted session
                atomic_write_json(partial, {"recipe": recipe, "tasks": data.task_names, "runs": rows})
    if latency_runs > 0 and cost_models:
        x1 = data.split("test").x[:1]
        for name, ms in litert_latency(cost_models, x1, runs=latency_runs).items():
            rows[name]["litert_ms"] = ms
    for row in rows.values():
        row["mean_error"], row["std_error"] = mean_and_std(row["errors"])
        row["mean_task_errors"] = {
            t: float(np.mean([e[t] for e in row["task_errors"]])) for t in data.task_names
        }
        row["mean_seconds"] = float(np.mean(row["seconds"]))
    # The CPU moves results (evolution installs other paths on another CPU): record it.
    result = {"machine": machine_info(), "recipe": recipe, "tasks": data.task_names, "seeds": list(seeds),
              "data": os.path.basename(os.fspath(data_path)), "methods": rows}
    log("")
    log(format_table(result))
    if out:
        atomic_write_json(os.path.join(out, "omniglot.json"), result)
        if os.path.exists(partial):
            os.remove(partial)
        plot_pareto(result, os.path.join(out, "omniglot_pareto.png"))
        log(f"wrote {os.path.join(out, 'omniglot.json')} and omniglot_pareto.png")
        if "soft_ordering" in cost_models:
            plot_mixing_weights(cost_models["soft_ordering"], os.path.join(out, "omniglot_mixing.png"),
                                title=f"soft ordering, seed {seeds[0]}: mixing weights s[t, d, j]")
            log("wrote omniglot_mixing.png (seed {}'s learned mixing weights)".format(seeds[0]))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The Markdown table of a result: one row per method."""
    tasks = result["tasks"]
    short = [t[:10] for t in tasks]
    recipe = result["recipe"]
    lines = [
        f"Omniglot ({len(tasks)} alphabets), convnet4 {recipe['filters']} filters at "
        f"{recipe['image_size']}x{recipe['image_size']}, {recipe['epochs']} epochs, batch "
        f"{recipe['batch_size']}, Adam{'W' if recipe['weight_decay'] else ''} "
        f"{recipe['learning_rate']:g} {recipe['schedule']}, augment {recipe['augment']}; "
        f"seeds {result['seeds']}",
        "",
        "| method | parameters | MFLOPs | mean test error | std | "
        + " | ".join(short) + " | LiteRT ms | wall s/seed |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|---:|",
    ]
    for name, row in result["methods"].items():
        latency = f"{row['litert_ms']:.3f}" if "litert_ms" in row else "-"
        lines.append(
            f"| {name} | {row['params']:,} | {row['flops'] / 1e6:.1f} | {row['mean_error']:.4f} | "
            f"{row['std_error']:.4f} | "
            + " | ".join(f"{row['mean_task_errors'][t]:.3f}" for t in tasks)
            + f" | {latency} | {row['mean_seconds']:.0f} |"
        )
    lines.append("")
    lines.append("parameters, MFLOPs and latency: the seed-0 model.")
    for name, row in result["methods"].items():
        measured = [e["affinity_seconds"] for e in row.get("extra", []) if "affinity_seconds" in e]
        if measured:  # probes (affinity_*) or TAG (tag_*), included in wall s/seed
            lines.append(f"{name}: affinity measured in {np.mean(measured):.1f} s/seed "
                         f"(" + ", ".join(f"{s:.1f}" for s in measured) + ")")
    for name, row in result["methods"].items():
        per_seed = row.get("params_per_seed", [])
        if len(set(per_seed)) > 1:
            lines.append(f"{name}: parameters per seed " + ", ".join(f"{p:,}" for p in per_seed))
    return "\n".join(lines)


def plot_pareto(result: dict[str, Any], path: str) -> str:
    """Parameters vs mean test error (error bars: std over seeds), one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    rows = result["methods"]
    errors = sorted(r["mean_error"] for r in rows.values())
    median = errors[len(errors) // 2]
    # A method far off (e.g. one that diverged) would flatten the others:
    # draw it at the top edge, labelled with its value.
    top = max((r["mean_error"] + r["std_error"] for r in rows.values()
               if r["mean_error"] <= 3 * median), default=1.0) * 1.15
    for name, row in rows.items():
        if row["mean_error"] > top:
            ax.plot(row["params"], top * 0.97, "^", color="gray")
            ax.annotate(f"{name} {row['mean_error']:.3f} (off scale)", (row["params"], top * 0.97),
                        textcoords="offset points", xytext=(5, -10), fontsize=8)
            continue
        ax.errorbar(row["params"], row["mean_error"], yerr=row["std_error"], fmt="o", capsize=3)
        ax.annotate(name, (row["params"], row["mean_error"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_ylim(0, top)
    ax.set_xscale("log")
    return save_figure(fig, ax, "parameters", "mean test error",
                       f"Omniglot, {len(result['tasks'])} alphabets, seeds {result['seeds']}", path)


def script_parser(doc: str | None, seeds: str = "0,1,2") -> argparse.ArgumentParser:
    """The parser of a script built on this benchmark: its docstring as help, `--data`, `--seeds`."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Omniglot zip or folder")
    parser.add_argument("--seeds", default=seeds)
    return parser


def write_json(out_dir: str, name: str, result: Any) -> str:
    """Writes `result` to `out_dir/name` atomically (the folder made if missing); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    atomic_write_json(path, result)
    return path


def read_reference(path: str | None) -> dict[str, Any] | None:
    """The `--reference` result a script draws or tabulates beside its own (None without one).

    Read before the run, so a wrong path ends the script at once with one
    line instead of after the training.
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            reference = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--reference: cannot read {path!r} as a benchmark result ({err}).") from None
    if not isinstance(reference, dict) or not isinstance(reference.get("methods"), dict):
        raise SystemExit(f"--reference: {path!r} has no \"methods\" table; expected an "
                         "omniglot.json written by benchmarks/omniglot.py.")
    return reference


def save_figure(fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> str:
    """Labels and grids `ax`, writes `fig` to `path`, closes it; returns `path`."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _budget_fraction(text: str) -> float | None:
    """`--evolve-budget`: a fraction, or `none` for no budget."""
    return None if text == "none" else float(text)


def final_batch_size(text: str) -> int | None:
    """`--evolve-final-batch-size`: a batch size, or `none` for each path's own."""
    return None if text == "none" else int(text)


def given_none_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `NONE_IS_A_SETTING` keys the command line gave, if only as none.

    Their flags default to `argparse.SUPPRESS`, so an absent flag leaves the
    recipe's value and `none` sets None.
    """
    return {key: value for key, value in vars(args).items() if key in NONE_IS_A_SETTING}


def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--alphabets", help="comma-separated alphabets (default: all)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated; 'affinity' and 'tag' run every --budgets entry")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--filters", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--weighting", help="task weighting of every training, NAME[:KEY=VALUE,...] "
                                            "(see keras_branch.weighting; default equal)")
    parser.add_argument("--schedule", choices=["constant", "cosine"])
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--augment", type=json.loads,
                        help='JSON, e.g. \'{"shift": 0.1, "rotation": 10, "zoom": 0.1}\'; {} for none')
    parser.add_argument("--probe-epochs", type=int)
    parser.add_argument("--tag-epochs", type=int, help="TAG's training (tag_<budget> methods)")
    parser.add_argument("--tag-every", type=int, help="a TAG lookahead every this many steps")
    parser.add_argument("--ltb-epochs", type=int)
    parser.add_argument("--budgets", help="comma-separated, e.g. 1.5x,2x")
    parser.add_argument("--evolve-candidates", type=int, help="evolution's candidates per task visit")
    parser.add_argument("--evolve-final-epochs", type=int,
                        help="epochs of the installed path's own training after each visit")
    parser.add_argument("--evolve-finalists", type=int,
                        help="evolution's finalists per visit (the best distinct paths "
                             "final-trained; the best after it is installed)")
    parser.add_argument("--evolve-final-start", choices=FINAL_STARTS,
                        help="where the installed path's final training starts: inherited (the "
                             "candidates' weights) or root (its own blocks from the root's)")
    parser.add_argument("--evolve-candidate-start", choices=CANDIDATE_STARTS,
                        help="where a candidate's own components start: inherited (its parent's "
                             "trained weights) or equal (what its parent started from)")
    parser.add_argument("--evolve-candidate-hparams", choices=CANDIDATE_HPARAMS,
                        help="the rate and batch candidates train at: own (each path's, "
                             "mutated) or final (the final training's, never mutated)")
    parser.add_argument("--evolve-budget", type=_budget_fraction,
                        default=argparse.SUPPRESS,
                        help="evolved system's parameters, at most this fraction of the "
                             "fine-tuned system's; none: no budget")
    parser.add_argument("--evolve-final-batch-size", type=final_batch_size,
                        default=argparse.SUPPRESS,
                        help="batch size of the installed path's final training; none: each "
                             "path's own (default: the recipe's)")
    parser.add_argument("--evolve-depth-moves", choices=DEPTH_MOVES,
                        help="depths a depth mutation may reach (evolve's depth_moves)")
    parser.add_argument("--evolve-adapters", choices=ADAPTER_STAGES,
                        help="after which stages an adapter mutation may insert one "
                             "(evolve's adapters)")
    parser.add_argument("--evolve-norms", choices=NORM_RULES,
                        help="whose batch norms a shared block runs: frozen (the block's) or "
                             "task (the task's own copies; evolve's norms)")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--out", help="folder for omniglot.json and omniglot_pareto.png")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ZooError as error:
        raise SystemExit(str(error)) from None
    recipe = {
        "epochs": args.epochs, "image_size": args.image_size, "filters": args.filters,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "augment": args.augment,
        "probe_epochs": args.probe_epochs, "ltb_epochs": args.ltb_epochs,
        "tag_epochs": args.tag_epochs, "tag_every": args.tag_every,
        "budgets": args.budgets.split(",") if args.budgets else None,
        "weighting": args.weighting,
        "evolve_candidates": args.evolve_candidates,
        "evolve_final_epochs": args.evolve_final_epochs,
        "evolve_finalists": args.evolve_finalists,
        "evolve_final_start": args.evolve_final_start,
        "evolve_candidate_start": args.evolve_candidate_start,
        "evolve_candidate_hparams": args.evolve_candidate_hparams,
        "evolve_depth_moves": args.evolve_depth_moves,
        "evolve_adapters": args.evolve_adapters,
        "evolve_norms": args.evolve_norms,
    }
    recipe.update(given_none_settings(args))
    run(
        args.data,
        seeds=seeds,
        methods=args.methods.split(","),
        alphabets=args.alphabets.split(",") if args.alphabets else None,
        recipe=recipe,
        out=args.out,
        latency_runs=args.latency_runs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
