"""Export of a planted-groups model: SavedModel signatures, TFLite on LiteRT, parity, atomicity.

One trained model and one export folder are shared by the module (exporting
takes seconds); tests that change the export write their own folders.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch import ExportError, OutputExistsError, Task, TreeSpec, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.export import (
    DEFAULT_FORMATS,
    TOLERANCES,
    Tolerance,
    check_inputs,
    check_parity,
    export_model,
    float16_deviation,
    int8_output_scales,
    calibration_inputs,
)
from keras_branch.export import cli as export_cli
from keras_branch.export import litert_runner, parity
from keras_branch.export.parity import compare
from keras_branch.training import fit_spec

TFLITE = ("tflite", "tflite-fp16", "tflite-int8")


@pytest.fixture(scope="module")
def planted():
    data = planted_groups(group_sizes=(2, 2), num_train=1200, num_validation=200,
                          num_test=300, seed=0)
    names = data.task_names
    spec = TreeSpec.from_partitions([[names], data.info["partition"], [[n] for n in names]])
    backbone = backbones.mlp(data.input_shape[0], widths=(32, 32, 16))
    result = fit_spec(spec, backbone, data, epochs=4, batch_size=64, verbose=0)
    return result.model, data


@pytest.fixture(scope="module")
def exported(planted, tmp_path_factory):
    model, data = planted
    root = tmp_path_factory.mktemp("planted")
    model_path = root / "model.keras"
    model.save(model_path)
    out = root / "export"
    # From the .keras file, as the CLI does.
    result = export_model(model_path, out, DEFAULT_FORMATS, data=data, check=True)
    x = check_inputs(data, data.input_shape, 64)
    return result, model, data, x, model_path


def keras_outputs(model, x):
    out = model(x, training=False)
    return {k: np.asarray(v) for k, v in out.items()}


# === SavedModel ===


def test_export_folder_layout_and_manifest(exported):
    result, model, _, _, _ = exported
    assert sorted(os.listdir(result.out_dir)) == [
        ".keras-branch", "export.json", "model.tflite", "model_fp16.tflite", "model_int8.tflite", "saved_model"]
    manifest = json.loads(open(os.path.join(result.out_dir, "export.json")).read())
    keys = [t.key for t in model.tasks]
    assert manifest["signatures"] == ["serving_default", *keys]
    assert manifest["input"] == {"name": "inputs", "shape": [None, 100], "dtype": "float32"}
    assert manifest["parity"]["passed"] is True
    assert {f: v["bytes"] for f, v in manifest["formats"].items()} == result.sizes
    assert all(size > 0 for size in result.sizes.values())
    # Quantized weights take less space than float32 ones.
    assert result.sizes["tflite-fp16"] < result.sizes["tflite"]
    assert result.sizes["tflite-int8"] < result.sizes["tflite"]


def test_saved_model_has_one_signature_per_task_plus_default(exported):
    result, model, _, x, _ = exported
    loaded = tf.saved_model.load(result.files["saved_model"])
    keys = [t.key for t in model.tasks]
    assert sorted(loaded.signatures) == sorted(["serving_default", *keys])
    expected = keras_outputs(model, x)
    default = loaded.signatures["serving_default"]
    assert default.structured_input_signature[1]["inputs"].shape.as_list() == [None, 100]
    outputs = default(inputs=tf.constant(x))
    assert sorted(outputs) == sorted(keys)
    for key in keys:
        np.testing.assert_allclose(outputs[key].numpy(), expected[key], atol=1e-5, rtol=0)
        single = loaded.signatures[key](inputs=tf.constant(x))
        assert list(single) == [key]
        assert single[key].shape == (64, 1)
        np.testing.assert_allclose(single[key].numpy(), expected[key], atol=1e-5, rtol=0)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    result, model, _, x, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    cli = cli if os.path.exists(cli) else shutil.which("saved_model_cli")
    assert cli, "saved_model_cli (installed with tensorflow) not found"
    sm = result.files["saved_model"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    show = subprocess.run([cli, "show", "--dir", sm, "--all"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    listed = {line.split("'")[1] for line in show.stdout.splitlines()
              if line.startswith("signature_def['")}
    listed.discard("__saved_model_init_op")
    keys = [t.key for t in model.tasks]
    assert listed == {"serving_default", *keys}

    np.save(tmp_path / "x.npy", x[:5])
    key = keys[1]
    run = subprocess.run(
        [cli, "run", "--dir", sm, "--tag_set", "serve", "--signature_def", key,
         "--inputs", f"inputs={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert os.listdir(tmp_path / "out") == [f"{key}.npy"]
    got = np.load(tmp_path / "out" / f"{key}.npy")
    np.testing.assert_allclose(got, keras_outputs(model, x[:5])[key], atol=1e-5, rtol=0)


# === TFLite on LiteRT ===


def test_litert_without_keras_runs_every_task_signature(exported):
    result, model, _, x, _ = exported
    expected = keras_outputs(model, x)
    keys = [t.key for t in model.tasks]
    scales = {"tflite": {}, "tflite-fp16": float16_deviation(model, x), "tflite-int8": result.int8_steps}
    for fmt in TFLITE:
        outputs, imported = litert_runner.run_isolated(result.files[fmt], x)
        assert imported == [], f"the LiteRT process imported {imported}"
        assert sorted(outputs) == sorted(["serving_default", *keys])
        assert sorted(outputs["serving_default"]) == sorted(keys)
        for task in model.tasks:
            assert list(outputs[task.key]) == [task.key]
            got = outputs[task.key][task.key]
            assert got.shape == (64, 1) and got.dtype == np.float32
            measured = compare(expected[task.key], got, task.kind, TOLERANCES[fmt],
                               scales[fmt].get(task.key))
            assert measured["passed"], (fmt, task.key, measured)


def test_parity_passes_for_all_four_formats(exported):
    result, model, _, _, _ = exported
    report = result.parity
    assert report.passed, report.format_table()
    assert report.num_samples == 64
    assert [(r.format, r.key) for r in report.rows] == [
        (f, t.key) for f in DEFAULT_FORMATS for t in model.tasks]
    for r in report.rows:
        assert r.signatures == ["serving_default", r.key]
        assert np.isfinite(r.max_abs_diff)
    assert max(report.row("saved_model", t.key).max_abs_diff for t in model.tasks) <= 1e-5
    assert max(report.row("tflite", t.key).max_abs_diff for t in model.tasks) <= 1e-5
    # float16 measures in units of what float16 rounding does: the tolerance is two.
    deviation = float16_deviation(model, check_inputs(exported[2], (100,), 64))
    for t in model.tasks:
        row = report.row("tflite-fp16", t.key)
        assert row.scale == deviation[t.key] > 0
        assert row.tolerance == pytest.approx(2 * row.scale)
        assert row.value == row.max_abs_diff <= row.tolerance
    # int8 measures in output steps: the tolerance is three of them.
    for t in model.tasks:
        row = report.row("tflite-int8", t.key)
        # Regression heads: the step is the int8 output scale itself.
        assert result.int8_steps[t.key] == result.int8_scales[t.key]
        assert row.scale == result.int8_steps[t.key]
        assert row.tolerance == pytest.approx(3 * row.scale)
        assert row.value <= row.tolerance and row.value <= row.max_abs_diff
    table = report.format_table()
    assert "all formats within tolerance" in table
    assert len([line for line in table.splitlines() if line.endswith("ok")]) == len(report.rows)
    with pytest.raises(ExportError, match="int8_steps"):
        check_parity(model, {"tflite-int8": result.files["tflite-int8"]}, np.zeros((2, 100)))


def test_int8_io_scales_match_calibration_and_parity_holds(exported, tmp_path):
    _, model, data, x, _ = exported
    result = export_model(model, tmp_path / "io", ["tflite-int8"], data=data, check=True,
                          int8_io=True)
    assert result.parity.passed, result.parity.format_table()
    interpreter = litert_runner.load(result.files["tflite-int8"])
    for task in model.tasks:
        runner = interpreter.get_signature_runner(task.key)
        assert runner.get_input_details()["inputs"]["dtype"] == np.int8
        scale, _ = litert_runner.output_quantization(interpreter, task.key)[task.key]
        # The scale the file declares is the one computed from calibration.
        assert scale == pytest.approx(result.int8_scales[task.key], rel=1e-3)
    xc = calibration_inputs(data)  # the default calibration set
    assert int8_output_scales(model, xc) == result.int8_scales


def test_parity_detects_a_different_model(exported):
    result, model, _, x, _ = exported
    keras.utils.set_random_seed(99)
    other = build_model(model.spec, model.backbone, model.tasks)
    report = check_parity(other, result.files, x, int8_steps=result.int8_steps)
    assert not report.passed
    assert set(report.formats_passed().values()) == {False}
    assert all(r.max_abs_diff > 0.05 for r in report.rows)
    assert "OUT OF TOLERANCE" in report.format_table()


def test_float16_parity_detects_a_one_percent_weight_error(exported):
    """float16's tolerance is two rounding deviations: a 1% error in one kernel fails it."""
    result, model, _, x, model_path = exported
    other = keras.saving.load_model(model_path)
    head = other.get_layer(f"head_{model.tasks[0].key}")
    head.kernel.assign(np.asarray(head.kernel) * 1.01)
    report = check_parity(other, {"tflite-fp16": result.files["tflite-fp16"]}, x)
    row = report.row("tflite-fp16", model.tasks[0].key)
    # 1% of this head's output is about six tolerances here (AMD EPYC, 6.4); any failure counts.
    assert not row.passed and row.max_abs_diff > row.tolerance
    assert all(report.row("tflite-fp16", t.key).passed for t in model.tasks[1:])


