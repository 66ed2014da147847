"""SoftOrdering layer and SoftOrderingModel: the shared tests, the mixing maths,
the orderings, misuse, mixing-weight display, training and TFLite export."""


import keras
import numpy as np
import pytest

from keras_branch import Task
from keras_branch.data import planted_groups
from keras_branch.errors import KerasBranchError
from keras_branch.layers.conv_block import ConvBlock
from keras_branch.layers.soft_ordering import SoftOrdering, task_orders
from keras_branch.soft_ordering_model import (
    SoftOrderingModel,
    build_soft_ordering_model,
    fit_soft_ordering,
    format_mixing_weights,
    mixing_weights,
    normalize_ordering,
)
from keras_branch.compiling import compile_model
from keras_branch.plots import plot_mixing_weights
from keras_branch.results import TrainResult
from keras_branch.testing import check_tflite_parity, run_layer_test, run_model_test


def dense_pool(depth=3, units=6):
    return [keras.layers.Dense(units, activation="tanh") for _ in range(depth)]


def pool_configs(depth=3, units=6):
    return [keras.saving.serialize_keras_object(layer) for layer in dense_pool(depth, units)]


# === The shared layer test ===


@pytest.mark.parametrize("ordering", ["soft", "parallel", "permuted"])
def test_layer_passes_shared_layer_test_with_task_inputs(ordering):
    layer = run_layer_test(
        SoftOrdering,
        {"pool": pool_configs(), "num_tasks": 2, "ordering": ordering, "seed": 3},
        [(4, 6), (4, 6)],
        [(4, 6), (4, 6)],
    )
    pool_params = 3 * (6 * 6 + 6)
    logits = 2 * 3 * 3 if ordering == "soft" else 0
    assert layer.count_params() == pool_params + logits


def test_layer_passes_shared_layer_test_with_one_input_and_conv_pool():
    pool = [
        keras.saving.serialize_keras_object(keras.layers.Conv2D(4, 3, padding="same", activation="relu"))
        for _ in range(2)
    ]
    run_layer_test(SoftOrdering, {"pool": pool, "num_tasks": 3}, (4, 5, 5, 4), [(4, 5, 5, 4)] * 3)


def test_config_round_trips_and_is_registered():
    layer = SoftOrdering(dense_pool(), num_tasks=4, ordering="permuted", seed=9, name="so")
    config = layer.get_config()
    clone = SoftOrdering.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone.orders, layer.orders)
    assert keras.saving.get_registered_name(SoftOrdering) == "keras_branch>SoftOrdering"


# === The mixing maths ===


def reference_output(layer, xs, scales):
    """y_t^d = sum_j s[t, d, j] F_j(y_t^(d-1)), computed task by task in numpy."""
    outs = []
    for t, x in enumerate(xs):
        y = x
        for d in range(layer.depth):
            y = sum(scales[t, d, j] * np.asarray(layer.pool[j](y)) for j in range(layer.depth))
        outs.append(y)
    return outs


