"""Parity check: every exported format against Keras, per task, on the same inputs.

For each format and task the check runs every signature that returns the
task (the default one and the task's own), compares with the Keras model in
inference mode, and applies that format's rule:

| format           | statistic checked              | tolerance       | argmax |
|------------------|--------------------------------|-----------------|--------|
| `saved_model`    | max abs difference             | 1e-5            | 1.0    |
| `tflite`         | max abs difference             | 1e-5            | 1.0    |
| `tflite-fp16`    | max abs difference             | 2 x rounding    | 1.0    |
| `tflite-dynamic` | max abs difference             | 1e-2            | 1.0    |
| `tflite-int8`    | p95 over samples of max diff   | 3 int8 steps    | >= 0.9 |

Why float16 is judged against its own rounding: the file stores every
weight rounded to float16 (relative error at most 2**-11, 4.9e-4) and
computes in float32, so its outputs differ from Keras by what that rounding
does to the model, which depends on the model: a softmax output moves with
its logits, which a confident classifier keeps large (trained Omniglot
convnets: 1.0e-3 to 2.1e-3 on probabilities, where a fixed 1e-3 failed the
files of 4 zoo models). `float16_deviation` measures it in Keras: each
weight the file rounds (kernels, biases, and a batch norm as the scale and
offset the converter folds it into) takes a relative error drawn uniformly
in [-2**-11, 2**-11], and the largest output change over 5 seeded draws is
the unit. A float16 rounding of `m 2**e` (`1 <= m < 2`) errs by at most
`2**-11 / m`, so a draw's errors are, in distribution, at least the
file's. A
constant the converter derives through other ops (soft ordering's mixing
weights, a softmax of logits) is rounded after the derivation, and a draw
reaches it only through its inputs, so there the unit can understate it.
Measured against the files (2-core AMD EPYC): 0.28-0.39 units on a
trained 1.5x Omniglot tree, 0.31-0.93 on a planted-groups MLP, 0.4-0.9 on a
trained soft-ordering pool. The tolerance is two units (at least the
float32 1e-5); a wrong op or scale errs by orders of magnitude more, and a
kernel off by 1% fails (tested).

Why int8 checks a percentile: full int8 clamps every tensor to the range
seen in calibration, so the few held-out samples beyond it differ by much
more than rounding. Measured on a trained planted-groups MLP with 300
calibration samples: up to ~32 output steps on the samples whose Keras
output lies beyond the calibrated output range, while the 95th percentile
stays near 3 steps (one task 3.04); with the default 1000 calibration
samples the 95th percentile was at most 2.3 steps on every task. The max
is still printed; the percentile catches what a
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

import keras
import numpy as np

from keras_branch.batch_norm import nested_layers
from keras_branch.checks import check_int
from keras_branch.errors import ExportError
from keras_branch.export import litert_runner
from keras_branch.export.saved_model import DEFAULT_SIGNATURE, run_saved_model
from keras_branch.tasks import BINARY, MULTICLASS


#: Units a tolerance can be counted in, each a per-task scale of the model.
INT8_STEP = "int8 step"
FLOAT16_ROUNDING = "float16 rounding"

#: Largest relative error of rounding a float32 to float16 (11-bit significand).
FLOAT16_UNIT_ROUNDOFF = 2.0**-11


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How one format is judged.

    Args:
        atol: absolute tolerance; with `steps`, the least tolerance.
        steps: tolerance in units of a per-task scale (`unit`), or None.
        statistic: `"max"` (max abs difference) or `"p95"` (95th percentile
            over samples of each sample's max abs difference).
        argmax: required argmax agreement on decided samples.
        unit: what `steps` counts: `INT8_STEP` (the int8 quantization step
            of the output, `tflite.int8_steps`) or `FLOAT16_ROUNDING` (what
            float16 weight rounding does to the output, `float16_deviation`).
    """

    atol: float | None = None
    steps: float | None = None
    statistic: str = "max"
    argmax: float = 1.0
    unit: str | None = None

    def absolute(self, scale: float | None) -> float:
        """The absolute tolerance, given the task's scale in `unit`."""
        if self.steps is None:
            return float(self.atol)
        if scale is None:
            raise ExportError(f"A tolerance counted in {self.unit or 'steps'} needs the task's "
                              f"output scale in that unit; none was given.")
        return max(float(self.steps * scale), float(self.atol or 0.0))


