"""TFLite conversion of an exported SavedModel, builtin ops only.

Four variants, each keeping every signature of the SavedModel:

| format           | file                   | weights  | activations | inputs/outputs |
|------------------|------------------------|----------|-------------|----------------|
| `tflite`         | `model.tflite`         | float32  | float32     | float32        |
| `tflite-fp16`    | `model_fp16.tflite`    | float16  | float32     | float32        |
| `tflite-dynamic` | `model_dynamic.tflite` | int8     | dynamic     | float32        |
| `tflite-int8`    | `model_int8.tflite`    | int8     | int8        | float32 or int8|

Only TFLite's builtin op set is allowed (`TFLITE_BUILTINS`, or
`TFLITE_BUILTINS_INT8` for full int8): a model that would need Flex (TF
Select) ops fails here, at export, with the ops named, instead of failing
on the phone whose LiteRT runtime has no TensorFlow kernels.

Full int8 is calibrated with a representative dataset drawn from the
training split (`calibration_inputs`), fed to every signature, because each
signature is its own subgraph in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_branch.checks import check_int
from keras_branch.errors import ExportError
from keras_branch.export.parity import keras_outputs
from keras_branch.export.saved_model import INPUT_NAME
from keras_branch.files import atomic_path
from keras_branch.tasks import BINARY, MULTICLASS

#: File name of each TFLite format inside an export folder.
TFLITE_FILES = {
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-dynamic": "model_dynamic.tflite",
    "tflite-int8": "model_int8.tflite",
}
TFLITE_FORMATS = tuple(TFLITE_FILES)

#: Scale of an int8 softmax or sigmoid output in TFLite: [0, 1] in 256 steps.
PROBABILITY_SCALE = 1.0 / 256.0


def calibration_inputs(data: Any, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Inputs for int8 calibration: a seeded random subset of the training split.

    Args:
        data: a `keras_branch.data.MultiTaskData` (its `train` split is used).
        num_samples: how many samples (all of them if the split is smaller).
        seed: which subset.

    Returns:
        float32 array `[n, *input_shape]`.

    Example:
    >>> calibration_inputs(planted_groups(), num_samples=300).shape
    (300, 100)
    """
    check_int(num_samples, "num_calibration", minimum=1, error=ExportError)
    x = np.asarray(data.split("train").x)
    order = np.random.default_rng(seed).permutation(len(x))[:num_samples]
    return x[np.sort(order)].astype("float32")