def _rounded_to_float16(values):
    return [np.asarray(v, "float32").astype("float16").astype("float32") for v in values]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float16_deviation_bounds_rounding_every_weight(seed):
    """Rounding each weight to float16 (what a float16 file stores) changes the
    outputs by less than the parity check's tolerance, two deviations."""
    keras.utils.set_random_seed(seed)
    data = planted_groups(group_sizes=(2,), num_train=64, num_validation=32, num_test=64, seed=seed)
    model = build_model(TreeSpec.shared(data.task_names, num_stages=2),
                        backbones.mlp(data.input_shape[0], (32, 16)), data.tasks)
    x = check_inputs(data, data.input_shape, 64)
    before = [np.array(w) for w in model.get_weights()]
    deviation = float16_deviation(model, x)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert float16_deviation(model, x) == deviation
    assert float16_deviation(model, x, seed=1) != deviation
    reference = keras_outputs(model, x)
    model.set_weights(_rounded_to_float16(before))
    rounded = keras_outputs(model, x)
    for key, value in deviation.items():
        assert 0 < np.abs(rounded[key] - reference[key]).max() <= 2 * value


def test_float16_deviation_of_a_batch_norm_is_that_of_its_folded_weights():
    """A batch norm after a dense layer is folded into it (kernel x scale, offset
    beta - mean x scale) and those are rounded: here the offset is 0, so only
    the kernel's rounding counts, not that of a mean and beta of 1000."""
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    norm = keras.layers.BatchNormalization(epsilon=1e-3)
    model = keras.Model(inputs, {"y": norm(dense(inputs))})
    norm.moving_mean.assign([1000.0])
    norm.moving_variance.assign([1.0 - 1e-3])
    norm.beta.assign([1000.0])
    model.tasks = [Task("y", "regression")]
    x = np.random.default_rng(0).standard_normal((64, 1)).astype("float32")
    np.testing.assert_allclose(keras_outputs(model, x)["y"], x, atol=1e-4)
    deviation = float16_deviation(model, x)["y"]
    # The kernel's rounding, plus float32's: both outputs pass through values near
    # 1000, where each is rounded to within one float32 spacing.
    float32_rounding = 2 * np.spacing(np.float32(1000.0))
    assert 0 < deviation <= parity.FLOAT16_UNIT_ROUNDOFF * np.abs(x).max() + float32_rounding
    # Rounding the mean and beta themselves would have moved the output by up to 0.49.
    assert deviation < parity.FLOAT16_UNIT_ROUNDOFF * 1000 / 100


