"""Options of the soft mixture: drop-path on the mixing (`mixing_dropout`),
per-task scales in `ConvBlock`, and batch-norm recalibration around them."""

import keras
import numpy as np
import pytest

from keras_branch import Task
from keras_branch.batch_norm import recalibrate_batch_norm
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.layers.conv_block import ConvBlock
from keras_branch.layers.soft_ordering import SoftOrdering
from keras_branch.soft_ordering_model import SoftOrderingModel, build_soft_ordering_model

TASKS = [Task("a", "multiclass", classes=3), Task("b", "multiclass", classes=4)]


def images(n=12, seed=0):
    return np.random.default_rng(seed).random((n, 16, 16, 1)).astype("float32")


def twin_without_dropout(model):
    twin = SoftOrderingModel.from_config({**model.get_config(), "mixing_dropout": 0.0})
    twin.set_weights(model.get_weights())
    return twin


def test_mixing_dropout_drops_terms_in_training_only():
    model = build_soft_ordering_model(TASKS, (16, 16, 1), "soft", depth=2, width=4,
                                      mixing_dropout=0.5)
    layer = model.get_layer("soft_ordering")
    assert layer.mixing_dropout == 0.5 and model.mixing_dropout == 0.5
    layer.logits.assign(np.random.default_rng(1).standard_normal((2, 2, 2)).astype("float32"))
    x = images()
    twin = twin_without_dropout(model)
    # Inference: the full mixture, exactly the deterministic model's.
    for key in model.output_names:
        np.testing.assert_allclose(np.asarray(model(x)[key]), np.asarray(twin(x)[key]),
                                   rtol=1e-6, atol=1e-6)
    # Training: sample by sample, a different mixture at every call.
    first, second = model(x, training=True), model(x, training=True)
    assert np.abs(np.asarray(first["a"]) - np.asarray(second["a"])).max() > 1e-4


def test_dropped_scales_keep_a_term_and_sum_to_one():
    layer = SoftOrdering([keras.layers.Dense(4) for _ in range(3)], num_tasks=2,
                         mixing_dropout=0.6, seed=1)
    layer([keras.Input((4,)), keras.Input((4,))])
    scales = np.full((500, 3, 3), 1 / 3, "float32")
    dropped = np.asarray(layer._dropped(keras.ops.convert_to_tensor(scales)))
    np.testing.assert_allclose(dropped.sum(-1), 1.0, rtol=1e-5)
    kept = dropped > 0
    assert kept.any(-1).all()
    # Each term is dropped with probability 0.6, but all-dropped rows (0.6 ** 3)
    # are kept whole: 0.6 - 0.6 ** 3 = 0.384 of the terms go.
    assert 0.33 < 1 - kept.mean() < 0.44
    # Kept terms share the row in proportion to their scales.
    np.testing.assert_allclose(dropped[kept], (1 / kept.sum(-1, keepdims=True) * kept)[kept],
                               rtol=1e-5)


def test_mixing_dropout_round_trips_and_bad_values_are_refused(tmp_path):
    layer = SoftOrdering([keras.layers.Dense(4) for _ in range(2)], num_tasks=2,
                         mixing_dropout=0.25)
    config = layer.get_config()
    assert config["mixing_dropout"] == 0.25
    assert SoftOrdering.from_config(config).get_config() == config
    for bad in (-0.1, 1.0, "0.5", True):
        with pytest.raises(ValueError, match="`mixing_dropout` must be a float in"):
            SoftOrdering([keras.layers.Dense(4)], num_tasks=1, mixing_dropout=bad)
    model = build_soft_ordering_model(TASKS, (16, 16, 1), "soft", depth=2, width=4,
                                      mixing_dropout=0.2)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.mixing_dropout == 0.2
    assert loaded.get_layer("soft_ordering").mixing_dropout == 0.2
    x = images(4)
    np.testing.assert_allclose(np.asarray(loaded(x)["b"]), np.asarray(model(x)["b"]),
                               rtol=1e-5, atol=1e-6)
    # The fixed orderings have no mixture to drop from.
    parallel = build_soft_ordering_model(TASKS, (16, 16, 1), "parallel", depth=2, width=4,
                                         mixing_dropout=0.2)
    assert parallel.mixing_dropout == 0.0


def test_recalibration_measures_the_full_mixture_not_a_dropped_one():
    n = 24
    rng = np.random.default_rng(0)
    x = images(n)
    y = {"a": np.where(np.arange(n) % 2 == 0, rng.integers(0, 3, n), -1).astype("int64"),
         "b": np.where(np.arange(n) % 2 == 1, rng.integers(0, 4, n), -1).astype("int64")}
    data = MultiTaskData(TASKS, {"train": Split(x, y)}, name="img")
    model = build_soft_ordering_model(TASKS, (16, 16, 1), "soft", depth=2, width=4,
                                      mixing_dropout=0.5)
    model.get_layer("soft_ordering").logits.assign(
        rng.standard_normal((2, 2, 2)).astype("float32"))
    twin = twin_without_dropout(model)
    recalibrate_batch_norm(model, data, batch_size=8)
    recalibrate_batch_norm(twin, data, batch_size=8)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert model.get_layer("soft_ordering").mixing_dropout == 0.5  # restored