TOLERANCES: dict[str, Tolerance] = {
    "saved_model": Tolerance(atol=1e-5),
    "tflite": Tolerance(atol=1e-5),
    "tflite-fp16": Tolerance(atol=1e-5, steps=2.0, unit=FLOAT16_ROUNDING),
    "tflite-dynamic": Tolerance(atol=1e-2),
    "tflite-int8": Tolerance(steps=3.0, statistic="p95", argmax=0.9, unit=INT8_STEP),
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


def keras_outputs(model: Any, x: np.ndarray, batch_size: int = 128,
                  variables: tuple[list, list] | None = None) -> Any:
    """A model's outputs in inference mode, as numpy (a dict stays a dict).

    Direct calls in batches: `model.predict` would trace a new function for
    every model it sees, which an export of several models pays for. With
    `variables` (values for `model.trainable_variables` and
    `model.non_trainable_variables`) the model runs on those instead of its
    own weights, which stay untouched (`stateless_call`).

    Example:
    >>> model = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression"), Task("b", "binary")])
    >>> x_test = np.zeros((100, 10), "float32")
    >>> keras_outputs(model, x_test[:64])["a"].shape
    (64, 1)
    """
    def call(batch):
        if variables is None:
            return model(batch, training=False)
        return model.stateless_call(*variables, batch, training=False)[0]

    parts = [call(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], Mapping):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])


def _rounded_values(model: Any, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """One draw of float16-sized relative errors on what a float16 file rounds.

    Returns `{id(variable): value}` for every float variable of the model.
    The converter folds a batch norm that follows a conv or dense layer (the
    order of every keras_branch backbone) into that layer: the kernel times
    `scale = gamma / sqrt(var + eps)`, and an offset `beta - mean * scale`,
    and rounds those. So the norm's gamma and statistics stay exact (the
    kernel's own draw stands for the folded kernel's rounding), and its
    offset takes an error relative to the offset's own size (through beta,
    or the mean without beta). Every other float weight takes its own.
    """
    def error(shape) -> np.ndarray:
        return rng.uniform(-FLOAT16_UNIT_ROUNDOFF, FLOAT16_UNIT_ROUNDOFF, shape)

    values = {id(v): np.asarray(v) for v in model.variables}
    drawn: dict[int, np.ndarray] = {}
    for layer in nested_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization) or not layer.built:
            continue
        mean, var = values[id(layer.moving_mean)], values[id(layer.moving_variance)]
        gamma = values[id(layer.gamma)] if layer.scale else np.ones_like(mean)
        offset = -mean * gamma / np.sqrt(var + layer.epsilon)
        if layer.center:
            beta = values[id(layer.beta)]
            drawn[id(layer.beta)] = beta + error(beta.shape) * (beta + offset)
        else:
            drawn[id(layer.moving_mean)] = mean * (1 + error(mean.shape))
        for exact in (layer.moving_mean, layer.moving_variance, layer.gamma if layer.scale else None):
            if exact is not None:
                drawn.setdefault(id(exact), values[id(exact)])
    for key, value in values.items():
        if key not in drawn and np.issubdtype(value.dtype, np.floating):
            drawn[key] = value * (1 + error(value.shape))
    return {key: value.astype(values[key].dtype) for key, value in drawn.items()}