def test_parity_flags_a_file_that_lost_its_task_signatures(exported, tmp_path):
    result, model, _, x, _ = exported
    from keras_branch.export.tflite import convert_tflite

    # What the `serve` trap produces: a file with serving_default only.
    path = tmp_path / "default_only.tflite"
    path.write_bytes(convert_tflite(result.files["saved_model"], "tflite", ["serving_default"]))
    report = check_parity(model, {"tflite": str(path)}, x)
    assert not report.passed
    for task in model.tasks:
        row = report.row("tflite", task.key)
        assert row.signatures == ["serving_default"]
        assert row.max_abs_diff <= 1e-5  # the numbers are right, a signature is missing
        assert row.note == f"missing signature(s) ['{task.key}']"


def test_dynamic_range_format_converts_and_is_measured(exported, tmp_path):
    _, model, data, _, _ = exported
    result = export_model(model, tmp_path / "out", "tflite,tflite-dynamic", data=data,
                          check=True)
    assert result.sizes["tflite-dynamic"] < result.sizes["tflite"]
    rows = [r for r in result.parity.rows if r.format == "tflite-dynamic"]
    assert [r.key for r in rows] == [t.key for t in model.tasks]
    for row in rows:
        assert row.tolerance == 1e-2 and row.signatures == ["serving_default", row.key]
        assert 0 < row.max_abs_diff < np.inf  # int8 weights: not bit-exact, but finite


