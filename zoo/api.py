"""The zoo's public functions: list entries, build one, train it, evaluate a trained one."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from keras_branch.compiling import compile_model
from keras_branch.data import MultiTaskData, load_data
from keras_branch.errors import OutputExistsError
from keras_branch.evaluation import evaluate as evaluate_model
from keras_branch.evaluation import format_metrics, score_outputs
from keras_branch.export import litert_runner
from keras_branch.export.saved_model import DEFAULT_SIGNATURE
from keras_branch.results import save_run
from keras_branch.saving import load_task_model
from keras_branch.zoo.cards import headline, headline_metric, task_values
from keras_branch.zoo.registry import ZooEntry, ZooError, load_entry, names

WEIGHT_SUFFIXES = (".weights.h5", ".keras")


def list_entries() -> list[str]:
    """Every zoo entry's name, sorted.

    Example:
    >>> from keras_branch import zoo
    >>> zoo.list()[:3]
    ['celeba-affinity', 'omniglot-affinity-1.5x', 'omniglot-affinity-2x']
    """
    return names()


def entry(name: str) -> ZooEntry:
    """The definition of entry `name` (`ZooEntry`: spec, backbone, tasks, recipe, results).

    Raises:
        ZooError: for an unknown name, listing the known ones.

    Example:
    >>> from keras_branch import zoo
    >>> zoo.entry("planted-affinity").recipe
    {'epochs': 20, 'batch_size': 64, 'learning_rate': 0.001}
    """
    return load_entry(name)


def summary_rows() -> list[dict[str, Any]]:
    """One row per entry: name, data, kind, parameters and the headline result.

    `params` is the measured model's count when the entry is measured, else
    the count of the model `get` builds.
    """
    rows = []
    for name in names():
        e = load_entry(name)
        results = e.results()
        params = results["params"] if results else e.count_params()
        rows.append({"name": name, "data": e.data, "kind": e.kind, "params": params,
                     "headline": headline(results)})
    return rows


def format_list(rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The text `keras-branch zoo list` prints: one line per entry."""
    rows = summary_rows() if rows is None else rows
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'name':<{width}}  {'data':<8}  {'kind':<13}  {'params':>10}  mean test metric +- std (3 seeds)"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['data']:<8}  {r['kind']:<13}  "
                     f"{r['params']:>10,}  {r['headline']}")
    return "\n".join(lines)


def _fetch_weights(weights: str | os.PathLike) -> str:
    """A local path for `weights`: the path itself, or a download of an explicit URL."""
    text = os.fspath(weights)
    scheme = urlparse(text).scheme
    if scheme in ("http", "https", "file"):
        import keras

        filename = os.path.basename(urlparse(text).path)
        if not filename.endswith(WEIGHT_SUFFIXES):
            raise ZooError(f"`weights` URL must end in {' or '.join(WEIGHT_SUFFIXES)}. "
                           f"Received: weights={text!r}")
        try:
            return keras.utils.get_file(fname=filename, origin=text, cache_subdir="keras_branch_zoo")
        except Exception as err:  # network and HTTP errors of many types
            raise ZooError(f"Cannot download `weights` from {text!r}: {type(err).__name__}: {err}") from None
    if not text.endswith(WEIGHT_SUFFIXES):
        raise ZooError(f"`weights` must be a {' or '.join(WEIGHT_SUFFIXES)} file or an http(s) URL. "
                       f"Received: weights={text!r}")
    if not os.path.isfile(text):
        raise ZooError(f"`weights` file does not exist: weights={text!r}")
    return text


