"""released_custom_gradients: models trained inside are freed, older registry entries stay."""

import gc

import keras
import numpy as np

from keras_branch.gradient_registry import _registry, released_custom_gradients


def _custom_gradients() -> set[str]:
    return {k for k in _registry() if k.startswith("CustomGradient-")}


def _fit_small_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.ones((8, 3), "float32"), np.arange(8) % 2, epochs=1, verbose=0)
    return model


def test_a_model_trained_inside_is_collected_and_older_entries_stay():
    assert _registry() is not None, "TensorFlow's gradient registry moved: update _registry"
    kept = _fit_small_model()  # trained outside: whatever it registered must survive
    before = _custom_gradients()
    with released_custom_gradients():
        _fit_small_model()
        assert _custom_gradients() >= before
    assert _custom_gradients() == before
    # The model trained before the block still trains (its traced step is intact),
    # and so does one trained inside the block and kept.
    x, y = np.ones((8, 3), "float32"), np.arange(8) % 2
    assert np.isfinite(kept.train_on_batch(x, y))
    with released_custom_gradients():
        inside = _fit_small_model()
    assert np.isfinite(inside.train_on_batch(x, y))


def test_models_trained_and_dropped_in_the_block_leave_nothing_behind():
    # Under TF 2.21 each fit of this model outside the block leaves its traced
    # step's graph alive (5,794 more live objects per fit); inside, the count
    # must come back after every fit. 500 is a tenth of one leaked graph.
    counts = []
    for _ in range(4):
        with released_custom_gradients():
            _fit_small_model()
        gc.collect()
        counts.append(len(gc.get_objects()))
    assert counts[-1] - counts[0] < 500, counts