def test_export_runs_in_inference_mode(tmp_path):
    keras.utils.set_random_seed(5)
    # Dropout as a whole stage: active in training, off in every export.
    backbone = backbones.Backbone((6,), [keras.layers.Dense(16), keras.layers.Dropout(0.5)])
    tasks = [Task("a", "regression"), Task("b", "multiclass", classes=4)]
    model = build_model(TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]]), backbone,
                        tasks)
    x = np.random.default_rng(0).standard_normal((32, 6)).astype("float32")
    assert not np.allclose(np.asarray(model(x, training=True)["a"]),
                           np.asarray(model(x, training=False)["a"]))
    result = export_model(model, tmp_path / "out", ["saved_model", "tflite"], check=True)
    assert result.parity.passed, result.parity.format_table()
    assert max(r.max_abs_diff for r in result.parity.rows) <= 1e-5


# === Comparison rules ===


def test_compare_max_rule_and_argmax_on_decided_samples():
    ref = np.array([[0.7, 0.2, 0.1], [0.40, 0.3995, 0.2005], [0.1, 0.1, 0.8]])
    got = ref + np.array([[0, 0, 0], [-0.0004, 0.0004, 0], [0, 0, 0]])
    # Sample 2's top two are 5e-4 apart: within 2 x 1e-3 it is undecided, the flip is fine.
    m = compare(ref, got, "multiclass", Tolerance(atol=1e-3))
    assert m["passed"] and m["decided"] == 2 and m["argmax_agreement"] == 1.0
    assert m["max_abs_diff"] == pytest.approx(4e-4)
    assert not compare(ref, got, "multiclass", Tolerance(atol=1e-4))["passed"]


def test_compare_percentile_rule_and_argmax_independently():
    rng = np.random.default_rng(0)
    ref = np.eye(4)[rng.integers(0, 4, 40)] * 0.7 + 0.075  # clear winners, margin 0.7
    got = ref.copy()
    got[3] = np.roll(ref[3], 1)  # one sample of 40 flipped: p95 excludes it, argmax does not
    m = compare(ref, got, "multiclass", Tolerance(atol=0.01, statistic="p95", argmax=1.0))
    assert m["value"] == 0.0 and m["max_abs_diff"] == pytest.approx(0.7)
    assert m["decided"] == 40 and m["argmax_agreement"] == pytest.approx(39 / 40)
    assert not m["passed"]
    assert compare(ref, got, "multiclass", Tolerance(atol=0.01, statistic="p95",
                                                     argmax=0.9))["passed"]
    got[5] = np.roll(ref[5], 1)  # two of 40: beyond the 95th percentile
    assert not compare(ref, got, "multiclass", Tolerance(atol=0.01, statistic="p95",
                                                         argmax=0.9))["passed"]


