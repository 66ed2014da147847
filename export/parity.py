"""Parity check: every exported format against Keras, per task, on the same inputs.

For each format and task the check runs every signature that returns the
task (the default one and the task's own), compares with the Keras model in
inference mode, and applies that format's rule:

| format           | statistic checked              | tolerance       | argmax |
|------------------|--------------------------------|-----------------|--------|
| `saved_model`    | max abs difference             | 1e-5            | 1.0    |
| `tflite`         | max abs difference             | 1e-5            | 1.0    |
| `tflite-fp16`    | max abs diff / max(1, max abs y)| 1e-3           | 1.0    |
| `tflite-dynamic` | max abs difference             | 1e-2            | 1.0    |
| `tflite-int8`    | p95 over samples of max diff   | 3 int8 steps    | >= 0.9 |

Why float16 divides by max(1, max |y|), y the task's Keras outputs on the
checked samples: float16 weights are rounded relative to their size (11-bit
mantissa, up to 4.9e-4), so the output error scales with the size of the
activations, i.e. with the task's output range. For probabilities the range
is at most 1 and the rule is the absolute 1e-3; for a regression head whose
outputs reach 3, it is 3e-3. Measured: planted-groups regression trees with
outputs up to about 3 differed by 1.02e-3 and 1.07e-3 in absolute terms.

Why int8 checks a percentile: full int8 clamps every tensor to the range
seen in calibration, so the few held-out samples beyond it differ by much
more than rounding. Measured on a trained planted-groups MLP with 300
calibration samples: up to ~32 output steps on the samples whose Keras
output lies beyond the calibrated output range, while the 95th percentile
stays near 3 steps (one task 3.04); with the default 1000 calibration
samples the 95th percentile was at most 2.3 steps on every task. The max is still printed; the percentile catches what a
parity check is for (wrong scales or zero points, a lost signature, a wrong
op) without failing on saturation. The step is `tflite.int8_steps`: the
output scale of a linear head; for softmax and sigmoid heads, whose 1/256
output grid is finer than what their int8 logits resolve, the logit step
times the activation's largest slope (1/2 and 1/4).

Argmax agreement (classifiers): the fraction of samples whose predicted
class (binary: probability > 0.5) matches Keras, counted over *decided*
samples only, whose Keras top-1/top-2 margin (binary: distance from 0.5)
exceeds twice the tolerance. Closer calls may flip within the tolerance, so
they say nothing about the export. For the max-based formats agreement 1.0
follows from passing the tolerance; it is reported as a readable check.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_branch.errors import ExportError
from keras_branch.export import litert_runner
from keras_branch.export.saved_model import DEFAULT_SIGNATURE, run_saved_model
from keras_branch.tasks import BINARY, MULTICLASS


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How one format is judged.

    Args:
        atol: absolute tolerance (float formats), or None.
        steps: tolerance in int8 output steps (int8), or None.
        statistic: `"max"` (max abs difference) or `"p95"` (95th percentile
            over samples of each sample's max abs difference).
        argmax: required argmax agreement on decided samples.
        relative: divide the differences by max(1, max |Keras output|) of
            the task first (float16, whose rounding error grows with the
            size of the activations).
    """

    atol: float | None = None
    steps: float | None = None
    statistic: str = "max"
    argmax: float = 1.0
    relative: bool = False

    def absolute(self, scale: float | None) -> float:
        """The absolute tolerance, given the output scale (int8)."""
        if self.steps is None:
            return float(self.atol)
        if scale is None:
            raise ExportError("An int8 tolerance needs the output scale; none was given.")
        return float(self.steps * scale)


TOLERANCES: dict[str, Tolerance] = {
    "saved_model": Tolerance(atol=1e-5),
    "tflite": Tolerance(atol=1e-5),
    "tflite-fp16": Tolerance(atol=1e-3, relative=True),
    "tflite-dynamic": Tolerance(atol=1e-2),
    "tflite-int8": Tolerance(steps=3.0, statistic="p95", argmax=0.9),
}


@dataclasses.dataclass
class ParityRow:
    """One format and task: what was measured and whether it passed."""

    format: str
    task: str
    key: str
    max_abs_diff: float
    statistic: str
    value: float
    tolerance: float
    scale: float | None
    argmax_agreement: float | None
    argmax_required: float | None
    decided: int | None
    signatures: list[str]
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; an infinite or NaN measurement becomes None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class ParityResult:
    """All rows of a parity check; `passed` when every row passed."""

    rows: list[ParityRow]
    num_samples: int

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.passed for row in self.rows)

    def failures(self) -> list[ParityRow]:
        return [row for row in self.rows if not row.passed]

    def formats_passed(self) -> dict[str, bool]:
        """Per format: did every task pass."""
        result: dict[str, bool] = {}
        for row in self.rows:
            result[row.format] = result.get(row.format, True) and row.passed
        return result

    def row(self, fmt: str, task: str) -> ParityRow:
        """The row of one format and task (name or key)."""
        for r in self.rows:
            if r.format == fmt and task in (r.task, r.key):
                return r
        raise KeyError(f"no parity row for format {fmt!r} and task {task!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "num_samples": self.num_samples,
            "rows": [r.to_dict() for r in self.rows],
        }

    def format_table(self) -> str:
        """A readable table: one line per format and task."""
        return format_parity_table(self)


