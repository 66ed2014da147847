"""`export_model`: one call from a trained model to a checked export folder.

The folder, written atomically (a temporary sibling, renamed at the end):

    OUT/
      saved_model/            per-task signatures + serving_default
      model.tflite            float32
      model_fp16.tflite       float16 weights
      model_dynamic.tflite    dynamic-range int8 (only when asked)
      model_int8.tflite       full int8, calibrated on training data
      export.json             tasks, signatures, files, sizes, int8 scales, parity
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.build import BranchedModel
from keras_branch.distribute import as_float32
from keras_branch.errors import ExportError
from keras_branch.export import saved_model as _saved_model
from keras_branch.export import tflite as _tflite
from keras_branch.export.parity import ParityResult, check_parity
from keras_branch.export.subset import subset_model
from keras_branch.files import atomic_path, strict_json
from keras_branch.saving import load_task_model
from keras_branch.task_model import TaskModel

#: Every format `export_model` writes.
FORMATS = ("saved_model", *_tflite.TFLITE_FORMATS)
#: What `export_model` writes unless told otherwise (the dynamic range one is opt-in).
DEFAULT_FORMATS = ("saved_model", "tflite", "tflite-fp16", "tflite-int8")
SAVED_MODEL_DIR = "saved_model"
MANIFEST = "export.json"


@dataclasses.dataclass
class ExportResult:
    """What `export_model` wrote and measured.

    Attributes:
        out_dir: the export folder.
        files: format -> path inside `out_dir`.
        sizes: format -> bytes on disk (a SavedModel: its whole folder).
        signatures: signature keys (`serving_default`, then task keys).
        tasks: task names exported.
        model: the Keras model that was exported (a subset model for `tasks`).
        int8_scales: task key -> scale of the int8 output tensor (None without int8).
        int8_steps: task key -> int8 step the parity check measures in
            (`tflite.int8_steps`; None without int8).
        parity: the parity check (None unless `check`).
    """

    out_dir: str
    files: dict[str, str]
    sizes: dict[str, int]
    signatures: list[str]
    tasks: list[str]
    model: keras.Model
    int8_scales: dict[str, float] | None = None
    int8_steps: dict[str, float] | None = None
    parity: ParityResult | None = None

    @property
    def passed(self) -> bool:
        """False only when a parity check ran and some format failed it."""
        return self.parity is None or self.parity.passed

    def summary(self) -> str:
        """One line per written format: path and size."""
        lines = [f"exported {len(self.tasks)} task(s) to {self.out_dir}/ "
                 f"(signatures: {', '.join(self.signatures)})"]
        for fmt, path in self.files.items():
            rel = os.path.relpath(path, self.out_dir)
            lines.append(f"  {fmt:<15} {rel:<22} {self.sizes[fmt] / 1024:>10.1f} KiB")
        return "\n".join(lines)


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """Validated format list from a sequence or a comma-separated string.

    Raises:
        ExportError: naming an unknown format and listing the known ones.

    Example:
    >>> parse_formats("tflite-int8,saved_model")
    ['saved_model', 'tflite-int8']
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    result = list(dict.fromkeys(formats))
    if not result:
        raise ExportError(f"`formats` must name at least one of {list(FORMATS)}. Received: []")
    unknown = [f for f in result if f not in FORMATS]
    if unknown:
        raise ExportError(f"Unknown format(s) {unknown} in `formats`; formats are {list(FORMATS)}.")
    # Write in a fixed order whatever order they were asked in.
    return [f for f in FORMATS if f in result]


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _load(model_or_path: Any) -> keras.Model:
    """The model to export: a keras_branch task model (tree or soft ordering), float32."""
    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_task_model(model_or_path)
    elif isinstance(model_or_path, TaskModel):
        model = model_or_path
    else:
        raise ExportError(
            f"`model` must be a keras_branch task model (a BranchedModel or SoftOrderingModel), "
            f"or the path of its .keras file. Received: {type(model_or_path).__name__}"
        )
    if any(layer.dtype_policy.compute_dtype != "float32" for layer in model.layers):
        # Mixed precision trains faster on accelerators; float16 compute in a
        # converted model needs ops LiteRT's builtins lack, so export float32.
        model = as_float32(model)
    return model


def check_inputs(data: Any, input_shape: Sequence[int], num_samples: int = 64,
                 seed: int = 0) -> np.ndarray:
    """Inputs for the parity check: held-out samples, or seeded noise without data.

    Args:
        data: a `MultiTaskData` or None.
        input_shape: the model's input shape (without the batch axis).
        num_samples: how many.
        seed: which ones.

    Returns:
        float32 `[n, *input_shape]` from the test split (else validation,
        else train); standard normal noise when `data` is None.

    Example:
    >>> check_inputs(planted_groups(), (100,)).shape
    (64, 100)
    """
    rng = np.random.default_rng(seed)
    if data is None:
        return rng.standard_normal((num_samples, *input_shape)).astype("float32")
    split = next(s for s in ("test", "validation", "train", *data.splits) if s in data.splits)
    x = np.asarray(data.split(split).x)
    order = np.sort(rng.permutation(len(x))[:num_samples])
    return x[order].astype("float32")


