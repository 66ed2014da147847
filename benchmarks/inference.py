"""Inference cost of sharing: independent networks vs one shared trunk vs a branched tree.

For one backbone and T tasks, builds three models side by side

* independent: every task its own block at every stage;
* shared: one trunk, one head per task;
* branched: stage 1 shared, stage 2 in two groups of tasks, later stages
  one block per task;

exports each (SavedModel + TFLite float32, float16, int8) with
`keras_branch.export.export_model`, and prints one table: parameters, FLOPs,
batch-1 latency of Keras (`predict_on_batch`), of the SavedModel's
`serving_default` signature and of LiteRT's `serving_default` signature
runner (float32 file), and the size of every artifact.

FLOPs are counted analytically, per sample: 2 x multiply-adds of every
Conv2D and Dense (+1 per output for a bias); batch norm is folded into the
preceding convolution at inference and activations, pooling and reshapes
are not counted. Shared blocks are counted once, as they run once.

Latency: median of `--runs` calls after warm-up, all models measured in
round-robin inside each runtime, so load from other processes spreads over
them evenly. LiteRT runs with `--threads` threads (1 by default: on a
shared 2-core machine more threads measure contention, not the model).

The last line checks the issue's claim: for LiteRT at batch 1,
latency(branched)/latency(shared) is within 1.15x of
FLOPs(branched)/FLOPs(shared).

Usage:
    python benchmarks/inference.py [--backbone convnet4] [--tasks 4] [--image-size 64]
        [--filters 32] [--runs 300] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_branch import Task, TreeSpec, backbones, build_model  # noqa: E402
from keras_branch.data import MultiTaskData, Split  # noqa: E402
from keras_branch.export import export_model, litert_runner  # noqa: E402

FORMATS = ("saved_model", "tflite", "tflite-fp16", "tflite-int8")
TOLERANCE = 1.15

# FLOPs are counted by the zoo's counter, so cards and this table agree.
from keras_branch.zoo.measure import count_flops, round_robin  # noqa: E402


# === Models and data ===


def benchmark_specs(names: Sequence[str], num_stages: int) -> dict[str, TreeSpec]:
    """The three sharing patterns compared, by label."""
    half = (len(names) + 1) // 2
    partitions = [[list(names)], [list(names[:half]), list(names[half:])]]
    partitions += [[[n] for n in names] for _ in range(num_stages - 2)]
    return {
        "independent": TreeSpec.independent(names, num_stages),
        "shared": TreeSpec.shared(names, num_stages),
        "branched": TreeSpec.from_partitions(partitions[:num_stages]),
    }


def synthetic_data(tasks: Sequence[Task], input_shape: tuple, n: int = 256,
                   seed: int = 0) -> MultiTaskData:
    """Random inputs in [0, 1) and labels: calibration and parity inputs for timing runs."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("train", "test"):
        x = rng.random((n, *input_shape)).astype("float32")
        y = {t.name: rng.integers(0, t.classes, n).astype("int32") for t in tasks}
        splits[split] = Split(x, y)
    return MultiTaskData(tasks, splits, name="synthetic")


