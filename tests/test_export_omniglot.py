"""Export of an Omniglot convnet tree: parity in all four formats, LiteRT without Keras."""

import numpy as np
import pytest

from keras_branch import TreeSpec, backbones
from keras_branch.data import load_omniglot
from keras_branch.export import DEFAULT_FORMATS, TOLERANCES, check_inputs, export_model, float16_deviation
from keras_branch.export import litert_runner
from keras_branch.export.parity import compare
from keras_branch.training import fit_spec


@pytest.fixture(scope="module")
def omniglot_export(omniglot_zip, tmp_path_factory):
    data = load_omniglot(omniglot_zip, image_size=28)
    names = data.task_names
    # Shared first block, two groups of alphabets, then one block per alphabet.
    spec = TreeSpec.from_partitions([
        [names], [names[:2], names[2:]], [[n] for n in names], [[n] for n in names]])
    backbone = backbones.convnet4(data.input_shape, filters=16)
    # Trained to ~55% validation accuracy (chance ~4%), so batch-norm statistics,
    # logit ranges and softmax margins are those of a real model.
    model = fit_spec(spec, backbone, data, epochs=6, batch_size=32, learning_rate=3e-3,
                     verbose=0).model
    out = tmp_path_factory.mktemp("omniglot") / "export"
    result = export_model(model, out, DEFAULT_FORMATS, data=data, check=True)
    return result, model, data


def test_omniglot_parity_passes_for_all_four_formats(omniglot_export):
    result, model, _ = omniglot_export
    report = result.parity
    assert report.passed, report.format_table()
    assert {r.format for r in report.rows} == set(DEFAULT_FORMATS)
    assert len(report.rows) == len(DEFAULT_FORMATS) * len(model.tasks) == 20
    for row in report.rows:
        # Every task is a classifier: argmax agreement is measured on decided samples.
        assert row.decided is not None
        if row.decided:
            assert row.argmax_agreement >= row.argmax_required
    for task in model.tasks:
        assert report.row("tflite", task.key).max_abs_diff <= 1e-5
        # Softmax heads: the step is at least the 1/256 output grid (see int8_steps).
        assert report.row("tflite-int8", task.key).scale == result.int8_steps[task.key]
        assert result.int8_steps[task.key] >= 1 / 256 == result.int8_scales[task.key]


def test_omniglot_litert_without_keras(omniglot_export):
    result, model, data = omniglot_export
    x = check_inputs(data, data.input_shape, 64)
    expected = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    keys = [t.key for t in model.tasks]
    deviation = float16_deviation(model, x)
    for fmt in ("tflite", "tflite-fp16", "tflite-int8"):
        outputs, imported = litert_runner.run_isolated(result.files[fmt], x)
        assert imported == []
        assert sorted(outputs) == sorted(["serving_default", *keys])
        for task in model.tasks:
            got = outputs[task.key][task.key]
            assert got.shape == (64, task.classes)
            # Still softmax: each of the C probabilities is off by at most half a step of
            # its format's output grid (int8: the output's quantisation step; float16:
            # 2**-11 at 1.0), so a row's sum by at most C half-steps. float32 allows 16
            # ulps per probability for the exp, the division and the sum.
            half_step = {"tflite": 2.0**-20, "tflite-fp16": 2.0**-11,
                         "tflite-int8": result.int8_steps[task.key] / 2}[fmt]
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=task.classes * half_step)
            scale = {"tflite": None, "tflite-fp16": deviation[task.key],
                     "tflite-int8": result.int8_steps[task.key]}[fmt]
            measured = compare(expected[task.key], got, task.kind, TOLERANCES[fmt], scale)
            assert measured["passed"], (fmt, task.key, measured)
