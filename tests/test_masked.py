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
