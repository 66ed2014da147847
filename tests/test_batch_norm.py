"""recalibrate_batch_norm: moving statistics replaced by those of one clean pass."""

import keras
import numpy as np
import pytest

from keras_branch import Task, TreeSpec, backbones, build_model
from keras_branch.batch_norm import batch_norm_layers, recalibrate_batch_norm
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.soft_ordering_model import build_soft_ordering_model


def image_data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1)).astype("float32")
    y = {"a": rng.integers(0, 3, n).astype("int64")}
    return MultiTaskData([Task("a", "multiclass", classes=3)], {"train": Split(x, y)}, name="img")


def test_moving_statistics_become_the_average_of_the_batch_statistics():
    data = image_data()
    model = build_model(TreeSpec.shared(["a"], 2), backbones.convnet4((8, 8, 1), 4, num_stages=2),
                        data.tasks)
    layers = batch_norm_layers(model)
    assert len(layers) == 2
    for layer in layers:  # statistics far from the data's
        layer.moving_mean.assign(np.full(4, 7.0, "float32"))
        layer.moving_variance.assign(np.full(4, 9.0, "float32"))
    weights = [w.copy() for w in model.get_weights() if w.ndim > 1]
    assert recalibrate_batch_norm(model, data, batch_size=8) == 2
    # By hand: the first block's conv output, per batch (8, 8, 4 samples), averaged.
    conv = model.get_layer("stage1_block0").layers[0]
    x = data.split("train").x
    means, variances = [], []
    for start in (0, 8, 16):
        out = np.asarray(conv(x[start:start + 8]))
        means.append(out.mean(axis=(0, 1, 2)))
        variances.append(out.var(axis=(0, 1, 2)))
    np.testing.assert_allclose(layers[0].moving_mean, np.mean(means, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layers[0].moving_variance, np.mean(variances, axis=0),
                               rtol=1e-4, atol=1e-6)
    assert all(layer.momentum == 0.9 for layer in layers)  # restored
    assert all(np.array_equal(a, b) for a, b in
               zip(weights, [w for w in model.get_weights() if w.ndim > 1]))


def test_conv_block_norms_of_a_soft_ordered_pool_are_found_and_recalibrated():
    data = image_data()
    model = build_soft_ordering_model(data.tasks, (8, 8, 1), "soft", depth=2, width=4)
    layers = batch_norm_layers(model)
    assert len(layers) == 1 + 2 * 2  # the stem, and two depths of two pool blocks
    before = [np.asarray(layer.moving_mean).copy() for layer in layers]
    assert recalibrate_batch_norm(model, data, batch_size=10) == 5
    assert all(not np.allclose(a, layer.moving_mean) for a, layer in zip(before, layers))
    with pytest.raises(ValueError, match="batch_size=1"):
        recalibrate_batch_norm(model, data, batch_size=1)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.tasks = data.tasks
    assert recalibrate_batch_norm(plain, data) == 0
