"""Missing labels: exactly zero loss and gradient, and metrics skip them."""

import keras
import numpy as np
import tensorflow as tf

from keras_branch import MaskedLoss, MaskedMetric, Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model


def test_multiclass_loss_is_sum_over_labelled_divided_by_batch():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.25, 0.5]], "float32")
    labels = np.array([0, -1, 2, -1])
    loss = float(MaskedLoss("multiclass")(labels, probs))
    expected = -(np.log(0.7) + np.log(0.4)) / 4
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_binary_and_regression_losses():
    p = np.array([[0.9], [0.2], [0.6]], "float32")
    y = np.array([1, -1, 0])
    expected = -(np.log(0.9) + np.log(0.4)) / 3
    np.testing.assert_allclose(float(MaskedLoss("binary")(y, p)), expected, rtol=1e-5)
    pred = np.array([[1.0], [5.0], [-1.0]], "float32")
    target = np.array([0.5, np.nan, 1.0], "float32")
    np.testing.assert_allclose(float(MaskedLoss("regression")(target, pred)), (0.25 + 4.0) / 3, rtol=1e-6)


def test_all_missing_gives_zero_loss():
    assert float(MaskedLoss("multiclass")(np.array([-1, -1]), np.full((2, 3), 1 / 3, "float32"))) == 0.0
    assert float(MaskedLoss("regression")(np.array([np.nan]), np.array([[3.0]], "float32"))) == 0.0


def test_metrics_skip_unlabelled_pairs():
    acc = MaskedMetric(keras.metrics.SparseCategoricalAccuracy(name="accuracy"), "multiclass")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1]], "float32")
    acc.update_state(np.array([0, 1, -1, -1]), probs)
    assert float(acc.result()) == 1.0  # the two unlabelled (wrong-if-counted) rows are skipped
    acc.update_state(np.array([1, -1, -1, -1]), probs)
    np.testing.assert_allclose(float(acc.result()), 2 / 3)
    mse = MaskedMetric(keras.metrics.MeanSquaredError(name="mse"), "regression")
    mse.update_state(np.array([1.0, np.nan]), np.array([[3.0], [100.0]], "float32"))
    assert float(mse.result()) == 4.0
    restored = MaskedMetric.from_config(acc.get_config())
    assert restored.name == "accuracy" and restored.kind == "multiclass"


def test_head_of_unlabelled_task_gets_exactly_zero_gradient():
    tasks = [Task("a", "multiclass", classes=3), Task("b", "regression")]
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    model = build_model(spec, backbones.mlp(5, widths=(8, 8)), tasks)
    losses = {t.key: t.make_loss() for t in tasks}
    x = np.random.default_rng(0).standard_normal((6, 5)).astype("float32")
    y = {"a": np.full(6, -1, "int32"), "b": np.linspace(-1, 1, 6).astype("float32")}
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss_a = losses["a"](y["a"], out["a"])
        total = loss_a + losses["b"](y["b"], out["b"])
    head_a = model.get_layer("head_a").trainable_weights
    head_b = model.get_layer("head_b").trainable_weights
    grads = tape.gradient(total, head_a + head_b)
    assert float(loss_a) == 0.0
    for g in grads[: len(head_a)]:
        assert np.all(np.asarray(g) == 0.0)
    assert any(np.any(np.asarray(g) != 0.0) for g in grads[len(head_a):])


def test_fit_with_missing_labels_leaves_unlabelled_head_unchanged():
    tasks = [Task("a", "multiclass", classes=3), Task("b", "binary")]
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    model = compile_model(build_model(spec, backbones.mlp(5, widths=(8, 8)), tasks))
    before = [np.array(w) for w in model.get_layer("head_b").weights]
    x = np.random.default_rng(1).standard_normal((16, 5)).astype("float32")
    logs = model.train_on_batch(
        x, {"a": np.arange(16) % 3, "b": np.full(16, -1)}, return_dict=True
    )
    after = [np.array(w) for w in model.get_layer("head_b").weights]
    assert logs["b_loss"] == 0.0
    for w0, w1 in zip(before, after):
        np.testing.assert_array_equal(w0, w1)


# === Labels a task cannot take stop training with an error naming the task ===

import pytest  # noqa: E402

BAD_LABELS = [
    ("binary", [0, 1, 2, -1], "Task `is cat` (binary): labels must be 0 or 1 (-1 for a missing "
                              "label). Received the label] [2]"),
    ("multiclass", [0, 2, 5, -1], "Task `is cat` (multiclass): labels must be class indices 0 "
                                  "to 2 (-1 for a missing label). Received the label] [5]"),
    ("multiclass", [0, 2, 1.5, -1], "Received the label] [1.5]"),
    ("multiclass", [0, -2, 1, 1], "Received the label] [-2]"),
    ("regression", [0.5, np.inf, np.nan, 1.0], "Task `is cat` (regression): labels must be finite "
                                               "numbers (NaN for a missing label). Received the "
                                               "label] [inf]"),
]


def _one_task_model(kind, jit_compile=False):
    task = Task("is cat", kind, classes=3 if kind == "multiclass" else None)
    model = build_model(TreeSpec.shared([task.name], 2), backbones.mlp(5, widths=(8, 8)), [task])
    model.compile(optimizer="adam", loss={task.key: task.make_loss()}, jit_compile=jit_compile)
    return model, task


@pytest.mark.parametrize("kind, labels, message", BAD_LABELS)
def test_fit_refuses_labels_the_task_cannot_take(kind, labels, message):
    model, task = _one_task_model(kind)
    x = np.zeros((8, 5), "float32")
    good = np.array([0, 1, -1, 0, 1, -1, 0, 1] if kind != "regression"
                    else [0.5, np.nan, 1.0, 0.0, 0.5, np.nan, 1.0, 0.0], "float32")
    model.fit(x, {task.key: good}, batch_size=4, epochs=1, verbose=0)  # missing labels pass
    bad = np.concatenate([good[:4], np.array(labels, "float32")])
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        model.fit(x, {task.key: bad}, batch_size=4, epochs=1, verbose=0)  # inside tf.function
    assert message in str(err.value)


def test_under_xla_a_bad_label_gives_a_nan_loss():
    # XLA drops assertions: the batch's loss becomes NaN (TerminateOnNaN's cue), the weights stay finite.
    model, task = _one_task_model("binary", jit_compile=True)
    x = np.zeros((8, 5), "float32")
    history = model.fit(x, {task.key: np.array([0, 1, -1, 1, 2, 0, 1, 0])}, batch_size=4,
                        epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)


MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_branch import Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
task = Task("is cat", "binary")
with strategy.scope():
    model = compile_model(build_model(TreeSpec.shared([task.name], 2),
                                      backbones.mlp(5, widths=(8, 8)), [task]))
x = np.zeros((16, 5), "float32")
model.fit(x, {task.key: np.array([0, 1, -1, 1] * 4)}, batch_size=8, epochs=1, verbose=0)
try:
    model.fit(x, {task.key: np.array([0, 1, -1, 1] * 3 + [0, 0, 2, 1])}, batch_size=8,
              epochs=1, verbose=0)
except tf.errors.InvalidArgumentError as err:
    print("REFUSED", *[line for line in str(err).splitlines() if "assertion failed" in line])
    sys.exit(0)
sys.exit("a label of 2 trained under MirroredStrategy")
"""


def test_bad_labels_are_refused_under_a_distribution_strategy(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout and "Task `is cat` (binary)" in proc.stdout, proc.stdout