def representative_dataset(
    x: np.ndarray, signature_keys: Sequence[str], batch_size: int = 50
) -> Callable[[], Iterator[tuple[str, dict[str, np.ndarray]]]]:
    """The converter's `representative_dataset` for a multi-signature model.

    With more than one signature the converter wants `(signature_key,
    {input_name: batch})` pairs; every signature sees every sample. Batches
    have one size (the calibrator sizes each subgraph from its first batch),
    so a remainder smaller than `batch_size` is dropped unless it is all.

    Args:
        x: calibration inputs, from `calibration_inputs`.
        signature_keys: the signatures to calibrate (all of the file's).
        batch_size: samples per calibration step.

    Returns:
        A function returning a fresh generator, as the converter expects.

    Example (`converter.representative_dataset = representative_dataset(x, keys)`):
    >>> generate = representative_dataset(np.zeros((10, 4), "float32"), ["serving_default"],
    ...                                   batch_size=4)
    >>> [(key, batch[INPUT_NAME].shape) for key, batch in generate()]   # 2 left over: dropped
    [('serving_default', (4, 4)), ('serving_default', (4, 4))]
    """
    size = min(int(batch_size), len(x))
    if size < 1:
        raise ExportError("int8 calibration needs at least one input sample.")
    steps = max(1, len(x) // size)

    def generate() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for key in signature_keys:
            for step in range(steps):
                yield key, {INPUT_NAME: x[step * size : (step + 1) * size]}

    return generate


def _ranges(model: Any, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per task: Keras outputs and head pre-activations (logits) on `x`."""
    outputs = keras_outputs(model, x)
    result = {}
    for task in model.tasks:
        logits = None
        try:
            head = model.get_layer(f"head_{task.key}")
        except ValueError:
            head = None
        if head is not None and len(head.get_weights()) == 2:
            features = keras.Model(model.inputs[0], head.input)
            kernel, bias = head.get_weights()
            logits = np.asarray(keras_outputs(features, x), dtype="float64") @ kernel + bias
        result[task.key] = (np.asarray(outputs[task.key], dtype="float64"), logits)
    return result


def _minmax_scale(values: np.ndarray) -> float:
    # TFLite's min/max calibration: the range widened to include 0, in 255 steps.
    low, high = min(0.0, float(values.min())), max(0.0, float(values.max()))
    return (high - low) / 255.0 if high > low else PROBABILITY_SCALE


def int8_output_scales(model: Any, x: np.ndarray) -> dict[str, float]:
    """The scale of each task's int8 output tensor, as the converter sets it.

    TFLite fixes softmax and sigmoid outputs to 1/256 (probabilities in 256
    steps). Any other output gets min/max calibration: the range of the
    Keras outputs on the calibration inputs, widened to include 0, in 255
    steps. (A test checks these against the scales a file with int8 outputs
    declares.)

    Args:
        model: the exported Keras model (outputs keyed by task key).
        x: the calibration inputs the file was converted with.

    Returns:
        `{task key: scale}`.

    Example:
    >>> model = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression"), Task("b", "binary")])
    >>> x = np.random.default_rng(0).standard_normal((64, 10)).astype("float32")
    >>> scales = int8_output_scales(model, x)
    >>> scales["a"] > 0, scales["b"]    # regression: from the range; binary: 1/256
    (True, 0.00390625)
    """
    ranges = _ranges(model, x)
    return {
        t.key: PROBABILITY_SCALE if t.kind in (MULTICLASS, BINARY)
        else _minmax_scale(ranges[t.key][0])
        for t in model.tasks
    }


def int8_steps(model: Any, x: np.ndarray) -> dict[str, float]:
    """The int8 quantization step of each task's output: the parity check's unit.

    For a linear (regression) head it is the output scale. A softmax or
    sigmoid output has a fixed 1/256 grid, but it is computed from int8
    logits whose step is coarser: one logit step moves a softmax output by
    at most half of it and a sigmoid output by at most a quarter (their
    largest slopes). The step that bounds what the output can resolve is
    then `max(1/256, logit_step * slope)`; measuring in 1/256 units would
    count logit rounding as error (a trained 4-block Omniglot convnet: 3.5
    such units at the 95th percentile, 0.5 of these steps).

    Args:
        model: the exported Keras model.
        x: the calibration inputs.

    Returns:
        `{task key: step}`.

    Example:
    >>> model = build_model(TreeSpec.shared(["softmax_task"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("softmax_task", "multiclass", classes=3)])
    >>> x = np.random.default_rng(0).standard_normal((64, 10)).astype("float32")
    >>> int8_steps(model, x)["softmax_task"] >= 1 / 256
    True
    """
    ranges = _ranges(model, x)
    steps = {}
    for task in model.tasks:
        outputs, logits = ranges[task.key]
        if task.kind == MULTICLASS and logits is not None:
            steps[task.key] = max(PROBABILITY_SCALE, _minmax_scale(logits) / 2.0)
        elif task.kind == BINARY and logits is not None:
            steps[task.key] = max(PROBABILITY_SCALE, _minmax_scale(logits) / 4.0)
        elif task.kind in (MULTICLASS, BINARY):
            steps[task.key] = PROBABILITY_SCALE
        else:
            steps[task.key] = _minmax_scale(outputs)
    return steps


def make_converter(
    saved_model_dir: str | os.PathLike,
    fmt: str,
    signature_keys: Sequence[str],
    calibration: np.ndarray | None = None,
    int8_io: bool = False,
) -> tf.lite.TFLiteConverter:
    """A configured TFLite converter for one format (see the module table).

    Args:
        saved_model_dir: the SavedModel written by `export_saved_model`.
        fmt: one of `TFLITE_FORMATS`.
        signature_keys: the signatures to keep (all of them, normally).
        calibration: calibration inputs; required for `tflite-int8`.
        int8_io: for `tflite-int8`, int8 inputs and outputs instead of float32.

    Returns:
        The converter; call `convert_tflite` to run it with clear errors.

    Example (not run as a doctest: needs the folder `export_saved_model` wrote):
    >>> make_converter("out/saved_model", "tflite-int8", keys, calibration=x_cal).convert()  # doctest: +SKIP
    """
    if fmt not in TFLITE_FILES:
        raise ExportError(f"Unknown TFLite format {fmt!r}; formats are {list(TFLITE_FORMATS)}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=list(signature_keys)
    )
    # Builtins only: Flex ops would need TensorFlow kernels on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "tflite-int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError(
                "Format 'tflite-int8' needs calibration inputs drawn from the training "
                "data; pass `data` (the CLI's --data). Received: data=None"
            )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration, signature_keys)
        # Every op int8: conversion fails rather than fall back to float kernels.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


def convert_tflite(
    saved_model_dir: str | os.PathLike, fmt: str, signature_keys: Sequence[str], **options: Any
) -> bytes:
    """Converts a SavedModel to one TFLite format; returns the file's bytes.

    Args:
        saved_model_dir, fmt, signature_keys: as `make_converter`.
        **options: `make_converter`'s `calibration` and `int8_io`.

    Returns:
        The flatbuffer.

    Raises:
        ExportError: naming the ops when the model needs Flex (TF Select)
            ops, or with the converter's message for any other failure.

    Example (not run as a doctest: needs the folder `export_saved_model` wrote):
    >>> data = convert_tflite("out/saved_model", "tflite-fp16", ["serving_default", "a"])  # doctest: +SKIP
    """
    converter = make_converter(saved_model_dir, fmt, signature_keys, **options)
    try:
        return converter.convert()
    except Exception as err:  # the converter raises ConverterError and others
        raise _conversion_error(fmt, err) from None


def _conversion_error(fmt: str, err: Exception) -> ExportError:
    text = str(err)
    flex = _listed_ops(text, "TF Select ops")
    custom = _listed_ops(text, "Custom ops")
    if flex or custom or "ERROR_NEEDS_FLEX_OPS" in text:
        named = ", ".join(flex + custom) or "see the converter log"
        return ExportError(
            f"Format {fmt!r}: the model needs TensorFlow ops that LiteRT's builtin op "
            f"set lacks (Flex / TF Select or custom ops: {named}). Exports are "
            f"builtins-only so they run on any LiteRT runtime; replace the layers "
            f"using these ops (a mixed-precision model: rebuild it in float32 first)."
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    detail = (errors or lines or [type(err).__name__])[-1]
    return ExportError(f"Format {fmt!r}: TFLite conversion failed: {detail}")


def _listed_ops(text: str, label: str) -> list[str]:
    """Op names the converter lists after `label:` (it may repeat the list)."""
    names: list[str] = []
    for line in re.findall(rf"{label}: ([^\n]+)", text):
        names.extend(op.strip() for op in line.split(",") if op.strip())
    return sorted(set(names))


def write_tflite(
    saved_model_dir: str | os.PathLike,
    path: str | os.PathLike,
    fmt: str,
    signature_keys: Sequence[str],
    calibration: np.ndarray | None = None,
    int8_io: bool = False,
    overwrite: bool = False,
) -> int:
    """Converts and writes one `.tflite` file atomically.

    Args:
        saved_model_dir, fmt, signature_keys, calibration, int8_io: as
            `make_converter`.
        path: the `.tflite` file to write.
        overwrite: replace `path` if it exists.

    Returns:
        The file size in bytes.

    Example (not run as a doctest: needs the folder `export_saved_model` wrote):
    >>> write_tflite("out/saved_model", "out/model_fp16.tflite", "tflite-fp16", keys)  # doctest: +SKIP
    """
    content = convert_tflite(saved_model_dir, fmt, signature_keys, calibration=calibration,
                             int8_io=int8_io)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
    return len(content)
