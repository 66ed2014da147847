"""Measuring a zoo entry: test metric over seeds, parameters, FLOPs, TFLite sizes, latency.

`measure(name, data, seeds)` trains the entry once per seed with its recipe,
scores every task on the test split, exports seed 0's model to TFLite
(float32, float16, int8), times LiteRT at batch 1, and writes
`results.json` and the card (`README.md`) of the entry.

FLOPs are counted as in `benchmarks/inference.py` (per sample: 2 x
multiply-adds of convolutions and dense layers plus bias adds, batch norm
folded, activations and pooling not counted; shared blocks once), extended
to depthwise convolutions and to blocks that are functional sub-models (a
`keras.applications` network cut into stages).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras_branch.export import export_model, litert_runner
from keras_branch.files import atomic_write_json, atomic_write_text
from keras_branch.layers.conv_block import ConvBlock
from keras_branch.layers.soft_ordering import SoftOrdering
from keras_branch.zoo import cards
from keras_branch.zoo.api import resolve_data
from keras_branch.zoo.cards import headline_metric, task_values
from keras_branch.zoo.registry import CARD_FILE, ENTRY_FILE, RESULTS_FILE, ZooError, load_entry

#: TFLite formats a card reports (sizes; latency is timed on the float32 file).
TFLITE_FORMATS = ("tflite", "tflite-fp16", "tflite-int8")


# === FLOPs ===


def _layer_flops(layer, input_shape: tuple) -> tuple[int, tuple]:
    """FLOPs of one layer call per sample, and its output shape (batch axis kept)."""
    import keras


    if isinstance(layer, keras.Sequential):
        total, shape = 0, input_shape
        for sub in layer.layers:
            flops, shape = _layer_flops(sub, shape)
            total += flops
        return total, shape
    if isinstance(layer, ConvBlock):
        # The convolution counts; batch norm folds into it, ReLU and pooling are free.
        flops, shape = _layer_flops(layer.conv, input_shape)
        return flops, tuple(layer.pool.compute_output_shape(shape))
    if isinstance(layer, SoftOrdering):
        # What the call computes: every task's path, except that tasks holding
        # the same tensor share it (one input for all: soft ordering's first
        # depth once per pool layer; a fixed order once per distinct prefix).
        shapes = layer.depth_shapes((None, *input_shape[1:]))
        shared_input = not isinstance(layer.input, (list, tuple))
        total = 0
        for d in range(layer.depth):
            if layer.orders is None:
                copies = 1 if shared_input and d == 0 else layer.num_tasks
                total += copies * sum(_layer_flops(p, shapes[d])[0] for p in layer.pool)
                continue
            prefixes = {
                tuple(layer.orders[t, : d + 1]) if shared_input else (t,) + tuple(layer.orders[t, : d + 1])
                for t in range(layer.num_tasks)
            }
            total += sum(_layer_flops(layer.pool[int(p[-1])], shapes[d])[0] for p in prefixes)
        return total, (input_shape[0], *shapes[-1][1:])
    if isinstance(layer, keras.Model) and hasattr(layer, "_operations"):
        # A functional sub-model: every inner layer runs once on its own graph tensor.
        total = 0
        for sub in layer.layers:
            if isinstance(sub, keras.layers.InputLayer):
                continue
            # A merge layer (a residual Add) takes the shapes of all its inputs.
            shape = ([tuple(t.shape) for t in sub.input] if isinstance(sub.input, (list, tuple))
                     else _shape_of(sub.input))
            flops, _ = _layer_flops(sub, shape)
            total += flops
        return total, tuple(layer.compute_output_shape(input_shape))
    output_shape = tuple(layer.compute_output_shape(input_shape))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        positions = int(np.prod(output_shape[1:-1]))
        cout = output_shape[-1]
        return 2 * kh * kw * cout * positions + (positions * cout if layer.use_bias else 0), output_shape
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin, cout = input_shape[-1], output_shape[-1]
        positions = int(np.prod(output_shape[1:-1]))
        flops = 2 * kh * kw * cin * cout * positions // layer.groups
        return flops + (positions * cout if layer.use_bias else 0), output_shape
    if isinstance(layer, keras.layers.Dense):
        units, fan_in = output_shape[-1], input_shape[-1]
        rows = int(np.prod(output_shape[1:-1])) if len(output_shape) > 2 else 1
        return rows * (2 * fan_in * units + (units if layer.use_bias else 0)), output_shape
    return 0, output_shape


def _shape_of(tensor) -> tuple:
    if isinstance(tensor, (list, tuple)):
        tensor = tensor[0]
    return tuple(tensor.shape)


def count_flops(model) -> int:
    """Per-sample FLOPs of a functional model (see the module docstring).

    Args:
        model: a functional Keras model (a `BranchedModel`, or its blocks
            nested as `keras.Sequential` or functional sub-models).

    Returns:
        FLOPs of one forward pass of one sample.

    Example:
    >>> from keras_branch import zoo
    >>> count_flops(zoo.get("planted-affinity"))
    54408
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        flops, _ = _layer_flops(layer, _shape_of(layer.input))
        total += flops
    return total