def test_compare_int8_steps_binary_and_shapes():
    ref = np.linspace(0.0, 1.0, 40)[:, None]
    got = ref + 0.02
    rule = Tolerance(steps=3, statistic="p95")
    assert compare(ref, got, "regression", rule, scale=0.01)["passed"]  # 2 steps
    m = compare(ref, got, "regression", rule, scale=0.005)  # 4 steps
    assert not m["passed"] and m["tolerance"] == pytest.approx(0.015)
    with pytest.raises(ExportError, match="output scale"):
        compare(ref, got, "regression", rule, scale=None)
    probs = np.array([[0.9], [0.1], [0.5005]])
    m = compare(probs, np.array([[0.9], [0.1], [0.4995]]), "binary", Tolerance(atol=1e-3))
    assert m["passed"] and m["decided"] == 2 and m["argmax_agreement"] == 1.0
    assert not compare(probs, probs[:2], "binary", Tolerance(atol=1e-3))["passed"]


# === Atomic writing and errors ===


def _entries(folder):
    return sorted(os.listdir(folder))


def test_failure_mid_write_leaves_nothing(exported, tmp_path, monkeypatch):
    _, model, data, _, _ = exported
    from keras_branch.export import tflite

    calls = []
    real = tflite.convert_tflite

    def flaky(saved_model_dir, fmt, *args, **kwargs):
        # The SavedModel and the float32 file are written by now.
        assert os.path.isdir(saved_model_dir)
        calls.append(fmt)
        if fmt == "tflite-fp16":
            raise RuntimeError("disk full (injected)")
        return real(saved_model_dir, fmt, *args, **kwargs)

    monkeypatch.setattr(tflite, "convert_tflite", flaky)
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        export_model(model, target, ["saved_model", "tflite", "tflite-fp16"], data=data)
    assert calls == ["tflite", "tflite-fp16"]
    assert not os.path.lexists(target)
    assert _entries(tmp_path) == []  # no temporary sibling left either


def test_refuses_to_overwrite_unless_asked(exported, tmp_path):
    _, model, _, _, _ = exported
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="exists"):
        export_model(model, target, ["saved_model"])
    assert _entries(target) == ["keep.txt"]
    # A folder keras-branch did not write is never replaced, even with overwrite.
    with pytest.raises(OutputExistsError, match="did not create"):
        export_model(model, target, ["saved_model"], overwrite=True)
    assert _entries(target) == ["keep.txt"]
    ours = tmp_path / "ours"
    export_model(model, ours, ["tflite"])
    result = export_model(model, ours, ["saved_model"], overwrite=True)
    assert _entries(ours) == [".keras-branch", "export.json", "saved_model"]
    assert result.files == {"saved_model": os.path.join(str(ours), "saved_model")}
    assert _entries(tmp_path) == ["ours", "out"]


def test_tflite_only_export_drops_the_intermediate_saved_model(exported, tmp_path):
    _, model, _, x, _ = exported
    result = export_model(model, tmp_path / "out", "tflite", check=True)
    assert _entries(tmp_path / "out") == [".keras-branch", "export.json", "model.tflite"]
    assert result.parity.passed and result.parity.num_samples == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"formats": ["tflite-int8"]}, "needs|calibrated on training data"),
        ({"formats": "tflite,onnx"}, r"Unknown format\(s\) \['onnx'\]"),
        ({"formats": []}, "at least one"),
        ({"tasks": ["g0_t0", "nope"]}, r"Unknown task\(s\) \['nope'\].*g0_t0"),
    ],
)
def test_clear_errors_write_nothing(exported, tmp_path, kwargs, message):
    _, model, _, _, _ = exported
    with pytest.raises(ExportError, match=message):
        export_model(model, tmp_path / "out", **kwargs)
    assert _entries(tmp_path) == []