def test_soft_ordering_computes_the_papers_mixture():
    rng = np.random.default_rng(0)
    layer = SoftOrdering(dense_pool(), num_tasks=3)
    xs = [rng.standard_normal((5, 6)).astype("float32") for _ in range(3)]
    layer(xs)
    # Zero-initialised logits: a uniform mixture at the start.
    np.testing.assert_allclose(layer.mixing_weights(), np.full((3, 3, 3), 1 / 3), rtol=1e-6)
    logits = rng.standard_normal((3, 3, 3)).astype("float32")
    layer.logits.assign(logits)
    scales = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(layer.mixing_weights(), scales, rtol=1e-5)
    for got, want in zip(layer(xs), reference_output(layer, xs, scales)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # One tensor for every task is the same as that tensor repeated.
    for got, want in zip(layer(xs[0]), reference_output(layer, [xs[0]] * 3, scales)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ordering", ["parallel", "permuted"])
def test_fixed_orderings_apply_the_pool_in_their_order(ordering):
    rng = np.random.default_rng(1)
    layer = SoftOrdering(dense_pool(depth=4), num_tasks=3, ordering=ordering, seed=5)
    xs = [rng.standard_normal((5, 6)).astype("float32") for _ in range(3)]
    out = layer(xs)
    # Only the pool's weights: a fixed order has nothing else to learn.
    assert len(layer.trainable_weights) == 4 * 2
    for t in range(3):
        y = xs[t]
        for j in layer.orders[t]:
            y = np.asarray(layer.pool[j](y))
        np.testing.assert_allclose(np.asarray(out[t]), y, rtol=1e-5, atol=1e-6)
    scales = layer.mixing_weights()
    np.testing.assert_array_equal(scales, np.eye(4)[layer.orders])


def test_orders_parallel_and_permuted():
    np.testing.assert_array_equal(task_orders("parallel", 3, 4, seed=0), [[0, 1, 2, 3]] * 3)
    permuted = task_orders("permuted", 5, 4, seed=0)
    assert all(sorted(row) == [0, 1, 2, 3] for row in permuted.tolist())
    assert len({tuple(row) for row in permuted.tolist()}) > 1  # not all the same order
    np.testing.assert_array_equal(permuted, task_orders("permuted", 5, 4, seed=0))
    assert not np.array_equal(permuted, task_orders("permuted", 5, 4, seed=1))
    assert task_orders("soft", 5, 4, seed=0) is None


def test_soft_logits_get_gradients_and_fixed_orderings_have_none():
    rng = np.random.default_rng(2)
    inputs = [keras.Input((6,)), keras.Input((6,))]
    layer = SoftOrdering(dense_pool(), num_tasks=2, name="so")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    xs = [rng.standard_normal((16, 6)).astype("float32") for _ in range(2)]
    before = np.asarray(layer.logits).copy()
    model.train_on_batch(xs, [np.ones((16, 6), "float32")] * 2)
    assert np.abs(np.asarray(layer.logits) - before).min() > 0
    fixed = SoftOrdering(dense_pool(), num_tasks=2, ordering="parallel")
    fixed(xs)
    assert not hasattr(fixed, "logits")
    assert fixed.count_params() == 3 * 42


# === Misuse ===


def test_pool_layers_that_disagree_at_a_depth_are_refused_naming_them():
    pool = [keras.layers.Dense(6, name="six"), keras.layers.Dense(3, name="three")]
    pattern = (r"used at depth 1 must agree on the output shape.*On input \(None, 6\): "
               r"pool layer 0 \('six'\) -> \(None, 6\), pool layer 1 \('three'\) -> \(None, 3\)")
    with pytest.raises(ValueError, match=pattern):
        SoftOrdering(pool, num_tasks=2)([keras.Input((6,)), keras.Input((6,))])
    # Parallel ordering applies one layer per depth: a pool that narrows is fine.
    out = SoftOrdering([keras.layers.Dense(6), keras.layers.Dense(3)], num_tasks=2,
                       ordering="parallel")([keras.Input((6,)), keras.Input((6,))])
    assert [tuple(o.shape) for o in out] == [(None, 3), (None, 3)]
    # A conv without padding agrees with itself at depth 1 but not with a "same" one.
    conv = [keras.layers.Conv2D(4, 3, name="valid"), keras.layers.Conv2D(4, 3, padding="same")]
    with pytest.raises(ValueError, match=r"pool layer 0 \('valid'\) -> \(None, 6, 6, 4\)"):
        SoftOrdering(conv, num_tasks=1)(keras.Input((8, 8, 4)))


def test_conv_blocks_serve_every_depth_at_halving_resolutions():
    rng = np.random.default_rng(3)
    pool = [ConvBlock(4, depths=3) for _ in range(3)]
    layer = SoftOrdering(pool, num_tasks=2)
    xs = [rng.standard_normal((2, 16, 16, 4)).astype("float32") for _ in range(2)]
    out = layer(xs)
    assert layer.depth_shapes((None, 16, 16, 4)) == [
        (None, 16, 16, 4), (None, 8, 8, 4), (None, 4, 4, 4), (None, 2, 2, 4)]
    assert [tuple(o.shape) for o in out] == [(2, 2, 2, 4), (2, 2, 2, 4)]
    assert layer.compute_output_shape([(None, 16, 16, 4)] * 2) == [(None, 2, 2, 4)] * 2
    # One kernel per block, whatever the resolution; one batch norm per depth.
    assert [tuple(w.shape) for w in pool[0].trainable_weights] == [(3, 3, 4, 4)] + [(4,)] * 6
    # Inference: depth d's moving statistics normalise depth d's features.
    for d, norm in enumerate(pool[1].norms):
        norm.moving_mean.assign(np.full(4, float(d), "float32"))
    x = rng.standard_normal((1, 8, 8, 4)).astype("float32")
    conv = np.asarray(pool[1].conv(x))
    for d in range(3):
        want = np.maximum(conv - d, 0) / np.sqrt(1 + 1e-3)
        want = want.reshape(1, 4, 2, 4, 2, 4).max(axis=(2, 4))
        np.testing.assert_allclose(np.asarray(pool[1](x, depth=d)), want, rtol=1e-5, atol=1e-5)
    # The mixture of the paper, block by block, each at its depth.
    layer.logits.assign(rng.standard_normal((2, 3, 3)).astype("float32"))
    scales = layer.mixing_weights()
    for t in range(2):
        y = xs[t]
        for d in range(3):
            y = sum(scales[t, d, j] * np.asarray(pool[j](y, depth=d)) for j in range(3))
        np.testing.assert_allclose(np.asarray(layer(xs)[t]), y, rtol=1e-4, atol=1e-5)


def test_conv_block_round_trips_and_refuses_bad_settings():
    block = run_layer_test(ConvBlock, {"filters": 4, "depths": 2}, (2, 8, 8, 3), (2, 4, 4, 4))
    assert block.count_params() == 3 * 3 * 3 * 4 + 2 * 4 * 4
    with pytest.raises(ValueError, match=r"`depths` must be an int >= 1. Received: depths=0"):
        ConvBlock(4, depths=0)
    with pytest.raises(ValueError, match=r"serves depths 0..1. Received: depth=2"):
        block(np.zeros((1, 8, 8, 3), "float32"), depth=2)
    single = ConvBlock(4)  # one normalisation, whatever the depth
    x = np.random.default_rng(0).random((1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(single(x, depth=2)), np.asarray(single(x)))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"pool": [], "num_tasks": 2}, r"`pool` must be a non-empty list.*Received: pool=\[\]"),
        ({"pool": "dense", "num_tasks": 2}, "`pool` must be a non-empty list"),
        ({"pool": [42], "num_tasks": 2}, r"`pool\[0\]` must be a Keras layer.*Received: 42"),
        ({"num_tasks": 0}, r"`num_tasks` must be an int >= 1. Received: num_tasks=0"),
        ({"num_tasks": 2, "ordering": "random"}, r"`ordering` must be one of.*Received: ordering='random'"),
        ({"num_tasks": 2, "seed": "x"}, r"Received: seed='x'"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, pattern):
    kwargs = {"pool": dense_pool(), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        SoftOrdering(**kwargs)


def test_same_layer_twice_and_mismatched_task_inputs_are_refused():
    dense = keras.layers.Dense(6)
    with pytest.raises(ValueError, match="same layer object more than once"):
        SoftOrdering([dense, dense], num_tasks=2)
    with pytest.raises(ValueError, match=r"all task inputs must have one shape"):
        SoftOrdering(dense_pool(), num_tasks=2)([keras.Input((6,)), keras.Input((5,))])
    with pytest.raises(ValueError, match=r"num_tasks=3 but received 2 task input"):
        SoftOrdering(dense_pool(), num_tasks=3)([keras.Input((6,)), keras.Input((6,))])


# === The model ===

TASKS = [
    Task("reg", "regression"),
    Task("Japanese_(katakana)", "multiclass", classes=3),
    Task("bin", "binary"),
]
KEYS = {"reg": (None, 1), "Japanese__katakana_": (None, 3), "bin": (None, 1)}


def model_batch(shape=(10,), n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype("float32")
    y = {
        "reg": rng.standard_normal(n).astype("float32"),
        "Japanese__katakana_": rng.integers(-1, 3, n).astype("int32"),
        "bin": rng.integers(0, 2, n).astype("int32"),
    }
    return x, y


# The fixed orderings are the soft model with frozen mixing: two of them run with --runslow.
@pytest.mark.parametrize("ordering", ["soft", pytest.param("parallel", marks=pytest.mark.slow),
                                      pytest.param("permuted", marks=pytest.mark.slow), "single_task"])
def test_model_passes_shared_model_test(ordering):
    x, y = model_batch()
    model = run_model_test(
        lambda: build_soft_ordering_model(TASKS, (10,), ordering, depth=3, width=8, seed=1),
        x, y, KEYS, compile_fn=compile_model,
    )
    assert sorted(model.output_names) == sorted(KEYS)
    encoders = 3 * (10 * 8 + 8)
    heads = (8 + 1) * 3 + (8 + 1) + (8 + 1)
    pool = 3 * (8 * 8 + 8)
    expected = {
        "soft": encoders + pool + 3 * 3 * 3 + heads,
        "parallel": encoders + pool + heads,
        "permuted": encoders + pool + heads,
        "single_task": encoders + 3 * pool + heads,
    }[ordering]
    assert model.count_params() == expected


def test_image_model_passes_shared_model_test():
    x, y = model_batch(shape=(16, 16, 1), n=4)
    model = run_model_test(
        lambda: build_soft_ordering_model(TASKS, (16, 16, 1), "soft", depth=2, width=4),
        x, y, KEYS, compile_fn=compile_model,
    )
    # Encoder block 16 -> 8, pool depths 8 -> 4 -> 2: 2x2x4 features for every head.
    assert model.get_layer("head_bin").kernel.shape == (2 * 2 * 4, 1)


def test_omniglot_model_has_the_hand_counted_parameters():
    """Five alphabets at 32x32, 64 filters: 1% above the shared convnet4 (147,144)."""
    classes = [24, 22, 24, 40, 26]
    tasks = [Task(f"a{i}", "multiclass", classes=c) for i, c in enumerate(classes)]
    # conv without bias; per depth a batch norm: scale, shift, moving mean and variance
    block = lambda cin, depths: 3 * 3 * cin * 64 + depths * 4 * 64
    stem = block(1, 1)
    pool = 3 * block(64, 3)
    heads = sum((2 * 2 * 64 + 1) * c for c in classes)  # flattened 2x2x64 features
    for ordering, logits in (("permuted", 0), ("soft", 5 * 3 * 3)):
        model = build_soft_ordering_model(tasks, (32, 32, 1), ordering)
        assert model.count_params() == stem + pool + heads + logits == 148_680 + logits
        assert model.shared_params() == pool + logits
    # Parallel ordering uses a block at one depth only: convnet4, parameter for parameter.
    model = build_soft_ordering_model(tasks, (32, 32, 1), "parallel")
    assert model.count_params() == stem + 3 * block(64, 1) + heads == 147_144


def test_omniglot_model_flops_count_what_the_call_computes():
    from keras_branch.zoo.measure import count_flops

    classes = [24, 22, 24, 40, 26]
    tasks = [Task(f"a{i}", "multiclass", classes=c) for i, c in enumerate(classes)]
    conv = lambda cin, side: 2 * 3 * 3 * cin * 64 * side * side  # "same" conv, no bias
    heads = sum(2 * 256 * c + c for c in classes)
    stem = conv(1, 32)
    # Soft: depth 1 reads the one stem output (each pool block once), then T x D per depth.
    soft = stem + 3 * conv(64, 16) + 5 * 3 * conv(64, 8) + 5 * 3 * conv(64, 4) + heads
    parallel = stem + conv(64, 16) + conv(64, 8) + conv(64, 4) + heads  # convnet4's
    assert count_flops(build_soft_ordering_model(tasks, (32, 32, 1), "soft")) == soft
    assert count_flops(build_soft_ordering_model(tasks, (32, 32, 1), "parallel")) == parallel
    with pytest.raises(KerasBranchError, match=r"halve the resolution 5 times.*Use depth <= 3"):
        build_soft_ordering_model(tasks, (28, 28, 1), "soft", depth=4)


def one_label_batch(n=12, seed=0):
    """Each sample labelled for exactly one task (the other labels missing)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10)).astype("float32")
    owner = np.arange(n) % 3
    y = {
        "reg": np.where(owner == 0, rng.standard_normal(n), np.nan).astype("float32"),
        "Japanese__katakana_": np.where(owner == 1, rng.integers(0, 3, n), -1).astype("int32"),
        "bin": np.where(owner == 2, rng.integers(0, 2, n), -1).astype("int32"),
    }
    return x, y, owner


@pytest.mark.parametrize("ordering", ["soft", "permuted"])
def test_routed_training_gives_the_losses_and_gradients_of_the_full_model(ordering):
    x, y, owner = one_label_batch()
    model = build_soft_ordering_model(TASKS, (10,), ordering, depth=3, width=8, seed=2)
    layer = model.get_layer("soft_ordering")
    if ordering == "soft":
        layer.logits.assign(np.random.default_rng(1).standard_normal((3, 3, 3)).astype("float32"))
    full = model(x)
    routed = model.routed_call(x, np.eye(3, dtype="float32")[owner])
    for t, key in enumerate(model.output_names):
        index = [task.key for task in TASKS].index(key)
        np.testing.assert_allclose(np.asarray(routed[key])[owner == index],
                                   np.asarray(full[key])[owner == index], rtol=1e-5, atol=1e-6)
    # model.fit's steps with and without routing: one loss, one update.
    twin = SoftOrderingModel.from_config({**model.get_config(), "route_training": False})
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        compile_model(m, optimizer=keras.optimizers.SGD(0.1))
    traced = []
    real = model.routed_call
    model.routed_call = lambda *args, **kwargs: traced.append(1) or real(*args, **kwargs)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), twin.evaluate(x, y, verbose=0),
                               rtol=1e-5)
    assert traced  # the routed path is part of the traced step
    np.testing.assert_allclose(model.train_on_batch(x, y), twin.train_on_batch(x, y), rtol=1e-5)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_routing_falls_back_to_every_path_when_a_sample_has_two_labels():
    x, y = model_batch()  # every sample labelled for "reg" and "bin"
    model = build_soft_ordering_model(TASKS, (10,), "soft", depth=2, width=8, seed=2)
    assert model.route_training and model.get_config()["route_training"] is True
    twin = SoftOrderingModel.from_config({**model.get_config(), "route_training": False})
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        compile_model(m)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), twin.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    with pytest.raises(KerasBranchError, match="Received: route_training='yes'"):
        SoftOrderingModel(TASKS, (10,), pool=dense_pool(units=10), route_training="yes")


def test_model_ordering_names_and_bad_settings():
    assert normalize_ordering("soft-ordering") == "soft"
    assert normalize_ordering("single-task") == "single_task"
    with pytest.raises(KerasBranchError, match="Received: ordering='hierarchical'"):
        build_soft_ordering_model(TASKS, (10,), "hierarchical")
    with pytest.raises(KerasBranchError, match="Received: depth=0"):
        build_soft_ordering_model(TASKS, (10,), "soft", depth=0)
    with pytest.raises(KerasBranchError, match="Received: pooling='sum'"):
        SoftOrderingModel(TASKS, (10,), pool=dense_pool(units=10), pooling="sum")
    with pytest.raises(ValueError, match="must agree on the output shape"):
        SoftOrderingModel(TASKS, (10,), pool=[keras.layers.Dense(4), keras.layers.Dense(5)])


def test_mixing_weights_print_and_draw(tmp_path):
    model = build_soft_ordering_model(TASKS, (10,), "soft", depth=3, width=8)
    layer = model.get_layer("soft_ordering")
    logits = np.zeros((3, 3, 3), "float32")
    logits[1, 0, 2] = 5.0
    layer.logits.assign(logits)
    weights = mixing_weights(model)
    assert list(weights) == [t.name for t in TASKS]
    assert weights["reg"].shape == (3, 3)
    np.testing.assert_allclose(weights["reg"], 1 / 3, rtol=1e-6)
    top = np.exp(5) / (np.exp(5) + 2)
    assert weights["Japanese_(katakana)"][0, 2] == pytest.approx(top, rel=1e-5)
    text = format_mixing_weights(model)
    assert "task Japanese_(katakana) (rows: depth 1..3, columns: pool layer 1..3)" in text
    assert f"  depth 1  {(1 - top) / 2:.2f} {(1 - top) / 2:.2f} {top:.2f}" in text
    pytest.importorskip("matplotlib")
    path = plot_mixing_weights(model, tmp_path / "mixing.png")
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width > 300 and height > 150
    with pytest.raises(KerasBranchError, match="need a SoftOrderingModel"):
        mixing_weights(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


def test_fit_soft_ordering_trains_and_scores_every_task():
    data = planted_groups(group_sizes=(2, 1), num_train=256, num_validation=64, num_test=64, dim=20, seed=0)
    result = fit_soft_ordering(data, "soft", depth=2, width=16, epochs=2, batch_size=64, verbose=0)
    assert isinstance(result, TrainResult)
    assert len(result.history["loss"]) == 2
    assert set(result.metrics) == {"validation", "test"}
    assert set(result.metrics["test"]) == set(data.task_names)
    assert all(np.isfinite(m["mse"]) and m["n"] == 64 for m in result.metrics["test"].values())
    # Training moved the mixing away from uniform.
    assert np.abs(result.model.get_layer("soft_ordering").mixing_weights() - 0.5).max() > 0


# === Export ===




def test_soft_ordered_model_exports_to_tflite_with_float32_parity(tmp_path):
    model = build_soft_ordering_model(TASKS, (16, 16, 1), "soft", depth=3, width=4)
    rng = np.random.default_rng(0)
    layer = model.get_layer("soft_ordering")
    layer.logits.assign(rng.standard_normal((3, 3, 3)).astype("float32"))  # a learned-looking mixture
    x = rng.random((5, 16, 16, 1)).astype("float32")
    got = check_tflite_parity(model, x, tmp_path)
    assert got["Japanese__katakana_"].shape == (5, 3)


@pytest.mark.slow  # about a minute on 2 cores: the default run stays under 15 min
def test_soft_ordered_model_goes_through_export_model_and_its_cli(tmp_path, capsys):
    import json

    from keras_branch.cli import main
    from keras_branch.export import export_model

    data = planted_groups(seed=0, num_train=300)
    model = build_soft_ordering_model(data.tasks, data.input_shape, "soft", depth=3, width=8, seed=1)
    layer = model.get_layer("soft_ordering")
    layer.logits.assign(np.random.default_rng(0).standard_normal(layer.logits.shape).astype("float32"))
    result = export_model(model, tmp_path / "export", data=data, check=True)
    rows = result.parity.rows
    assert {row.format for row in rows} == {"saved_model", "tflite", "tflite-fp16", "tflite-int8"}
    assert len(rows) == 4 * 8 and all(np.isfinite(row.value) for row in rows)
    # float32 formats are exact up to float rounding; the quantized ones are measured
    # and reported (this untrained pool mixes through 3 depths, each requantized)
    assert all(row.passed for row in rows if row.format in ("saved_model", "tflite")), \
        result.parity.format_table()
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert manifest["model_class"] == "SoftOrderingModel" and manifest["spec"] is None
    assert manifest["signatures"][0] == "serving_default" and len(manifest["signatures"]) == 9
    # the CLI loads a saved soft-ordering model the same way
    model.save(tmp_path / "so.keras")
    assert main(["export", str(tmp_path / "so.keras"), "--out", str(tmp_path / "cli"),
                 "--formats", "tflite", "--data", "planted", "--check"]) == 0
    assert (tmp_path / "cli" / "model.tflite").is_file()
    # a subset needs a tree: the error says so
    with pytest.raises(KerasBranchError, match="BranchedModel"):
        export_model(model, tmp_path / "subset", formats="tflite", tasks=["g0_t0"])
    assert not (tmp_path / "subset").exists()


def test_soft_ordering_trains_under_a_strategy_in_mixed_precision_and_exports(tmp_path):
    """The tree path's options reach soft ordering: one `fit_model` serves both."""
    from keras_branch.distribute import as_float32
    from keras_branch.export import export_model

    data = planted_groups(group_sizes=(1, 1), num_train=128, num_validation=32, num_test=32)
    run = fit_soft_ordering(data, "soft", depth=2, width=8, epochs=1, verbose=0, log=None,
                            strategy="mirrored", mixed_precision="bfloat16")
    model = run.model
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert {layer.dtype_policy.name for layer in model.layers
            if layer.name.startswith("head_")} == {"float32"}
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.layers)
    plain = as_float32(model)
    assert type(plain) is SoftOrderingModel
    assert all(layer.dtype_policy.compute_dtype == "float32" for layer in plain.layers)
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    exported = export_model(model, tmp_path / "export", ["saved_model", "tflite"], data=data,
                            check=True)
    assert exported.passed
