"""BranchPoint: the shared layer test, routing maths, seeding, gradients, misuse,
and the temperature-annealing callback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch.callbacks import TemperatureScheduler, find_branch_points, sqrt_decay
from keras_branch.layers.branch_point import BranchPoint, UsageBalance
from keras_branch.testing import run_layer_test


def parents(num, shape=(5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype("float32") for _ in range(num)]


def built(num_children, num_parents, shape=(3,), **kwargs):
    layer = BranchPoint(num_children, num_parents, **kwargs)
    layer.build([(None, *shape)] * num_parents)
    return layer


# === The shared layer test ===


@pytest.mark.parametrize(
    "children,parents_,shape,hard,per_example",
    [
        (3, 2, (4, 5), False, False),
        (2, 3, (4, 6, 6, 2), True, False),
        (2, 3, (4, 6, 6, 2), False, True),
        (1, 1, (4, 5), False, False),
        (4, 1, (4, 3), False, True),
    ],
    ids=["3x2", "2x3-images-hard", "2x3-images-per-example", "1x1", "4x1-per-example"],
)
def test_passes_shared_layer_test(children, parents_, shape, hard, per_example):
    layer = run_layer_test(
        BranchPoint,
        {"num_children": children, "num_parents": parents_, "hard": hard, "seed": 7,
         "per_example": per_example},
        [shape] * parents_,
        [shape] * children,
    )
    assert tuple(layer.logits.shape) == (children, parents_)
    # With one parent there is nothing to learn: no trainable weights.
    assert len(layer.trainable_weights) == (1 if parents_ > 1 else 0)


def test_config_round_trips_every_argument():
    layer = BranchPoint(
        4, 3, temperature=2.5, hard=True, seed=11, logit_scale=10.0, per_example=True,
        balance=0.2, shared_noise=True, logits_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1),
        name="bp",
    )
    config = layer.get_config()
    fields = ("num_children", "num_parents", "temperature", "hard", "seed", "logit_scale",
              "per_example", "balance", "shared_noise")
    assert {k: config[k] for k in fields} == {
        "num_children": 4, "num_parents": 3, "temperature": 2.5, "hard": True, "seed": 11,
        "logit_scale": 10.0, "per_example": True, "balance": 0.2, "shared_noise": True,
    }
    clone = BranchPoint.from_config(config)
    assert clone.get_config() == config
    # The registered name lets `.keras` files find the class under safe mode.
    assert keras.saving.get_registered_name(BranchPoint) == "keras_branch>BranchPoint"


@pytest.mark.parametrize("batch_size", [None, 5])
def test_shared_noise_gives_children_with_equal_logits_equal_samples(batch_size):
    layer = BranchPoint(num_children=4, num_parents=3, seed=3, shared_noise=True)
    layer.build([(None, 2)] * 3)
    layer.logits.assign(np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], "float32"))
    d = np.asarray(layer.routing(training=True, batch_size=batch_size))
    rows = d if batch_size is None else d[2]
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[0], rows[3])
    assert not np.allclose(rows[0], rows[2])  # other logits, other sample from the same draw
    # The draw: softmax((log_softmax(theta_j) + g) / tau) with one g for every child, so
    # child 2's sample follows from child 0's: g + const = tau * log(d_0) for uniform logits.
    g = np.log(rows[0])
    logp2 = np.log(np.exp([1.0, 0, 0]) / np.exp([1.0, 0, 0]).sum())
    want = np.exp(logp2 + g) / np.exp(logp2 + g).sum()
    np.testing.assert_allclose(rows[2], want, rtol=1e-5)
    independent = BranchPoint(num_children=4, num_parents=3, seed=3)
    independent.build([(None, 2)] * 3)
    d = np.asarray(independent.routing(training=True))
    assert not np.allclose(d[0], d[1])


def test_usage_balance_is_zero_for_uniform_use_and_matches_a_hand_count():
    balance = UsageBalance(strength=2.0, scale=1.0)
    assert float(balance(np.zeros((3, 2), "float32"))) == pytest.approx(0.0, abs=1e-7)
    # Both children: softmax([0, ln 3]) = [1/4, 3/4], so the mean use is [1/4, 3/4].
    logits = np.array([[0.0, np.log(3.0)]] * 2, "float32")
    entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert float(balance(logits)) == pytest.approx(2.0 * (np.log(2.0) - entropy), rel=1e-5)
    # Children that disagree use both parents evenly: no penalty, however decided each is.
    assert float(balance(np.array([[9.0, 0.0], [0.0, 9.0]], "float32"))) == pytest.approx(0.0, abs=1e-6)
    # The scale multiplies the logits first.
    assert float(UsageBalance(2.0, scale=np.log(3.0))(np.array([[0.0, 1.0]] * 2, "float32"))) == (
        pytest.approx(float(balance(logits)), rel=1e-5))


def test_balance_adds_its_penalty_to_the_losses_and_survives_saving(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    layer = BranchPoint(num_children=2, num_parents=2, balance=0.5, logit_scale=3.0, name="bp")
    model = keras.Model([a, b], layer([a, b]))
    layer.logits.assign([[1.0, 0.0], [2.0, 0.0]])
    expected = float(UsageBalance(0.5, 3.0)(layer.logits))
    assert expected > 0 and [float(v) for v in model.losses] == pytest.approx([expected], rel=1e-6)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert [float(v) for v in restored.losses] == pytest.approx([expected], rel=1e-6)
    assert BranchPoint(num_children=2, num_parents=2).get_config()["balance"] == 0.0


# === Misuse ===


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"num_children": 0, "num_parents": 2}, "num_children"),
        ({"num_children": 2, "num_parents": 0}, "num_parents"),
        ({"num_children": -1, "num_parents": 2}, "num_children"),
        ({"num_children": 2.0, "num_parents": 2}, "num_children"),
        ({"num_children": True, "num_parents": 2}, "num_children"),
        ({"num_children": 2, "num_parents": 2, "temperature": 0.0}, "temperature"),
        ({"num_children": 2, "num_parents": 2, "temperature": float("inf")}, "temperature"),
        ({"num_children": 2, "num_parents": 2, "hard": "yes"}, "hard"),
        ({"num_children": 2, "num_parents": 2, "seed": 1.5}, "seed"),
        ({"num_children": 2, "num_parents": 2, "logit_scale": -1.0}, "logit_scale"),
        ({"num_children": 2, "num_parents": 2, "per_example": 1}, "per_example"),
        ({"num_children": 2, "num_parents": 2, "balance": -0.1}, "balance"),
        ({"num_children": 2, "num_parents": 2, "shared_noise": "yes"}, "shared_noise"),
        ({"num_children": 2, "num_parents": 2, "balance": float("nan")}, "balance"),
    ],
)
def test_invalid_arguments_name_the_field_and_value(kwargs, field):
    with pytest.raises(ValueError, match=rf"`{field}`.*Received: {field}="):
        BranchPoint(**kwargs)


def test_parents_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match=r"all parents must have one shape.*parent 1 has shape \(None, 5\)"):
        BranchPoint(2, 2)([keras.Input((4,)), keras.Input((5,))])
    with pytest.raises(ValueError, match="one shape"):
        BranchPoint(2, 2)([keras.Input((4, 4, 1)), keras.Input((4, 4))])


def test_wrong_number_of_parents_or_a_bare_tensor_is_refused():
    with pytest.raises(ValueError, match=r"num_parents=3 but received 2 parent"):
        BranchPoint(2, 3)([keras.Input((4,)), keras.Input((4,))])
    with pytest.raises(ValueError, match="takes a list of 1 parent"):
        BranchPoint(2, 1)(keras.Input((4,)))


# === Inference: an exact selection ===


def test_inference_output_is_exactly_the_argmax_parent():
    layer = built(4, 3, shape=(3,))
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.5], [-2.0, 1.0, 0.9]], "float32")
    layer.logits.assign(logits)
    xs = parents(3)
    for training in (False, None):
        out = layer(xs, training=training)
        assert len(out) == 4
        for j, child in enumerate(out):
            np.testing.assert_array_equal(np.asarray(child), xs[int(np.argmax(logits[j]))])
    # Exact even when unselected parents hold inf/NaN (a select, not 0 * x).
    layer.logits.assign(np.array([[5.0, 0, 0]] * 4, "float32"))
    xs_bad = [xs[0], np.full_like(xs[1], np.nan), np.full_like(xs[2], np.inf)]
    for child in layer(xs_bad, training=False):
        np.testing.assert_array_equal(np.asarray(child), xs[0])


def test_compiled_inference_follows_the_logits_after_tracing():
    a, b = keras.Input((3,)), keras.Input((3,))
    layer = BranchPoint(1, 2, name="bp")
    model = keras.Model([a, b], layer([a, b]))
    xs = parents(2)
    layer.logits.assign([[1.0, 0.0]])
    np.testing.assert_array_equal(model.predict(xs, verbose=0), xs[0])
    # The graph traced above reads the variable, so a new choice takes effect.
    layer.logits.assign([[0.0, 1.0]])
    np.testing.assert_array_equal(model.predict(xs, verbose=0), xs[1])


# === Training: Gumbel-softmax samples ===


def test_training_output_is_the_sampled_mixture():
    layer = built(3, 2, seed=3)
    layer.logits.assign(np.array([[0.5, -0.5], [0.0, 0.0], [2.0, 1.0]], "float32"))
    xs = parents(2)
    twin = built(3, 2, seed=3)
    twin.logits.assign(layer.logits)
    d = np.asarray(twin.routing(training=True))  # the same draw the layer makes next
    out = layer(xs, training=True)
    np.testing.assert_allclose(d.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(d > 0) and np.all(d < 1)
    for j, child in enumerate(out):
        np.testing.assert_allclose(np.asarray(child), d[j, 0] * xs[0] + d[j, 1] * xs[1], atol=1e-6)


def test_per_example_samples_mix_every_example_with_its_own_draw():
    layer = built(2, 3, seed=8, per_example=True)
    layer.logits.assign(np.array([[0.3, 0.0, -0.3], [1.0, 0.5, 0.0]], "float32"))
    xs = parents(3, shape=(6, 4))
    twin = built(2, 3, seed=8, per_example=True)
    twin.logits.assign(layer.logits)
    d = np.asarray(twin.routing(training=True, batch_size=6))  # the layer's next draw
    assert d.shape == (6, 2, 3)
    np.testing.assert_allclose(d.sum(axis=-1), 1.0, rtol=1e-6)
    assert not np.allclose(d[0], d[1])  # examples get different draws
    out = layer(xs, training=True)
    for j, child in enumerate(out):
        want = sum(d[:, j, i : i + 1] * xs[i] for i in range(3))
        np.testing.assert_allclose(np.asarray(child), want, atol=1e-6)
    # Inference is the same exact selection as without per-example draws.
    for j, child in enumerate(layer(xs, training=False)):
        np.testing.assert_array_equal(np.asarray(child), xs[int(np.argmax(np.asarray(layer.logits)[j]))])


def test_fixed_seed_gives_identical_samples_and_other_seeds_do_not():
    def draws(seed, n=5):
        layer = built(3, 4, seed=seed)
        layer.logits.assign(np.arange(12, dtype="float32").reshape(3, 4) / 10)
        return [np.asarray(layer.routing(training=True)) for _ in range(n)]

    first, second, other = draws(42), draws(42), draws(43)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # Successive draws of one layer differ (the generator advances).
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])
    # And the layer's outputs repeat too, not only its routing matrices.
    xs = parents(4)
    l1, l2 = built(3, 4, seed=5), built(3, 4, seed=5)
    for _ in range(3):
        for c1, c2 in zip(l1(xs, training=True), l2(xs, training=True)):
            np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))


def test_samples_follow_the_categorical_distribution():
    # Gumbel-max: the argmax of a sample is distributed as softmax(logits).
    probs = np.array([0.6, 0.3, 0.1])
    layer = built(6000, 3, seed=0, temperature=1.0)
    layer.logits.assign(np.tile(np.log(probs).astype("float32"), (6000, 1)))
    winners = np.argmax(np.asarray(layer.routing(training=True)), axis=1)
    freq = np.bincount(winners, minlength=3) / 6000
    np.testing.assert_allclose(freq, probs, atol=0.02)


def test_lower_temperature_gives_harder_samples():
    def mean_max(tau):
        layer = built(2000, 4, seed=1, temperature=tau)
        return float(np.asarray(layer.routing(training=True)).max(axis=1).mean())

    cold, warm = mean_max(0.1), mean_max(10.0)
    assert cold > 0.9
    assert warm < 0.4
    # The temperature is a variable: assigning it changes the next samples.
    layer = built(2000, 4, seed=1, temperature=10.0)
    layer.temperature.assign(0.1)
    assert float(np.asarray(layer.routing(training=True)).max(axis=1).mean()) > 0.9


def test_hard_samples_are_one_hot_forward_with_soft_gradients():
    layer = built(3, 4, seed=2, hard=True)
    layer.logits.assign(np.random.default_rng(0).standard_normal((3, 4)).astype("float32"))
    xs = parents(4)
    with tf.GradientTape() as tape:
        d = layer.routing(training=True)
        loss = tf.reduce_sum(d * tf.constant(np.arange(12, dtype="float32").reshape(3, 4)))
    d = np.asarray(d)
    np.testing.assert_allclose(np.sort(d, axis=1), [[0, 0, 0, 1]] * 3, atol=1e-6)
    grad = np.asarray(tape.gradient(loss, layer.logits))
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    out = layer(xs, training=True)
    assert len(out) == 3


def test_gradients_reach_the_logits_in_training_only():
    layer = built(2, 3, seed=4)
    xs = [tf.constant(x) for x in parents(3)]
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(c - 1.0)) for c in layer(xs, training=True))
    grad = np.asarray(tape.gradient(loss, layer.logits))
    assert np.all(np.isfinite(grad)) and np.abs(grad).min() > 0
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(c - 1.0)) for c in layer(xs, training=False))
    assert tape.gradient(loss, layer.logits) is None  # argmax: no gradient path
    # Warm-up mode: uniform mixing, no gradient to the logits.
    layer.uniform_mixing.assign(1.0)
    np.testing.assert_allclose(np.asarray(layer.routing(training=True)), np.full((2, 3), 1 / 3), rtol=1e-6)


def test_fit_moves_the_logits_toward_the_useful_parent():
    # Child must reproduce parent 1; parents 0 and 2 are noise.
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((256, 4)).astype("float32") for _ in range(3)]
    inputs = [keras.Input((4,)) for _ in range(3)]
    layer = BranchPoint(1, 3, seed=0, name="bp")
    model = keras.Model(inputs, layer(inputs)[0])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = np.asarray(layer.logits).copy()
    model.fit(xs, xs[1], epochs=10, batch_size=32, verbose=0)
    after = np.asarray(layer.logits)
    assert not np.array_equal(before, after)
    assert int(np.argmax(after[0])) == 1
    np.testing.assert_array_equal(model.predict(xs, verbose=0), xs[1])


def test_logit_scale_multiplies_the_logits():
    layer = built(2, 2, logit_scale=10.0)
    layer.logits.assign([[0.1, 0.0], [0.0, 0.2]])
    np.testing.assert_allclose(np.asarray(layer.scaled_logits()), [[1.0, 0.0], [0.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(layer.probabilities())[0], [np.exp(1) / (np.exp(1) + 1), 1 / (np.exp(1) + 1)], rtol=1e-5
    )
    np.testing.assert_array_equal(layer.parent_indices(), [0, 1])


# === Temperature annealing ===


def small_supernet_model():
    inputs = [keras.Input((3,)) for _ in range(2)]
    bp1 = BranchPoint(2, 2, seed=0, name="bp1")
    children = bp1(inputs)
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)], name="inner")
    bp2 = BranchPoint(1, 2, seed=1, name="bp2")
    out = bp2([inner(children[0]), children[1]])[0]
    return keras.Model(inputs, out), (bp1, bp2)


def test_sqrt_decay_is_the_public_schedule():
    assert sqrt_decay(0, 40) == pytest.approx(2.0)
    assert sqrt_decay(3, 40) == pytest.approx(1.0)
    assert sqrt_decay(99, 20) == pytest.approx(0.1)


def test_scheduler_anneals_every_branch_point_with_warmup():
    model, (bp1, bp2) = small_supernet_model()
    assert find_branch_points(model) == [bp1, bp2]
    model.compile(optimizer="adam", loss="mse")
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append((float(bp1.temperature), float(bp2.temperature), float(bp1.uniform_mixing)))

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((16, 3)).astype("float32") for _ in range(2)]
    scheduler = TemperatureScheduler("sqrt_decay", warmup_epochs=2)
    history = model.fit(xs, xs[0], epochs=6, batch_size=8, verbose=0, callbacks=[scheduler, Probe()])
    expected = [(6 / 20) / np.sqrt(e + 1) for e in (0, 0, 0, 1, 2, 3)]
    np.testing.assert_allclose([s[0] for s in seen], expected, rtol=1e-6)
    np.testing.assert_allclose([s[1] for s in seen], expected, rtol=1e-6)
    assert [s[2] for s in seen] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(history.history["temperature"], expected, rtol=1e-6)
    assert float(bp1.uniform_mixing) == 0.0  # sampling again after fit


def test_scheduler_accepts_custom_callables_and_constants():
    model, (bp1, _) = small_supernet_model()
    model.compile(optimizer="adam", loss="mse")
    xs = [np.ones((4, 3), "float32")] * 2
    one_arg = TemperatureScheduler(lambda epoch: 5.0 / (epoch + 1))
    model.fit(xs, xs[0], epochs=3, verbose=0, callbacks=[one_arg])
    assert [t for _, t, _ in one_arg.history] == pytest.approx([5.0, 2.5, 5.0 / 3])
    two_arg = TemperatureScheduler(lambda epoch, tau: tau * 0.5)
    model.fit(xs, xs[0], epochs=3, verbose=0, callbacks=[two_arg])
    # Starts from the temperature the layers hold (5/3), halving each epoch.
    assert [t for _, t, _ in two_arg.history] == pytest.approx([5 / 6, 5 / 12, 5 / 24])
    constant = TemperatureScheduler("constant", temperature=0.7)
    model.fit(xs, xs[0], epochs=2, verbose=0, callbacks=[constant])
    assert float(bp1.temperature) == pytest.approx(0.7)


def test_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"`schedule` must be one of .*Received: schedule='cosine'"):
        TemperatureScheduler("cosine")
    with pytest.raises(ValueError, match="Received: warmup_epochs=-1"):
        TemperatureScheduler(warmup_epochs=-1)
    with pytest.raises(ValueError, match="Received: min_temperature=0"):
        TemperatureScheduler(min_temperature=0)
    model, _ = small_supernet_model()
    model.compile(optimizer="adam", loss="mse")
    xs = [np.ones((4, 3), "float32")] * 2
    with pytest.raises(ValueError, match="returned -1.0 at epoch 0"):
        model.fit(xs, xs[0], epochs=1, verbose=0, callbacks=[TemperatureScheduler(lambda e: -1.0)])
