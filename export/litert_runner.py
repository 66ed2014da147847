"""Run an exported `.tflite` file with LiteRT alone: no TensorFlow, no Keras.

This module imports only numpy and `ai_edge_litert`, so it shows what a
phone-side runtime sees: the signatures of the file and nothing else. The
parity check uses it in-process; it also runs as a script, by path, in a
process that never imports keras_branch or Keras:

    python export/litert_runner.py model.tflite inputs.npy outputs.npz

which writes one array per `<signature>/<output>` into `outputs.npz`, after
running every signature of the file on the inputs.

Inputs and outputs of a file with int8 inputs/outputs are (de)quantized here
with the scale and zero point the file declares, so callers always pass and
receive float32 values.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

#: Name of the single input of every exported signature.
INPUT_NAME = "inputs"


def load(path: str, num_threads: int | None = None) -> Interpreter:
    """A LiteRT interpreter for a `.tflite` file.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads (None: LiteRT's default).

    Returns:
        The `Interpreter`; use `run_signature` on it.

    Example (not run as a doctest: needs a file `export_model` wrote):
    >>> interpreter = load("out/model_int8.tflite")  # doctest: +SKIP
    >>> signature_names(interpreter)  # doctest: +SKIP
    ['a', 'b', 'serving_default']
    """
    return Interpreter(model_path=str(path), num_threads=num_threads)


def signature_names(interpreter: Interpreter) -> list[str]:
    """The signature keys of the file, sorted."""
    return sorted(interpreter.get_signature_list())


def quantize(x: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Converts float inputs to what a tensor expects (int8 with its scale, or float32)."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind != "i":
        return np.asarray(x, dtype=dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    # Round half away from zero, as TFLite's own Quantize kernel does.
    v = np.asarray(x, dtype=np.float64) / scale
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Converts an output tensor to float32 (dequantizing int8 outputs)."""
    if np.dtype(details["dtype"]).kind != "i":
        return np.asarray(y, dtype=np.float32)
    scale, zero_point = details["quantization"]
    return ((np.asarray(y, dtype=np.float32) - zero_point) * scale).astype(np.float32)


def run_signature(interpreter: Interpreter, key: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runs one signature on a batch of float inputs.

    Args:
        interpreter: from `load`.
        key: signature key (a task key, or `serving_default`).
        x: float inputs with a batch axis; the runner resizes to its length.

    Returns:
        `{output name: float32 array}` (int8 outputs dequantized).

    Example (not run as a doctest: needs a file `export_model` wrote):
    >>> run_signature(load("out/model.tflite"), "a", x)["a"].shape  # doctest: +SKIP
    (64, 1)
    """
    runner = interpreter.get_signature_runner(key)
    in_details = runner.get_input_details()[INPUT_NAME]
    out_details = runner.get_output_details()
    outputs = runner(**{INPUT_NAME: quantize(x, in_details)})
    # Read outputs by name: the order of output details is not stable.
    return {name: dequantize(value, out_details[name]) for name, value in outputs.items()}


def output_quantization(interpreter: Interpreter, key: str) -> dict[str, tuple[float, int] | None]:
    """Per output of a signature: `(scale, zero_point)` when it is int8, else None."""
    details = interpreter.get_signature_runner(key).get_output_details()
    result = {}
    for name, d in details.items():
        scale, zero_point = d["quantization"]
        result[name] = (float(scale), int(zero_point)) if np.dtype(d["dtype"]).kind == "i" else None
    return result


def run_all(path: str, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Every signature of a file on the same inputs: `{key: {output: array}}`."""
    interpreter = load(path)
    return {key: run_signature(interpreter, key, x) for key in signature_names(interpreter)}


#: Modules a phone-side runtime does not have; `main` reports any it imported.
HEAVY_MODULES = ("keras", "keras_branch", "tensorflow")


def main(argv: list[str] | None = None) -> int:
    """`python litert_runner.py MODEL.tflite INPUTS.npy OUTPUTS.npz`.

    Writes `<signature>/<output>` arrays, and `__imported__`: which of
    `HEAVY_MODULES` this process imported (none, by design).
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: litert_runner.py MODEL.tflite INPUTS.npy OUTPUTS.npz", file=sys.stderr)
        return 2
    model_path, inputs_path, outputs_path = argv
    x = np.load(inputs_path)
    results = run_all(model_path, x)
    flat = {f"{key}/{name}": value for key, outs in results.items() for name, value in outs.items()}
    imported = [m for m in HEAVY_MODULES if m in sys.modules]
    np.savez(outputs_path, __imported__=np.array(imported, dtype=str), **flat)
    for key, outs in results.items():
        shapes = ", ".join(f"{name} {tuple(v.shape)}" for name, v in outs.items())
        print(f"{key}: {shapes}")
    return 0


def run_isolated(
    path: str, x: np.ndarray, python: str | None = None, timeout: float = 120.0
) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Runs every signature of a `.tflite` file in a fresh Python process.

    The child executes this file by path, so it imports numpy and LiteRT
    only, never keras_branch, Keras or TensorFlow: what a device sees.

    Args:
        path: the `.tflite` file.
        x: float inputs with a batch axis.
        python: the interpreter to run (default: this one).
        timeout: seconds before the child is killed.

    Returns:
        (`{signature: {output: array}}`, the `HEAVY_MODULES` the child imported).

    Example (not run as a doctest: needs a file `export_model` wrote):
    >>> outputs, imported = run_isolated("out/model.tflite", x)  # doctest: +SKIP
    >>> imported  # doctest: +SKIP
    []
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "inputs.npy"), os.path.join(tmp, "outputs.npz")
        np.save(inputs, np.asarray(x, dtype=np.float32))
        # -I: isolated mode, no user site or PYTHON* variables, no cwd on sys.path.
        script = os.path.abspath(__file__)
        cmd = [python or sys.executable, "-I", script, str(path), inputs, outputs]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"LiteRT runner failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with np.load(outputs) as npz:
            imported = [str(m) for m in npz["__imported__"]]
            results: dict[str, dict[str, np.ndarray]] = {}
            for name in npz.files:
                if name == "__imported__":
                    continue
                key, _, output = name.partition("/")
                results.setdefault(key, {})[output] = npz[name]
    return results, imported


if __name__ == "__main__":
    sys.exit(main())