def keras_outputs(model: Any, x: np.ndarray, batch_size: int = 128) -> Any:
    """A model's outputs in inference mode, as numpy (a dict stays a dict).

    Direct calls in batches: `model.predict` would trace a new function for
    every model it sees, which an export of several models pays for.

    Example:
    >>> model = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression"), Task("b", "binary")])
    >>> x_test = np.zeros((100, 10), "float32")
    >>> keras_outputs(model, x_test[:64])["a"].shape
    (64, 1)
    """
    parts = [model(x[i : i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], Mapping):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])


def _flat(a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def _argmax_agreement(ref: np.ndarray, got: np.ndarray, kind: str, atol: float):
    """(agreement over decided samples or None, number decided) for classifiers."""
    if kind == MULTICLASS:
        top2 = np.sort(ref, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > 2 * atol
        same = ref.argmax(axis=1) == got.argmax(axis=1)
    elif kind == BINARY:
        decided = np.abs(ref[:, 0] - 0.5) > 2 * atol
        same = (ref[:, 0] > 0.5) == (got[:, 0] > 0.5)
    else:
        return None, None
    count = int(decided.sum())
    return (float(same[decided].mean()) if count else None), count


def compare(
    ref: np.ndarray, got: np.ndarray, kind: str, tolerance: Tolerance, scale: float | None = None
) -> dict[str, Any]:
    """Measures one output against Keras under one format's rule.

    Args:
        ref: Keras outputs `[n, ...]`.
        got: the format's outputs, same shape.
        kind: the task kind (argmax agreement for classifiers).
        tolerance: the format's rule.
        scale: the int8 output scale (int8 rules only).

    Returns:
        `max_abs_diff`, `value` (the checked statistic), `tolerance`
        (absolute), `argmax_agreement`, `decided`, `passed`, `note`.

    Example:
    >>> keras_probs = np.array([[0.7, 0.3], [0.2, 0.8]], "float32")
    >>> lite_probs = keras_probs + np.float32(2e-4)     # float16 rounding
    >>> compare(keras_probs, lite_probs, "multiclass", TOLERANCES["tflite-fp16"])["passed"]
    True
    """
    ref, got = _flat(ref), _flat(got)
    if ref.shape != got.shape:
        return {"max_abs_diff": math.inf, "value": math.inf, "tolerance": tolerance.absolute(scale),
                "argmax_agreement": None, "decided": None, "passed": False,
                "note": f"shape {got.shape} != Keras {ref.shape}"}
    atol = tolerance.absolute(scale)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    if tolerance.relative:
        # Relative to the task's output range: fp16 weight rounding errs in
        # proportion to the activations' size, not to each output value.
        diff = diff / max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    per_sample = diff.max(axis=1)
    if tolerance.statistic == "max":
        value = float(per_sample.max()) if per_sample.size else 0.0
    elif tolerance.statistic == "p95":
        # "higher": an actual sample's value, never an interpolation below it.
        value = float(np.quantile(per_sample, 0.95, method="higher"))
    else:
        raise ExportError(f"Unknown parity statistic {tolerance.statistic!r}.")
    agreement, decided = _argmax_agreement(ref, got, kind, atol)
    passed = bool(np.isfinite(value) and value <= atol)
    if agreement is not None:
        passed = passed and agreement >= tolerance.argmax
    return {"max_abs_diff": max_abs, "value": value, "tolerance": atol,
            "argmax_agreement": agreement, "decided": decided, "passed": passed, "note": ""}


def _format_outputs(fmt: str, path: str, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """`{signature: {output: array}}` of one artifact."""
    if fmt == "saved_model":
        return run_saved_model(path, x)
    interpreter = litert_runner.load(path)
    return {key: litert_runner.run_signature(interpreter, key, x)
            for key in litert_runner.signature_names(interpreter)}


def check_parity(
    model: Any,
    files: Mapping[str, str | os.PathLike],
    x: np.ndarray,
    int8_steps: Mapping[str, float] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> ParityResult:
    """Runs Keras and every exported artifact on `x` and compares per task.

    Args:
        model: the exported Keras model (a `BranchedModel`, or a subset).
        files: format -> path (`saved_model` folder, `.tflite` files), as in
            `ExportResult.files`.
        x: float inputs with a batch axis (e.g. 64 test samples).
        int8_steps: task key -> int8 quantization step of the output
            (`tflite.int8_steps` on the calibration inputs); required when
            `files` has `tflite-int8`.
        tolerances: per-format rules; defaults to `TOLERANCES`.

    Returns:
        A `ParityResult`; `.passed` is True when every format and task is
        within its tolerance, `.format_table()` prints it.

    Example (not run as a doctest: needs a file `export_model` wrote):
    >>> result = check_parity(model, {"tflite": "out/model.tflite"}, x_test[:64])  # doctest: +SKIP
    >>> print(result.format_table())  # doctest: +SKIP
    """
    rules = dict(TOLERANCES if tolerances is None else tolerances)
    x = np.asarray(x, dtype="float32")
    raw = keras_outputs(model, x)
    reference = {t.key: raw[t.key] for t in model.tasks}
    rows = []
    for fmt, path in files.items():
        if fmt not in rules:
            raise ExportError(
                f"No parity rule for format {fmt!r}; formats are {sorted(rules)}."
            )
        rule = rules[fmt]
        outputs = _format_outputs(fmt, os.fspath(path), x)
        for task in model.tasks:
            # Both signatures that return this task, stacked as more samples.
            signatures = [k for k in (DEFAULT_SIGNATURE, task.key)
                          if k in outputs and task.key in outputs[k]]
            missing = [k for k in (DEFAULT_SIGNATURE, task.key) if k not in signatures]
            scale = None
            if rule.steps is not None:
                if not int8_steps or task.key not in int8_steps:
                    raise ExportError(
                        f"Format {fmt!r} is judged in int8 steps: pass `int8_steps` "
                        f"(`tflite.int8_steps` on the calibration inputs) with task "
                        f"{task.key!r}."
                    )
                scale = float(int8_steps[task.key])
            if not signatures:
                rows.append(_missing_row(fmt, task, rule, scale, missing))
                continue
            ref = np.concatenate([reference[task.key]] * len(signatures))
            got = np.concatenate([outputs[k][task.key] for k in signatures])
            measured = compare(ref, got, task.kind, rule, scale)
            note = measured.pop("note")
            if missing:
                measured["passed"] = False
                note = f"missing signature(s) {missing}"
            rows.append(ParityRow(
                format=fmt, task=task.name, key=task.key, statistic="rel" if rule.relative else rule.statistic,
                scale=scale, argmax_required=rule.argmax if measured["argmax_agreement"]
                is not None else None, signatures=signatures, note=note, **measured,
            ))
    return ParityResult(rows, num_samples=len(x))


def _missing_row(fmt, task, rule, scale, missing) -> ParityRow:
    return ParityRow(
        format=fmt, task=task.name, key=task.key, max_abs_diff=math.inf,
        statistic=rule.statistic, value=math.inf,
        tolerance=rule.absolute(scale) if (rule.steps is None or scale) else math.nan,
        scale=scale, argmax_agreement=None, argmax_required=None, decided=None,
        signatures=[], passed=False, note=f"missing signature(s) {missing}",
    )


def format_parity_table(result: ParityResult) -> str:
    """One line per format and task: max |diff|, checked statistic, tolerance, argmax.

    For int8 rows, `steps` is the checked statistic in int8 output steps.
    """
    header = (f"{'format':<15} {'task':<20} {'max|diff|':>9} {'checked':>13} "
              f"{'tolerance':>9} {'steps':>5} {'argmax (decided)':>17}  result")
    lines = [f"parity against Keras on {result.num_samples} samples", header,
             "-" * len(header)]
    for r in result.rows:
        steps = f"{r.value / r.scale:.1f}" if r.scale and math.isfinite(r.value) else "-"
        if r.argmax_agreement is not None:
            agree = f">={r.argmax_required:g}: {r.argmax_agreement:.3f} ({r.decided})"
        elif r.decided == 0:
            agree = "none decided"
        else:
            agree = "-"
        status = "ok" if r.passed else "FAIL"
        if r.note:
            status += f"  {r.note}"
        task = r.task if len(r.task) <= 20 else r.task[:17] + "..."
        lines.append(f"{r.format:<15} {task:<20} {r.max_abs_diff:>9.2e} "
                     f"{r.statistic + ' ' + format(r.value, '.2e'):>13} {r.tolerance:>9.2e} "
                     f"{steps:>5} {agree:>17}  {status}")
    verdict = "all formats within tolerance" if result.passed else (
        "OUT OF TOLERANCE: " + ", ".join(f for f, ok in result.formats_passed().items() if not ok))
    lines.append(verdict)
    return "\n".join(lines)


__all__ = [
    "ParityResult",
    "ParityRow",
    "TOLERANCES",
    "Tolerance",
    "check_parity",
    "compare",
    "format_parity_table",
]