def test_conv_block_task_scales_apply_per_sample_and_round_trip():
    block = ConvBlock(4, depths=2, tasks=3)
    x = np.random.default_rng(0).random((3, 8, 8, 2)).astype("float32")
    routing = np.eye(3, dtype="float32")
    plain = np.asarray(block(x, depth=1, routing=routing))  # scales start at the identity
    twin = ConvBlock(4, depths=2)
    twin.build((None, None, None, 2))
    twin.conv.kernel.assign(block.conv.kernel)
    np.testing.assert_allclose(plain, np.asarray(twin(x, depth=1)), rtol=1e-6)
    assert block.count_params() == 2 * 9 * 4 + 2 * 4 * 4 + 2 * 2 * 3 * 4
    # Task 1 doubles its depth-1 features: only sample 1 changes, and by 2x
    # (ReLU and max-pooling commute with a positive scale).
    scale = np.zeros((2, 3, 4), "float32")
    scale[1, 1] = 1.0
    block.task_scale.assign(scale)
    out = np.asarray(block(x, depth=1, routing=routing))
    np.testing.assert_allclose(out[[0, 2]], plain[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(out[1], 2 * plain[1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(block(x, depth=0, routing=routing)),
                               np.asarray(twin(x, depth=0)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"call it with `routing` \[batch, 3\]"):
        block(x, depth=1)
    with pytest.raises(ValueError, match="`tasks` must be an int >= 0"):
        ConvBlock(4, tasks=-1)
    clone = ConvBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config() and clone.tasks == 3


@pytest.mark.parametrize("ordering", ["soft", "parallel", "permuted"])
def test_task_scales_in_a_model_route_like_the_full_call(ordering, tmp_path):
    model = build_soft_ordering_model(TASKS, (16, 16, 1), ordering, depth=2, width=4,
                                      task_scales=True)
    rng = np.random.default_rng(2)
    for weight in model.weights:
        if "task_s" in weight.path:
            weight.assign(rng.standard_normal(weight.shape).astype("float32"))
    blocks = [layer for layer in model.get_layer("soft_ordering").pool]
    assert all(block.tasks == 2 for block in blocks)
    x = images(6)
    full = model(x)
    for t, task in enumerate(TASKS):
        routing = np.zeros((6, 2), "float32")
        routing[:, t] = 1
        routed = model.routed_call(x, routing)
        np.testing.assert_allclose(np.asarray(routed[task.key]), np.asarray(full[task.key]),
                                   rtol=1e-5, atol=1e-6)
    # The tasks' paths differ even under parallel ordering.
    other = model.routed_call(x, np.tile([[1.0, 0.0]], (6, 1)).astype("float32"))
    assert np.abs(np.asarray(other["b"]) - np.asarray(full["b"])).max() > 1e-4
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)["b"]), np.asarray(full["b"]), rtol=1e-5,
                               atol=1e-6)


def test_recalibration_in_a_shuffled_order_sees_the_spread_between_tasks():
    """A split stored task after task: unshuffled batches hold one task each, and
    their variances miss the spread between the tasks that training batches mix."""
    n = 32
    x = np.concatenate([np.zeros((n // 2, 16, 16, 1)), np.ones((n // 2, 16, 16, 1))])
    x = (x + 0.1 * np.random.default_rng(0).random(x.shape)).astype("float32")
    owner = np.repeat([0, 1], n // 2)
    y = {"a": np.where(owner == 0, 1, -1).astype("int64"),
         "b": np.where(owner == 1, 2, -1).astype("int64")}
    data = MultiTaskData(TASKS, {"train": Split(x, y)}, name="img")
    model = build_soft_ordering_model(TASKS, (16, 16, 1), "parallel", depth=2, width=4)
    stem = model.get_layer("stem").norms[0]
    recalibrate_batch_norm(model, data, batch_size=8)
    ordered = np.asarray(stem.moving_variance).copy()
    recalibrate_batch_norm(model, data, batch_size=8, shuffle_seed=3)
    shuffled = np.asarray(stem.moving_variance).copy()
    assert (shuffled > 2 * ordered).all()
    # By hand: the same permutation, batch by batch.
    order = np.random.default_rng(3).permutation(n)
    conv = np.stack([np.asarray(model.get_layer("stem").conv(x[order][i:i + 8])).var(axis=(0, 1, 2))
                     for i in range(0, n, 8)])
    np.testing.assert_allclose(shuffled, conv.mean(axis=0), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="shuffle_seed"):
        recalibrate_batch_norm(model, data, shuffle_seed="x")