# === Latency ===


def round_robin(calls: dict[str, Callable[[], Any]], runs: int, warmup: int = 10) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds.

    Interleaving spreads a noisy machine's slow moments over every function,
    so their ratios are fair.

    Example:
    >>> round_robin({"a": lambda: None, "b": lambda: None}, runs=5)
    {'a': ..., 'b': ...}
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(runs):
        for label, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def litert_latency_ms(path: str, x: np.ndarray, runs: int = 300, warmup: int = 10,
                      threads: int = 1) -> float:
    """Median milliseconds of one LiteRT `serving_default` call on one sample.

    Args:
        path: a `.tflite` file written by `keras_branch.export`.
        x: one input batch (its first sample is used).
        runs: timed calls (the median is returned).
        warmup: untimed calls first.
        threads: LiteRT threads (1: on a shared machine more threads measure contention).

    Returns:
        Median latency in milliseconds.
    """
    interpreter = litert_runner.load(path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    x1 = np.asarray(x[:1], dtype="float32")
    for _ in range(warmup):
        runner(**{litert_runner.INPUT_NAME: x1})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(**{litert_runner.INPUT_NAME: x1})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# === Machine ===


#: x86 vector extensions, widest first (`simd` in `machine_info`).
SIMD_LEVELS = ("avx512f", "avx2", "avx", "sse4_2")


def machine_info() -> dict[str, Any]:
    """What a measurement ran on: CPU model, vector extensions and cores, GPUs, memory, versions, code, date.

    `simd` is the widest x86 vector extension the CPU reports: two CPUs sold
    under one model name ("AMD EPYC") can differ in it, and TensorFlow's
    kernels then round differently, so a search's ranking (and the paths
    evolution installs) can move between them. `code` is the checkout's
    commit (`-dirty` with uncommitted changes; None outside a git checkout).
    """
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    flags = set(fields.get("flags", "").split())
    memory = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "memory": memory,
        "gpu": ", ".join(gpus) if gpus else "none",
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "simd": next((level for level in SIMD_LEVELS if level in flags), None),
        "code": code_version(),
        "date": datetime.date.today().isoformat(),
    }


