"""Task-subset export: only the chosen tasks' blocks and heads reach the artifact."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch import ExportError, Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model
from keras_branch.export import export_model, litert_runner, resolve_tasks, subset_model
from keras_branch.export.subset import block_layer_names

TASKS = [
    Task("a", "regression"),
    Task("b", "binary"),
    Task("c", "multiclass", classes=5),
    Task("Japanese_(katakana)", "multiclass", classes=3),
]
NAMES = [t.name for t in TASKS]
# Branches split at the first stage: {a, b} and {c, Japanese}, then one block per task.
EARLY_SPLIT = TreeSpec.from_partitions([
    [["a", "b"], ["c", "Japanese_(katakana)"]],
    [[n] for n in NAMES],
    [[n] for n in NAMES],
])


@pytest.fixture(scope="module")
def tree_model():
    keras.utils.set_random_seed(7)
    model = build_model(EARLY_SPLIT, backbones.mlp(32, widths=(128, 64, 32)), TASKS)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype("float32")
    return model, x


@pytest.fixture(scope="module")
def exports(tree_model, tmp_path_factory):
    model, _ = tree_model
    root = tmp_path_factory.mktemp("subset")
    full = export_model(model, root / "full", ["saved_model", "tflite"])
    part = export_model(model, root / "part", ["saved_model", "tflite"], tasks=["a", "b"],
                        check=True)
    return full, part


def test_subset_files_are_smaller_and_hold_only_the_chosen_blocks(tree_model, exports):
    model, _ = tree_model
    full, part = exports
    assert part.tasks == ["a", "b"]
    assert part.signatures == ["serving_default", "a", "b"]
    for fmt in ("saved_model", "tflite"):
        assert part.sizes[fmt] < 0.75 * full.sizes[fmt], (fmt, part.sizes, full.sizes)
    loaded = tf.saved_model.load(part.files["saved_model"])
    layers = {v.name.split("/")[0] for v in loaded.variables}
    assert layers == {"stage1_block0", "stage2_block0", "stage2_block1", "stage3_block0",
                      "stage3_block1", "head_a", "head_b"}
    full_layers = {v.name.split("/")[0] for v in tf.saved_model.load(
        full.files["saved_model"]).variables}
    assert {"stage1_block1", "head_c", "head_Japanese__katakana_"} <= full_layers
    # The subset model has exactly the parameters its spec counts.
    small = part.model
    assert small.count_params() == EARLY_SPLIT.subset(["a", "b"]).count_params(
        model.backbone, TASKS[:2]) < model.count_params()
    assert block_layer_names(small) == ["stage1_block0", "stage2_block0", "stage2_block1",
                                        "stage3_block0", "stage3_block1"]


def test_subset_outputs_equal_the_full_model(tree_model, exports):
    model, x = tree_model
    full, part = exports
    expected = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    assert part.parity.passed, part.parity.format_table()
    lite, _ = litert_runner.run_isolated(part.files["tflite"], x)
    assert sorted(lite) == ["a", "b", "serving_default"]
    full_lite = litert_runner.run_all(full.files["tflite"], x)
    served = tf.saved_model.load(part.files["saved_model"]).signatures
    for key in ("a", "b"):
        for got in (lite[key][key], lite["serving_default"][key],
                    served[key](inputs=tf.constant(x))[key].numpy()):
            np.testing.assert_allclose(got, expected[key], atol=1e-5, rtol=0)
        np.testing.assert_allclose(lite[key][key], full_lite[key][key], atol=1e-5, rtol=0)


def test_unknown_task_is_a_clear_error_and_writes_nothing(tree_model, tmp_path):
    model, _ = tree_model
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "out", ["saved_model"], tasks=["a", "Korean"])
    message = str(err.value)
    assert "Unknown task(s) ['Korean']" in message
    assert all(repr(n) in message for n in NAMES)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ExportError, match="at least one task"):
        subset_model(model, [])


def test_tasks_by_name_or_key_keep_the_order_given(tree_model):
    model, x = tree_model
    assert resolve_tasks(model, "Japanese__katakana_, c,c") == ["Japanese_(katakana)", "c"]
    small = subset_model(model, ["Japanese_(katakana)", "c"])
    assert list(small.output_names) == ["Japanese__katakana_", "c"]
    assert small.spec.tasks == ["Japanese_(katakana)", "c"]
    expected = model(x, training=False)
    got = small(x, training=False)
    for key in ("c", "Japanese__katakana_"):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))


def test_subset_copies_batch_norm_statistics():
    keras.utils.set_random_seed(3)
    tasks = [Task("p", "multiclass", classes=3), Task("q", "binary"), Task("r", "regression")]
    spec = TreeSpec.from_partitions([[["p", "q", "r"]], [["p", "q"], ["r"]]])
    model = build_model(spec, backbones.convnet4((8, 8, 1), filters=4, num_stages=2), tasks)
    compile_model(model)
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1)).astype("float32")
    y = {"p": rng.integers(0, 3, 16), "q": rng.integers(0, 2, 16), "r": rng.random(16)}
    model.fit(x, y, epochs=2, verbose=0)  # moves the batch-norm moving statistics
    block = model.get_layer("stage1_block0")
    moving = [w for w in block.non_trainable_weights if "moving_mean" in w.path]
    assert moving and np.abs(np.asarray(moving[0])).max() > 0
    small = subset_model(model, ["q"])
    assert [layer.name for layer in small.layers if layer.name.startswith("stage")] == [
        "stage1_block0", "stage2_block0"]
    np.testing.assert_array_equal(np.asarray(small(x, training=False)["q"]),
                                  np.asarray(model(x, training=False)["q"]))
