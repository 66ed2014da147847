"""CelebA's 40 attributes end to end under `tfds.testing.mock_data`: load, TAG search, train, export.

CelebA cannot be downloaded on the machines this project is built on. TFDS'
mock data serves `celeb_a` without the network: random images of CelebA's
shape (218x178x3) and random attributes, through the same
`tfds.load("celeb_a")` call that `keras_branch.data.load_celeba` makes for
the real data set. The script runs the whole path on them:

1. **load**: `load_data("celeba:...")` (center crop, resize to
   `--image-size`, 40 binary tasks), `--train` mock images for training and
   `--eval` for each of validation and test;
2. **search**: TAG's affinity over the 40 attributes and the budgeted tree
   search (`affinity_search(affinity="tag")`, budget `--budget`);
3. **train**: the found tree (`fit_spec`, `--epochs`), timing each training
   step after the first (the first traces the step): the throughput in
   images per second. No per-epoch validation and no scoring: at 40 tasks
   tracing Keras' test step costs as much as tracing the training step, and
   random labels have nothing to score;
4. **export**: `keras_branch.export.export_model` (`--formats`; the SavedModel
   holds 41 signatures, one per task and `serving_default`);
5. the estimate: seconds of one training epoch over CelebA's real training
   split (162,770 images) = 162,770 / the measured throughput, at this image
   size, backbone and batch size, on this machine.

The estimate leaves out what the mock run does not measure: decoding and
resizing the real JPEGs (`load_celeba` does it once, before training, and
keeps the images in memory: 48 KiB each at 64x64), validation, and any
slowdown of a 162,770-image array that does not fit in memory. The tree is
searched on random labels, so it says nothing about CelebA; the run checks
that every step works at 40 tasks and measures the cost.

    python benchmarks/celeba_mock.py
    python benchmarks/celeba_mock.py --image-size 64 --backbone mobilenet_v2 \\
        --backbone-arg alpha=0.35 --formats saved_model,tflite --out celeba_mock
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_branch import backbones
from keras_branch.cli_args import examples, key_values, positive_int
from keras_branch.cli_args import seed as seed_type
from keras_branch.data import MultiTaskData, load_data
from keras_branch.data.celeba import SPLIT_SIZES
from keras_branch.errors import KerasBranchError
from keras_branch.export import export_model
from keras_branch.search import affinity_search
from keras_branch.training import fit_spec
from keras_branch.zoo.measure import machine_info

#: CelebA's real training split, the size the epoch estimate is for.
CELEBA_TRAIN = SPLIT_SIZES["train"]


def estimate_epoch_seconds(samples_per_second: float, num_samples: int = CELEBA_TRAIN) -> float:
    """Seconds of one epoch over `num_samples` at a measured training throughput.

    Args:
        samples_per_second: the training throughput (finite, > 0).
        num_samples: samples in one epoch (default: CelebA's 162,770 training images).

    Returns:
        `num_samples / samples_per_second`.

    Example:
    >>> estimate_epoch_seconds(1000.0)
    162.77
    """
    if not (math.isfinite(samples_per_second) and samples_per_second > 0):
        raise ValueError(f"`samples_per_second` must be a finite number > 0. "
                         f"Received: samples_per_second={samples_per_second!r}")
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1. Received: num_samples={num_samples!r}")
    return num_samples / samples_per_second


class StepTimer(keras.callbacks.Callback):
    """Times each training step of `fit` after the first (which traces it).

    Args:
        num_samples: training samples per epoch.
        batch_size: the batch size (an epoch's last batch may be smaller).

    Attributes:
        seconds: wall time of the timed steps (data fetch and update included).
        samples: samples in the timed steps.
        steps: number of timed steps.

    Overriding `on_train_batch_end` makes Keras call it synchronously, once
    the step's logs are computed, so each time covers the whole step.

    Example (not run as a doctest: it trains):
    >>> timer = StepTimer(len(data.split("train")), batch_size=32)  # doctest: +SKIP
    >>> fit_spec(spec, backbone, data, batch_size=32, callbacks=[timer])  # doctest: +SKIP
    >>> estimate_epoch_seconds(timer.samples_per_second)  # doctest: +SKIP
    """

    def __init__(self, num_samples: int, batch_size: int):
        super().__init__()
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seconds, self.samples, self.steps = 0.0, 0, 0
        self._seen = 0
        self._start = 0.0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        elapsed = time.perf_counter() - self._start
        self._seen += 1
        if self._seen == 1:
            return  # the first step traces the training function
        self.seconds += elapsed
        self.samples += min(self.batch_size, self.num_samples - batch * self.batch_size)
        self.steps += 1

    @property
    def samples_per_second(self) -> float:
        """Training throughput over the timed steps (NaN when none was timed)."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def run_benchmark(
    out_dir: str | os.PathLike,
    image_size: int = 64,
    num_train: int = 256,
    num_eval: int = 32,
    backbone: str = "convnet4",
    backbone_args: dict | None = None,
    budget: int | str = "1.5x",
    tag_epochs: int = 2,
    every: int = 4,
    epochs: int = 2,
    batch_size: int = 32,
    formats: str = "saved_model",
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Loads mock CelebA through TFDS, searches a tree with TAG, trains and exports it.

    Args:
        out_dir: where the search folder (`search/`) and the export
            (`export/`) are written.
        image_size: side of the square images.
        num_train, num_eval: mock images for training, and for each of
            validation and test.
        backbone, backbone_args: the staged backbone (`keras_branch.backbones.get`).
        budget: the tree search's parameter budget (`"1.5x"`: 1.5 times the
            fully shared model).
        tag_epochs, every: TAG's training epochs and lookahead interval.
        epochs, batch_size: the training of the found tree (the batch size
            serves TAG too).
        formats: export formats (`keras_branch.export.FORMATS`).
        seed: initialisation and shuffling seed.
        overwrite: replace `search/` and `export/` of an earlier run.
        log: progress lines (None: silent).

    Returns:
        A report: `tasks`, `spec`, `params`, `budget`, `seconds` per phase
        (`load`, `search`, `train`, `export`), `samples_per_second`,
        `timed_steps`, `epoch_seconds` (the estimate at CelebA's size),
        `export_files`, `signatures`, `machine` (`zoo.measure.machine_info`)
        and the settings.

    Example (not run as a doctest: it traces a 40-task training, a minute or more):
    >>> report = run_benchmark("celeba_mock", image_size=16, num_train=32)  # doctest: +SKIP
    >>> print(format_report(report))  # doctest: +SKIP
    """
    import tensorflow_datasets as tfds

    if epochs * math.ceil(num_train / batch_size) < 2:
        raise ValueError(f"The throughput needs at least 2 training steps (the first traces): "
                         f"epochs={epochs}, num_train={num_train}, batch_size={batch_size}.")
    out_dir = os.fspath(out_dir)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # An empty data_dir: mock_data serves celeb_a whatever the folder holds.
    with tempfile.TemporaryDirectory() as data_dir, \
            tfds.testing.mock_data(num_examples=max(num_train, num_eval)):
        data = load_data(f"celeba:data_dir={data_dir},train={num_train},validation={num_eval},"
                         f"test={num_eval}", image_size=image_size)
    seconds["load"] = time.perf_counter() - start
    try:
        staged = backbones.get(backbone, data.input_shape, **(backbone_args or {}))
    except TypeError as err:  # an argument the backbone does not take
        raise ValueError(f"--backbone-arg does not fit backbone {backbone!r}: {err}") from None

    start = time.perf_counter()
    search = affinity_search(data, staged, budget, affinity="tag", epochs=tag_epochs,
                             every=every, batch_size=batch_size, seed=seed, log=log)
    search.save(os.path.join(out_dir, "search"), overwrite=overwrite)
    seconds["search"] = time.perf_counter() - start

    start = time.perf_counter()
    timer = StepTimer(len(data.split("train")), batch_size)
    # Training only (see the module docstring): no validation split, nothing scored.
    train_only = MultiTaskData(data.tasks, {"train": data.split("train")}, data.info, data.name)
    run = fit_spec(search.spec, staged, train_only, epochs=epochs, batch_size=batch_size,
                   seed=seed, verbose=0, callbacks=[timer], eval_splits=())
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    exported = export_model(run.model, os.path.join(out_dir, "export"), formats=formats,
                            overwrite=overwrite, log=log)
    seconds["export"] = time.perf_counter() - start

    rate = timer.samples_per_second
    return {
        "tasks": list(search.spec.tasks), "spec": search.spec,
        "blocks_per_stage": search.spec.blocks_per_stage(), "params": search.scores["params"],
        "shared_params": search.scores["shared_params"], "budget": budget,
        "seconds": seconds, "tag_seconds": search.seconds["tag"],
        "samples_per_second": rate, "timed_steps": timer.steps,
        "epoch_seconds": estimate_epoch_seconds(rate),
        "export_files": dict(exported.files), "signatures": list(exported.signatures),
        "machine": machine_info(),
        "settings": {"image_size": image_size, "num_train": num_train, "num_eval": num_eval,
                     "backbone": backbone, "backbone_args": backbone_args or {},
                     "tag_epochs": tag_epochs, "every": every, "epochs": epochs,
                     "batch_size": batch_size, "formats": formats, "seed": seed},
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of `run_benchmark` as a table and the estimate line."""
    s, sec, m = report["settings"], report["seconds"], report["machine"]
    args = ", ".join(f"{k}={v}" for k, v in s["backbone_args"].items())
    size = f"{s['image_size']}x{s['image_size']}"
    rate = report["samples_per_second"]
    epoch = report["epoch_seconds"]
    files = ", ".join(sorted(report["export_files"]))
    lines = [
        f"CelebA under tfds.testing.mock_data: {len(report['tasks'])} tasks, {size} images, "
        f"{s['backbone']}({args}), batch {s['batch_size']}, seed {s['seed']}",
        f"machine: {m['cpu']}, {m['cpu_cores']} cores, GPU {m['gpu']}; TensorFlow "
        f"{m['tensorflow']}, Keras {m['keras']}, {m['date']}"
        + (f" (load average {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""),
        "",
        "| phase | seconds | what |",
        "|---|---:|---|",
        f"| load | {sec['load']:.1f} | tfds.load('celeb_a'): {s['num_train']} train, "
        f"{s['num_eval']} validation, {s['num_eval']} test mock images |",
        f"| TAG search | {sec['search']:.1f} | {s['tag_epochs']} epochs, a lookahead every "
        f"{s['every']} steps ({report['tag_seconds']:.1f} s), then the tree search: blocks "
        f"{report['blocks_per_stage']}, {report['params']:,} parameters (budget "
        f"{report['budget']}; fully shared {report['shared_params']:,}) |",
        f"| train | {sec['train']:.1f} | {s['epochs']} epochs; {report['timed_steps']} steps "
        f"after the first timed: {rate:.1f} images/s |",
        f"| export | {sec['export']:.1f} | {files}; {len(report['signatures'])} signatures |",
        "",
        f"estimated seconds per epoch at CelebA's real size ({CELEBA_TRAIN:,} train images, "
        f"{size}): {epoch:.1f} ({epoch / 60:.1f} min at {rate:.1f} images/s)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celeba_mock.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("python benchmarks/celeba_mock.py --image-size 32 --train 64 --batch-size 16"))
    parser.add_argument("--image-size", type=positive_int, default=64,
                        help="side of the square images (default: 64, the zoo's CelebA entry's)")
    parser.add_argument("--train", type=positive_int, default=256,
                        help="mock training images (default: 256)")
    parser.add_argument("--eval", type=positive_int, default=32,
                        help="mock images of validation and of test (default: 32)")
    parser.add_argument("--backbone", default="convnet4",
                        help=f"one of {', '.join(backbones.BUILTIN)} (default: convnet4)")
    parser.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone argument, VALUE as JSON (default: filters=16 for convnet4)")
    parser.add_argument("--budget", default="1.5x",
                        help="parameters, or a multiple of the fully shared model (default: 1.5x)")
    parser.add_argument("--tag-epochs", type=positive_int, default=2,
                        help="TAG's training epochs (default: 2)")
    parser.add_argument("--every", type=positive_int, default=4,
                        help="TAG's lookahead every k steps (default: 4)")
    parser.add_argument("--epochs", type=positive_int, default=2,
                        help="training epochs of the found tree (default: 2)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="batch size of TAG and of the training (default: 32)")
    parser.add_argument("--formats", default="saved_model",
                        help="export formats, e.g. saved_model,tflite (default: saved_model)")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help="initialisation and shuffling seed (default: 0)")
    parser.add_argument("--out", help="folder for search/ and export/ (default: a temporary "
                                      "folder, removed at the end)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace search/ and export/ of an earlier run in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark from the command line; bad input ends with one line and exit 2."""
    args = build_parser().parse_args(argv)
    budget: int | str = int(args.budget) if args.budget.isdigit() else args.budget
    try:
        backbone_args = key_values(args.backbone_arg, "--backbone-arg", ValueError)
        if args.backbone == "convnet4" and not args.backbone_arg:
            backbone_args = {"filters": 16}
        with contextlib.ExitStack() as stack:
            out = args.out or stack.enter_context(tempfile.TemporaryDirectory())
            report = run_benchmark(
                out, image_size=args.image_size, num_train=args.train, num_eval=args.eval,
                backbone=args.backbone, backbone_args=backbone_args, budget=budget,
                tag_epochs=args.tag_epochs, every=args.every, epochs=args.epochs,
                batch_size=args.batch_size, formats=args.formats, seed=args.seed,
                overwrite=args.overwrite,
            )
            print(format_report(report))
    except (KerasBranchError, ValueError) as err:
        # A bad flag value (a budget no tree fits, an unknown backbone argument, ...).
        print(f"celeba_mock.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