def get(
    name: str,
    weights: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    image_size: int | None = None,
):
    """Builds the model of entry `name`; nothing is downloaded unless `weights` is a URL.

    Args:
        name: the entry's name (see `list()`).
        weights: None (fresh initialisation), a local `.weights.h5` or
            `.keras` file, or an `http(s)://` / `file://` URL of one
            (downloaded with `keras.utils.get_file` into the Keras cache).
        input_shape: build for another input shape (e.g. smaller images).
        image_size: shorthand for square images of this side.

    Returns:
        The Keras model (a `BranchedModel` for trees), not compiled.

    Raises:
        ZooError: unknown entry, bad weights path or URL, weights that do not fit.

    Example (the last line is not run as a doctest: it needs the run folder
    `zoo.train` writes):
    >>> from keras_branch import zoo
    >>> model = zoo.get("planted-affinity")
    >>> model.count_params()
    27400
    >>> trained = zoo.get("planted-affinity", weights="run/model.keras")  # doctest: +SKIP
    """
    e = load_entry(name)
    model = e.build(e.resolve_input_shape(input_shape, image_size))
    if weights is not None:
        path = _fetch_weights(weights)
        try:
            model.load_weights(path)
        except Exception as err:
            raise ZooError(f"`weights` {os.fspath(weights)!r} do not fit entry {name!r}: "
                           f"{type(err).__name__}: {err}") from None
    return model


def resolve_data(e: ZooEntry, data: Any, image_size: int | None = None):
    """`(source, MultiTaskData)` for an entry from a `--data` source, data, or its default.

    Args:
        e: the entry.
        data: None (the entry's `data_default`), a source string
            (`"planted"`, `"omniglot:PATH"`, `"celeba:data_dir=..."`, `"npz:PATH"`),
            or a `MultiTaskData`.
        image_size: image side for image data (default: the entry's).

    Returns:
        The source as text (recorded in results) and the loaded data.
    """
    if data is None:
        if not e.data_default:
            raise ZooError(f"Entry {e.name!r} needs data: pass --data "
                           f"'{e.data}:...' (its data is not built in). Received: data=None")
        data = e.data_default
    if isinstance(data, MultiTaskData):
        return data.name, data
    if not isinstance(data, str):
        raise ZooError(f"`data` must be a --data source string or a MultiTaskData. "
                       f"Received: {type(data).__name__}")
    kind = data.partition(":")[0]
    if kind not in (e.data, "npz"):
        raise ZooError(f"Entry {e.name!r} is trained on {e.data!r} data. Received: data={data!r}")
    return data, load_data(data, image_size=image_size or e.image_size or 32)


def train(
    name: str,
    data: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    recipe: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
):
    """Trains entry `name` with its recipe (one seed) and optionally saves the run.

    Args:
        name: the entry's name.
        data: a `--data` source string, a `MultiTaskData`, or None for the
            entry's built-in default (planted entries).
        seed: initialisation and shuffling seed.
        out: run folder to write (`model.keras`, `metrics.json`, ...; see
            `keras_branch.results.save_run`), or None.
        recipe: overrides of recipe keys (e.g. `{"epochs": 1}`); unknown keys
            raise `ZooError` listing the allowed ones.
        overwrite: replace `out` if it exists.
        log: progress (one line per epoch), metric lines and, without
            `out`, a notice at the start and the end that nothing is saved
            (None: silent).

    Returns:
        `keras_branch.results.TrainResult` (model, history, metrics per split and task).

    Example (one epoch instead of the recipe's 20):
    >>> from keras_branch import zoo
    >>> run = zoo.train("planted-affinity", seed=0, out="runs/pa0", recipe={"epochs": 1},
    ...                 log=None)
    >>> sorted(run.metrics["test"]["g0_t0"])
    ['loss', 'mae', 'mse', 'n']
    """
    e = load_entry(name)
    e.check_recipe(recipe or {})
    if out is not None and os.path.lexists(out) and not overwrite:
        raise OutputExistsError(f"--out exists: {os.fspath(out)!r}; pass --overwrite to replace it.")
    source, data = resolve_data(e, data)
    if log:
        log(f"training {name} on {source}, seed {seed}, recipe {({**e.recipe, **(recipe or {})})}")
        if out is None:
            log("no --out: the model is trained and scored but not saved")
    result = e.fit(data, seed=seed, recipe=recipe, log=log)
    tasks = e.make_tasks()
    metric = headline_metric(tasks)
    values = task_values(result.metrics["test"], tasks, metric) if "test" in result.metrics else {}
    if log:
        if "test" in result.metrics:
            log(format_metrics(result.metrics["test"], "test"))
            log(f"mean test {metric}: {sum(values.values()) / len(values):.4f}")
    if out is not None:
        config = {"command": "zoo train", "entry": name, "data": source, "seed": seed,
                  "recipe": {**e.recipe, **(recipe or {})}}
        save_run(out, result, config, overwrite=overwrite)
        if log:
            log(f"saved to {os.fspath(out)}")
    elif log:
        log("nothing saved (no --out); pass --out DIR to keep the model and its metrics")
    return result


