"""`keras-branch export`: the command line over `export_model`.

    keras-branch export MODEL.keras --out DIR [--formats saved_model,tflite,tflite-fp16,tflite-int8]
        [--tasks a,b] [--check] [--overwrite] [--data SOURCE] [--int8-io]

Exit status: 0 on success, 1 when `--check` finds a format out of tolerance
(the folder is written, with the measurements in `export.json`), 2 for an
error in the user's input (raised as `KerasBranchError`, which the main CLI
prints as one line).
"""

from __future__ import annotations

import argparse

from keras_branch.cli_args import DATA_HELP, add_out_arguments, examples, positive_int, seed
from keras_branch.data import load_data
from keras_branch.errors import ExportError
from keras_branch.export.api import DEFAULT_FORMATS, export_model, parse_formats
from keras_branch.saving import load_task_model

FORMATS_HELP = (
    "comma-separated formats among saved_model, tflite, tflite-fp16, tflite-dynamic, "
    "tflite-int8 (default: saved_model,tflite,tflite-fp16,tflite-int8)"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `export` subcommand to the CLI's subparsers.

    Args:
        subparsers: what `parser.add_subparsers()` returned.

    Returns:
        The `export` parser (its `func` default is `run`).

    Example:
    >>> parser = argparse.ArgumentParser(prog="keras-branch")
    >>> sub = parser.add_subparsers(dest="command", required=True)
    >>> export_parser = add_parser(sub)
    >>> parser.parse_args(["export", "run/model.keras", "--out", "run/export"]).out
    'run/export'
    """
    p = subparsers.add_parser(
        "export", help="export a model to SavedModel and TFLite, optionally checked",
        epilog=examples("keras-branch export run/model.keras --out run/export --data planted "
                        "--check"),
    )
    p.add_argument("model", help="the .keras file of a keras_branch model")
    add_out_arguments(p, "export folder to create")
    p.add_argument("--formats", default=None,
                   help=FORMATS_HELP + " (without --data the default leaves tflite-int8 out)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task names (or keys): export only these tasks")
    p.add_argument("--data", default=None,
                   help=f"{DATA_HELP}: calibrates tflite-int8 (required for it) and feeds "
                        f"--check")
    p.add_argument("--check", action="store_true",
                   help="compare every format with Keras; exit 1 if one is out of tolerance")
    p.add_argument("--int8-io", action="store_true",
                   help="tflite-int8 with int8 inputs and outputs (default float32)")
    p.add_argument("--calibration-samples", type=positive_int, default=1000,
                   help="training samples calibrating tflite-int8")
    p.add_argument("--check-samples", type=positive_int, default=64,
                   help="test samples of the parity check")
    p.add_argument("--seed", type=seed, default=0, help="which calibration and check samples")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs `keras-branch export` from parsed arguments.

    Returns:
        0, or 1 when `--check` found a format out of tolerance. Input errors
        raise `KerasBranchError` (the main CLI turns them into status 2).
    """
    formats = parse_formats(args.formats or ",".join(DEFAULT_FORMATS))
    if args.formats is None and not args.data:
        # The defaults export what they can; int8 needs calibration data.
        formats = [f for f in formats if f != "tflite-int8"]
        print("skipping tflite-int8: it is calibrated on training data; pass --data to export it")
    if "tflite-int8" in formats and not args.data:
        raise ExportError(
            "--formats includes tflite-int8, which is calibrated on training data: "
            "pass --data (e.g. 'planted' or 'omniglot:PATH'), or leave tflite-int8 out."
        )
    model = load_task_model(args.model)
    data = None
    if args.data:
        shape = tuple(model.inputs[0].shape[1:])
        data = load_data(args.data, image_size=shape[0] if len(shape) == 3 else 32)
    result = export_model(
        model, args.out, formats=formats, tasks=args.tasks, data=data, check=args.check,
        overwrite=args.overwrite, int8_io=args.int8_io,
        num_calibration=args.calibration_samples, num_check=args.check_samples,
        seed=args.seed, log=print,
    )
    print(result.summary())
    if result.parity is not None:
        if data is None:
            print("(no --data: the check ran on seeded random inputs)")
        print(result.parity.format_table())
        if not result.parity.passed:
            return 1
    return 0