def code_version(path: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout holding `path` (default: this package), `-dirty` if changed.

    None when `path` is not in a git checkout (an installed wheel) or git is
    missing: a result then says only the package versions it ran under.
    """
    where = os.path.dirname(os.path.abspath(path or __file__))
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


# === Metrics ===


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for a single value).

    The zoo cards and `benchmarks/omniglot.py` both report seeds this way.
    """
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return sum(values) / len(values), std


def summarize(per_seed: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the per-seed means."""
    return mean_and_std([v["mean"] for v in per_seed.values()])


def measure(
    name: str,
    data: Any = None,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | os.PathLike | None = None,
    recipe: dict[str, Any] | None = None,
    runs: int = 300,
    threads: int = 1,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Trains an entry once per seed, measures everything a card reports, writes it.

    Args:
        name: the entry's name.
        data: a `MultiTaskData` or a `--data` source (default: the entry's
            `data_default`).
        seeds: training seeds.
        out: folder receiving `results.json` and `README.md` (default: the
            entry's own folder, i.e. the card is updated).
        recipe: overrides of the entry's recipe (recorded in the results;
            a card measured with overrides says so).
        runs, threads: LiteRT timing (median of `runs` batch-1 calls).
        command: the command recorded as what produced these numbers
            (default: the entry's `reproduce`).
        log: progress lines (None: silent).

    Returns:
        The results dict written to `results.json`.

    Example (not run as a doctest: it trains three seeds and, without `out`,
    rewrites the entry's own `results.json` and card):
    >>> results = measure("planted-affinity", seeds=(0, 1, 2), out="measured")  # doctest: +SKIP
    >>> results["mean"], results["params"]  # doctest: +SKIP
    """
    entry = load_entry(name)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ZooError(f"`seeds` must name at least one seed. Received: {seeds!r}")
    source, data = resolve_data(entry, data)
    full_recipe = {**entry.recipe, **entry.check_recipe(recipe or {})}
    tasks = entry.make_tasks()
    metric = headline_metric(tasks)
    per_seed, seconds, model0 = {}, [], None
    for seed in seeds:
        if log:
            log(f"training {name}, seed {seed} ({full_recipe}) ...")
        start = time.perf_counter()
        result = entry.fit(data, seed=seed, recipe=recipe)
        seconds.append(round(time.perf_counter() - start, 1))
        values = task_values(result.metrics["test"], tasks, metric)
        mean = sum(values.values()) / len(values)
        per_seed[str(seed)] = {"mean": mean, "tasks": values}
        if log:
            log(f"seed {seed}: mean test {metric} {mean:.4f} ({seconds[-1]:.1f} s)")
        if model0 is None:
            model0 = result.model
    mean, std = summarize(per_seed)
    if log:
        log(f"exporting seed {seeds[0]}'s model to {', '.join(TFLITE_FORMATS)} and timing LiteRT ...")
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(model0, os.path.join(tmp, "export"), formats=TFLITE_FORMATS,
                                data=data, check=True)
        x = np.asarray(data.split("test").x[:1], dtype="float32")
        latency = litert_latency_ms(exported.files["tflite"], x, runs=runs, threads=threads)
    results = {
        "entry": name,
        "data": source,
        "metric": metric,
        "seeds": seeds,
        "per_seed": per_seed,
        "mean": mean,
        "std": std,
        "params": int(model0.count_params()),
        # The sharing measured (an evolved entry's spec is seed 0's result).
        "spec": model0.spec.to_dict() if hasattr(model0, "spec") else None,
        "flops": int(count_flops(model0)),
        "tflite_bytes": {f: int(exported.sizes[f]) for f in TFLITE_FORMATS},
        "parity_passed": bool(exported.passed),
        # Which format missed its tolerance, and by how much (export.json's rows).
        "parity": exported.parity.to_dict() if exported.parity is not None else None,
        "litert_ms": round(latency, 4),
        "litert_threads": threads,
        "latency_runs": runs,
        "train_seconds": seconds,
        "recipe": full_recipe,
        "recipe_overrides": dict(recipe or {}),
        "machine": machine_info(),
        "command": command or entry.reproduce,
    }
    folder = os.fspath(out) if out is not None else entry.path
    os.makedirs(folder, exist_ok=True)
    if entry.kind == "evolved" and results["spec"] != entry.spec:
        # An evolved entry's sharing is an outcome of its recipe, and `get`
        # builds the entry's spec: keep it seed 0's, so the weights `zoo
        # train` writes (same seed) fit and the card shows what was measured.
        if log:
            log(f"seed {seeds[0]} evolved another spec than {name}'s; updating "
                f"{os.path.join(folder, ENTRY_FILE)}")
        entry.spec = results["spec"]
        atomic_write_json(os.path.join(folder, ENTRY_FILE), entry.to_dict())
    atomic_write_json(os.path.join(folder, RESULTS_FILE), results)
    atomic_write_text(os.path.join(folder, CARD_FILE), cards.render_card(entry, results))
    if log:
        log(f"mean test {metric} {mean:.4f} +- {std:.4f} over seeds {seeds}; "
            f"{results['params']:,} parameters, {results['flops']:,} FLOPs, "
            f"LiteRT {latency:.3f} ms; wrote {folder}/{RESULTS_FILE} and {CARD_FILE}")
    return results