def export_model(
    model_or_path: Any,
    out_dir: str | os.PathLike,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    tasks: str | Sequence[str] | None = None,
    data: Any = None,
    check: bool = False,
    overwrite: bool = False,
    int8_io: bool = False,
    num_calibration: int = 1000,
    num_check: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Exports a multi-task model to SavedModel and TFLite, atomically.

    Args:
        model_or_path: a `BranchedModel` or `SoftOrderingModel`, or the path
            of its `.keras` file.
        out_dir: the export folder to create.
        formats: any of `FORMATS` (a list or `"saved_model,tflite"`).
        tasks: export only these tasks (names or keys); blocks serving no
            chosen task are left out of every artifact.
        data: a `MultiTaskData` with the model's input shape. Its training
            split calibrates `tflite-int8` (required for it); its test split
            feeds the parity check.
        check: run the parity check and store it in `export.json`.
        overwrite: replace `out_dir` if it exists (else `OutputExistsError`).
        int8_io: `tflite-int8` with int8 inputs and outputs (float32 otherwise).
        num_calibration: training samples used to calibrate int8.
        num_check: samples of the parity check.
        seed: which calibration and check samples.
        log: where progress lines go (None: silent).

    Returns:
        An `ExportResult`; with `check`, `result.passed` says whether every
        format was within tolerance (the folder is written either way, with
        the measurements in `export.json`).

    Raises:
        ExportError: unknown format or task, int8 without data, a model that
            needs Flex ops; `OutputExistsError` for an existing `out_dir`.
        On any error nothing is left at `out_dir`.

    Example (not run as a doctest: it needs a saved model and converts four
    formats; the `keras_branch.export` module example runs a small export):
    >>> result = export_model("run/model.keras", "run/export", data=load_data("planted"),
    ...                       check=True)  # doctest: +SKIP
    >>> print(result.parity.format_table())  # doctest: +SKIP
    """
    say = log or (lambda _: None)
    fmts = parse_formats(formats)
    model = _load(model_or_path)
    if tasks is not None:
        model = subset_model(model, tasks)
    input_shape = tuple(model.inputs[0].shape[1:])
    if data is not None and tuple(data.input_shape) != input_shape:
        raise ExportError(
            f"`data` has input shape {tuple(data.input_shape)} but the model takes "
            f"{input_shape}."
        )
    calibration = scales = steps = None
    if "tflite-int8" in fmts:
        if data is None:
            raise ExportError(
                "Format 'tflite-int8' is calibrated on training data: pass `data` (the "
                "CLI's --data, e.g. 'planted' or 'omniglot:PATH'). Received: data=None"
            )
        calibration = _tflite.calibration_inputs(data, num_calibration, seed)
        scales = _tflite.int8_output_scales(model, calibration)
        steps = _tflite.int8_steps(model, calibration)
    keys = _saved_model.signature_keys(model)
    out_dir = os.fspath(out_dir)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        os.makedirs(tmp)
        # The SavedModel is the converter's input even when it is not asked for.
        sm_dir = os.path.join(tmp, SAVED_MODEL_DIR)
        _saved_model.write_saved_model(model, sm_dir)
        written = {"saved_model": sm_dir} if "saved_model" in fmts else {}
        say(f"saved_model: {len(keys)} signatures ({', '.join(keys)})")
        for fmt in fmts:
            if fmt == "saved_model":
                continue
            content = _tflite.convert_tflite(sm_dir, fmt, keys, calibration=calibration,
                                             int8_io=int8_io)
            path = os.path.join(tmp, _tflite.TFLITE_FILES[fmt])
            with open(path, "wb") as f:
                f.write(content)
            written[fmt] = path
            say(f"{fmt}: {len(content) / 1024:.1f} KiB")
        if "saved_model" not in fmts:
            shutil.rmtree(sm_dir)
        parity = None
        if check:
            x = check_inputs(data, input_shape, num_check, seed)
            parity = check_parity(model, written, x, int8_steps=steps)
        sizes = {fmt: folder_size(p) for fmt, p in written.items()}
        rel = {fmt: os.path.relpath(p, tmp) for fmt, p in written.items()}
        manifest = {
            "model": model.name,
            "input": {"name": _saved_model.INPUT_NAME, "shape": [None, *input_shape],
                      "dtype": "float32"},
            "tasks": [{**t.get_config(), "key": t.key} for t in model.tasks],
            "model_class": type(model).__name__,
            # a tree's TreeSpec; a soft-ordering model has none (every task mixes the pool)
            "spec": model.spec.to_dict() if getattr(model, "spec", None) is not None else None,
            "signatures": keys,
            "formats": {fmt: {"path": rel[fmt], "bytes": sizes[fmt]} for fmt in written},
            "int8": None if scales is None else {
                "calibration_samples": int(len(calibration)), "int8_io": bool(int8_io),
                "output_scales": scales, "parity_steps": steps,
            },
            "parity": None if parity is None else parity.to_dict(),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            f.write(strict_json(manifest, os.path.join(out_dir, MANIFEST)) + "\n")
    files = {fmt: os.path.join(out_dir, rel[fmt]) for fmt in written}
    return ExportResult(
        out_dir=out_dir, files=files, sizes=sizes, signatures=keys,
        tasks=[t.name for t in model.tasks], model=model, int8_scales=scales,
        int8_steps=steps, parity=parity,
    )


def export_demo_model(
    model: BranchedModel, data: Any, out_dir: str | os.PathLike,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """The demo's last step: SavedModel and the three TFLite files, checked.

    Exports `DEFAULT_FORMATS` to `out_dir` (replaced if present), runs the
    parity check on 64 test samples and logs the files and the parity table.

    Args:
        model: the trained model.
        data: its `MultiTaskData` (int8 calibration and parity inputs).
        out_dir: the export folder.
        log: where lines go.

    Returns:
        The `ExportResult`; `result.passed` tells whether parity held.

    Example (not run as a doctest: `keras_branch.demo` calls it on its trained tree):
    >>> export_demo_model(result.model, data, os.path.join(out_dir, "export"), log=log)  # doctest: +SKIP
    """
    result = export_model(model, out_dir, DEFAULT_FORMATS, data=data, check=True,
                          overwrite=True)
    log(result.summary())
    log(result.parity.format_table())
    return result