def evaluate(
    name: str,
    model: Any,
    data: Any = None,
    split: str = "test",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Scores a trained model of entry `name` and sets it beside the card's numbers.

    Args:
        name: the entry's name.
        model: a trained model, the path of its `.keras` file, or the path
            of a `.tflite` file exported from one (scored through LiteRT,
            all tasks from its default signature, so a phone model's
            accuracy compares with the card's).
        data: as in `train`.
        split: the split scored.
        batch_size: evaluation batch size.

    Returns:
        `{"metric", "tasks": {task: value}, "mean", "card": {"mean", "std",
        "seeds": {seed: mean}} or None, "metrics": full per-task metrics}`.

    Example (not run as a doctest: it needs the run folder `zoo.train` writes):
    >>> zoo.evaluate("planted-affinity", "runs/pa0/model.keras")["mean"]  # doctest: +SKIP
    """
    e = load_entry(name)
    tasks = e.make_tasks()
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".tflite"):
        metrics = _evaluate_tflite(e, os.fspath(model), data, split, batch_size)
    else:
        if isinstance(model, (str, os.PathLike)):
            model = load_task_model(model)
        if not model.compiled:
            compile_model(model)
        shape = tuple(model.input_shape[1:])
        _, data = resolve_data(e, data, image_size=shape[0] if len(shape) == 3 else None)
        metrics = evaluate_model(model, data, split, batch_size=batch_size)
    metric = headline_metric(tasks)
    values = task_values(metrics, tasks, metric)
    results = e.results()
    card = None
    if results:
        card = {"mean": results["mean"], "std": results["std"],
                "seeds": {s: v["mean"] for s, v in results["per_seed"].items()}}
    return {"metric": metric, "tasks": values, "mean": sum(values.values()) / len(values),
            "card": card, "metrics": metrics}


def _evaluate_tflite(e: ZooEntry, path: str, data: Any, split: str, batch_size: int):
    """Per-task metrics of a `.tflite` file of entry `e` on `split` (LiteRT, default signature)."""
    import numpy as np


    if not os.path.isfile(path):
        raise ZooError(f"No TFLite file at --model {path!r}.")
    interpreter = litert_runner.load(path)
    if DEFAULT_SIGNATURE not in litert_runner.signature_names(interpreter):
        raise ZooError(f"{path!r} has no {DEFAULT_SIGNATURE!r} signature (one with every task); "
                       f"its signatures are {litert_runner.signature_names(interpreter)}.")
    runner = interpreter.get_signature_runner(DEFAULT_SIGNATURE)
    shape = tuple(int(d) for d in next(iter(runner.get_input_details().values()))["shape"][1:])
    _, data = resolve_data(e, data, image_size=shape[0] if len(shape) == 3 else None)
    x = data.split(split).x
    if tuple(x.shape[1:]) != shape:
        raise ZooError(f"{path!r} takes inputs of shape {shape}; the data's are {tuple(x.shape[1:])}.")
    chunks = [litert_runner.run_signature(interpreter, DEFAULT_SIGNATURE, x[i:i + batch_size])
              for i in range(0, len(x), batch_size)]
    outputs = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    return score_outputs(outputs, data, split, e.make_tasks())