def make_backbone(name: str, image_size: int, filters: int, width: int):
    if name == "convnet4":
        return backbones.convnet4((image_size, image_size, 1), filters=filters)
    if name == "mlp":
        return backbones.mlp(image_size, widths=(width, width, width // 2))
    raise SystemExit(f"--backbone must be convnet4 or mlp. Received: {name!r}")


# === Timing ===


def run_benchmark(
    backbone: str = "convnet4",
    num_tasks: int = 4,
    image_size: int = 64,
    filters: int = 32,
    width: int = 256,
    classes: int = 10,
    runs: int = 300,
    threads: int = 1,
    formats: Sequence[str] = FORMATS,
    out_dir: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Builds, exports and times the three models; returns one row per model.

    Args:
        backbone: `convnet4` (images `image_size`^2 x 1, `filters` per stage)
            or `mlp` (`image_size` inputs, widths `width, width, width/2`).
        num_tasks: T, each a `classes`-way classifier.
        runs: timed calls per model and runtime (median reported).
        threads: LiteRT threads.
        formats: formats exported (sizes); `tflite` is needed for LiteRT timing.
        out_dir: where exports go (a temporary folder by default).
        seed: initialisation and data seed.

    Returns:
        Rows with `model`, `params`, `flops`, `keras_ms`, `saved_model_ms`,
        `litert_ms` and `size_<format>` (bytes).
    """
    names = [f"task{i}" for i in range(num_tasks)]
    tasks = [Task(n, "multiclass", classes=classes) for n in names]
    bb = make_backbone(backbone, image_size, filters, width)
    data = synthetic_data(tasks, bb.input_shape, seed=seed)
    x1 = data.split("test").x[:1]
    tmp = tempfile.TemporaryDirectory() if out_dir is None else None
    root = out_dir or tmp.name
    rows, keras_calls, sm_calls, lite_calls = [], {}, {}, {}
    try:
        for label, spec in benchmark_specs(names, bb.num_stages).items():
            keras.utils.set_random_seed(seed)
            model = build_model(spec, bb, tasks, name=f"{label}_model")
            result = export_model(model, os.path.join(root, label), formats, data=data,
                                  overwrite=True)
            row = {"model": label, "params": model.count_params(), "flops": count_flops(model)}
            row.update({f"size_{f}": result.sizes[f] for f in formats})
            rows.append(row)
            keras_calls[label] = (lambda m: lambda: m.predict_on_batch(x1))(model)
            if "saved_model" in result.files:
                fn = tf.saved_model.load(result.files["saved_model"]).signatures["serving_default"]
                x_tf = tf.constant(x1)
                sm_calls[label] = (lambda f: lambda: f(inputs=x_tf))(fn)
            if "tflite" in result.files:
                interpreter = litert_runner.load(result.files["tflite"], num_threads=threads)
                runner = interpreter.get_signature_runner("serving_default")
                lite_calls[label] = (lambda r: lambda: r(inputs=x1))(runner)
        for column, calls in (("keras_ms", keras_calls), ("saved_model_ms", sm_calls),
                              ("litert_ms", lite_calls)):
            if calls:
                medians = round_robin(calls, runs)
                for row in rows:
                    row[column] = 1000 * medians[row["model"]]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def format_table(rows: list[dict[str, Any]], formats: Sequence[str] = FORMATS) -> str:
    """The benchmark table (latencies in ms at batch 1, sizes in KiB)."""
    size_cols = [f for f in formats if f"size_{f}" in rows[0]]
    header = ("| model | parameters | MFLOPs | Keras ms | SavedModel ms | LiteRT ms | "
              + " | ".join(f"{f} KiB" for f in size_cols) + " |")
    lines = [header, "|" + "---|" * (6 + len(size_cols))]
    for r in rows:
        sizes = " | ".join(f"{r[f'size_{f}'] / 1024:,.0f}" for f in size_cols)
        nan = float("nan")
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['flops'] / 1e6:,.1f} | "
            f"{r.get('keras_ms', nan):.2f} | {r.get('saved_model_ms', nan):.2f} | "
            f"{r.get('litert_ms', nan):.3f} | {sizes} |"
        )
    return "\n".join(lines)


def ratio_check(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> tuple[bool, str]:
    """Is LiteRT latency(branched)/latency(shared) within `tolerance`x of the FLOPs ratio?"""
    by = {r["model"]: r for r in rows}
    flops = by["branched"]["flops"] / by["shared"]["flops"]
    latency = by["branched"]["litert_ms"] / by["shared"]["litert_ms"]
    factor = latency / flops
    ok = 1 / tolerance <= factor <= tolerance
    text = (f"LiteRT batch 1: latency(branched)/latency(shared) = {latency:.2f}, "
            f"FLOPs(branched)/FLOPs(shared) = {flops:.2f}, factor {factor:.2f} "
            f"({'within' if ok else 'NOT within'} {tolerance}x)")
    return ok, text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="convnet4", choices=("convnet4", "mlp"))
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64,
                        help="image side (convnet4) or input width (mlp)")
    parser.add_argument("--filters", type=int, default=32, help="convnet4 filters per stage")
    parser.add_argument("--width", type=int, default=256, help="mlp stage width")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", default=None, help="keep the exports here")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    start = time.perf_counter()
    rows = run_benchmark(args.backbone, args.tasks, args.image_size, args.filters, args.width,
                         args.classes, args.runs, args.threads, formats, args.out)
    shape = (f"{args.image_size}x{args.image_size}x1, {args.filters} filters"
             if args.backbone == "convnet4" else f"{args.image_size} inputs, width {args.width}")
    print(f"{args.backbone} ({shape}), {args.tasks} tasks x {args.classes} classes; "
          f"batch 1, median of {args.runs} runs, LiteRT {args.threads} thread(s); "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    print(format_table(rows, formats))
    if "litert_ms" in rows[0]:
        print(ratio_check(rows)[1])
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