def test_data_with_another_input_shape_is_an_error(exported, tmp_path):
    _, model, _, _, _ = exported
    other = planted_groups(group_sizes=(2, 2), num_train=50, num_validation=10,
                           num_test=10, dim=20)
    with pytest.raises(ExportError, match=r"input shape \(20,\).*\(100,\)"):
        export_model(model, tmp_path / "out", ["tflite-int8"], data=other)


def test_task_named_serve_cannot_name_a_signature(tmp_path):
    tasks = [Task("serve", "regression"), Task("b", "regression")]
    model = build_model(TreeSpec.shared(["serve", "b"], 1), backbones.mlp(4, widths=(4,)), tasks)
    with pytest.raises(ExportError, match="'serve'.*reserved"):
        export_model(model, tmp_path / "out", ["saved_model"])
    assert _entries(tmp_path) == []


@keras.saving.register_keras_serializable(package="keras_branch_tests")
class CumProd(keras.layers.Layer):
    """A layer whose op (Cumprod) exists only as a Flex op in TFLite."""

    def call(self, x):
        return keras.ops.cumprod(x, axis=-1)


def test_model_needing_flex_ops_fails_at_export(tmp_path):
    backbone = backbones.Backbone((4,), [keras.layers.Dense(4), CumProd()])
    tasks = [Task("a", "regression"), Task("b", "binary")]
    model = build_model(TreeSpec.shared(["a", "b"], 2), backbone, tasks)
    with pytest.raises(ExportError, match=r"'tflite'.*Flex.*Cumprod"):
        export_model(model, tmp_path / "out", ["saved_model", "tflite"])
    assert _entries(tmp_path) == []


# === Command line ===


def _parse(argv):
    parser = argparse.ArgumentParser(prog="keras-branch")
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_exports_and_checks(exported, tmp_path, capsys):
    _, model, _, _, model_path = exported
    args = _parse(["export", str(model_path), "--out", str(tmp_path / "out"),
                   "--formats", "saved_model,tflite", "--tasks", "g1_t0", "--check",
                   "--data", "planted:groups=2-2,train=300"])
    assert args.func is export_cli.run
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "all formats within tolerance" in printed
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["signatures"] == ["serving_default", "g1_t0"]
    assert manifest["spec"]["tasks"] == ["g1_t0"]


def test_cli_exits_1_when_a_format_is_out_of_tolerance(exported, tmp_path, monkeypatch, capsys):
    _, _, _, _, model_path = exported
    # A rule nothing can meet: the exit status must reflect a failed check.
    monkeypatch.setitem(parity.TOLERANCES, "tflite", Tolerance(atol=-1.0))
    args = _parse(["export", str(model_path), "--out", str(tmp_path / "out"),
                   "--formats", "tflite", "--check"])
    assert export_cli.run(args) == 1
    printed = capsys.readouterr().out
    assert "OUT OF TOLERANCE: tflite" in printed and "random inputs" in printed
    assert (tmp_path / "out" / "model.tflite").is_file()


def test_cli_int8_without_data_is_a_clear_error(exported, tmp_path):
    _, _, _, _, model_path = exported
    args = _parse(["export", str(model_path), "--out", str(tmp_path / "out"),
                   "--formats", "tflite,tflite-int8"])
    with pytest.raises(ExportError, match="--data"):
        export_cli.run(args)
    assert _entries(tmp_path) == []


def test_cli_default_formats_without_data_skip_int8_and_say_so(exported, tmp_path, capsys):
    _, _, _, _, model_path = exported
    args = _parse(["export", str(model_path), "--out", str(tmp_path / "out")])
    assert export_cli.run(args) == 0
    assert "skipping tflite-int8: it is calibrated on training data" in capsys.readouterr().out
    files = sorted(os.listdir(tmp_path / "out"))
    assert "model.tflite" in files and "model_fp16.tflite" in files
    assert "model_int8.tflite" not in files and "saved_model" in files


def test_runner_script_usage_error():
    assert litert_runner.main([]) == 2


def test_planted_test_split_is_what_parity_uses(exported):
    result, _, data, x, _ = exported
    # Parity inputs are held-out samples, not calibration ones.
    test_x = data.split("test").x
    assert all((test_x == row).all(axis=1).any() for row in x)