def float16_deviation(model: Any, x: np.ndarray, draws: int = 5, seed: int = 0,
                      reference: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """What float16 weight rounding does to each task's output: the fp16 parity unit.

    Each draw gives every weight a float16 file rounds a relative error drawn
    uniformly in `[-FLOAT16_UNIT_ROUNDOFF, FLOAT16_UNIT_ROUNDOFF]` (kernels
    and biases; a batch norm's folded scale and offset, see
    `_rounded_values`), and the outputs on `x` are compared with the model's
    own. The model's weights are not touched (`stateless_call`). See the
    module docstring for why this bounds a float16 file's error.

    Args:
        model: the exported Keras model (outputs keyed by task key).
        x: the parity check's inputs.
        draws: perturbations drawn; the largest change counts.
        seed: the draws' seed (the same seed gives the same scale).
        reference: the model's own outputs on `x` (`keras_outputs`), when
            the caller has them already.

    Returns:
        `{task key: largest |output change| over the draws and samples}`.

    Example:
    >>> model = build_model(TreeSpec.shared(["a"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression")])
    >>> x = np.random.default_rng(0).standard_normal((64, 10)).astype("float32")
    >>> 0 < float16_deviation(model, x)["a"] < 1e-2
    True
    """
    check_int(draws, "draws", minimum=1)
    x = np.asarray(x, dtype="float32")
    if reference is None:
        reference = keras_outputs(model, x)
    rng = np.random.default_rng(seed)
    deviation = {t.key: 0.0 for t in model.tasks}
    for _ in range(draws):
        drawn = _rounded_values(model, rng)
        outputs = keras_outputs(model, x, variables=(
            [drawn.get(id(v), np.asarray(v)) for v in model.trainable_variables],
            [drawn.get(id(v), np.asarray(v)) for v in model.non_trainable_variables]))
        for key in deviation:
            change = np.abs(outputs[key].astype("float64") - reference[key])
            deviation[key] = max(deviation[key], float(change.max()) if change.size else 0.0)
    return deviation


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
        scale: the task's scale in the rule's `unit` (rules with `steps`).

    Returns:
        `max_abs_diff`, `value` (the checked statistic), `tolerance`
        (absolute), `argmax_agreement`, `decided`, `passed`, `note`.

    Example:
    >>> keras_probs = np.array([[0.7, 0.3], [0.2, 0.8]], "float32")
    >>> lite_probs = keras_probs + np.float32(2e-4)     # float16 rounding
    >>> compare(keras_probs, lite_probs, "multiclass", TOLERANCES["tflite-fp16"], scale=3e-4)["passed"]
    True
    >>> compare(keras_probs, lite_probs, "multiclass", TOLERANCES["tflite-fp16"], scale=5e-5)["passed"]
    False
    """
    ref, got = _flat(ref), _flat(got)
    if ref.shape != got.shape:
        return {"max_abs_diff": math.inf, "value": math.inf, "tolerance": tolerance.absolute(scale),
                "argmax_agreement": None, "decided": None, "passed": False,
                "note": f"shape {got.shape} != Keras {ref.shape}"}
    atol = tolerance.absolute(scale)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
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
            `files` has `tflite-int8`. The float16 unit is measured here
            (`float16_deviation` on `x`).
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
    scales = {INT8_STEP: int8_steps}
    if any(rules[f].unit == FLOAT16_ROUNDING for f in files if f in rules):
        scales[FLOAT16_ROUNDING] = float16_deviation(model, x, reference=raw)
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
                unit_scales = scales.get(rule.unit)
                if not unit_scales or task.key not in unit_scales:
                    raise ExportError(
                        f"Format {fmt!r} is judged in int8 steps: pass `int8_steps` "
                        f"(`tflite.int8_steps` on the calibration inputs) with task "
                        f"{task.key!r}." if rule.unit == INT8_STEP else
                        f"Format {fmt!r} is judged in units {rule.unit!r}, which the parity "
                        f"check does not measure; units are {[INT8_STEP, FLOAT16_ROUNDING]}."
                    )
                scale = float(unit_scales[task.key])
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
                format=fmt, task=task.name, key=task.key, statistic=rule.statistic,
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

    For rows judged in a unit (int8, float16), `steps` is the checked
    statistic in that unit: int8 output steps, or float16 rounding deviations.
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
    "FLOAT16_ROUNDING",
    "FLOAT16_UNIT_ROUNDOFF",
    "INT8_STEP",
    "ParityResult",
    "ParityRow",
    "TOLERANCES",
    "Tolerance",
    "check_parity",
    "compare",
    "float16_deviation",
    "format_parity_table",
]
