"""Image augmentation (keras_branch.augment): config validation, geometry, determinism, training."""

import numpy as np
import pytest
import tensorflow as tf

from keras_branch import TreeSpec, backbones
from keras_branch.augment import Augment, check_config, make_augment
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.errors import DataError, KerasBranchError
from keras_branch.tasks import Task
from keras_branch.training import fit_spec

CONFIG = {"shift": 0.1, "rotation": 10, "zoom": 0.1}


def _dots(n=4, size=32):
    x = np.zeros((n, size, size, 1), "float32")
    x[:, 10, 12, 0] = 1.0
    return x


def test_check_config_accepts_json_values():
    assert check_config({"shift": 0.1, "rotation": 10, "zoom": 0.1, "shear": 5, "fill": 0}) == {
        "shift": 0.1, "rotation": 10.0, "zoom": 0.1, "shear": 5.0, "fill": 0.0}
    assert check_config({}) == {}
    assert check_config({"rotation": 180}) == {"rotation": 180.0}


@pytest.mark.parametrize("config, words", [
    ({"shfit": 0.1}, ["'shfit'", "shift"]),
    ({"shift": -0.1}, ["shift", "-0.1"]),
    ({"shift": 1.0}, ["shift", "1.0"]),
    ({"zoom": 1.5}, ["zoom", "1.5"]),
    ({"rotation": 181}, ["rotation", "181"]),
    ({"shear": 90}, ["shear", "90"]),
    ({"rotation": "10"}, ["rotation", "'10'"]),
    ({"rotation": True}, ["rotation", "True"]),
    ({"zoom": float("nan")}, ["zoom", "nan"]),
    ([0.1], ["augment", "[0.1]"]),
])
def test_bad_config_names_key_and_value(config, words):
    with pytest.raises(DataError) as err:
        check_config(config)
    assert isinstance(err.value, KerasBranchError)
    for word in words:
        assert word in str(err.value)


def test_make_augment():
    assert make_augment(None) is None
    assert make_augment({"shift": 0}) is None  # nothing switched on
    aug = make_augment(CONFIG, seed=3)
    assert isinstance(aug, Augment) and aug.seed == 3 and aug.get_config() == check_config(CONFIG)
    fn = lambda x: x  # noqa: E731
    assert make_augment(fn) is fn
    with pytest.raises(DataError, match="augment"):
        make_augment(0.1)
    with pytest.raises(DataError, match="seed"):
        Augment(CONFIG, seed="0")


def test_shift_moves_pixels_by_the_drawn_offsets():
    x = _dots()
    aug = Augment({"shift": 0.2}, seed=0)
    t = aug.transforms(tf.constant(x)).numpy()
    y = aug(x).numpy()
    for i in range(len(x)):
        # The transform maps output to input pixels: in = out + (a2, b2).
        row, col = np.unravel_index(np.argmax(y[i, ..., 0]), y.shape[1:3])
        assert abs(row - (10 - t[i, 5])) <= 1 and abs(col - (12 - t[i, 2])) <= 1
        assert np.abs(t[i, [2, 5]]).max() <= 0.2 * 32 + 1e-4
    assert not np.array_equal(y, x)


def test_rotation_and_zoom_keep_shape_dtype_and_mass():
    rng = np.random.default_rng(0)
    x = np.zeros((8, 28, 28, 1), "float32")
    x[:, 10:18, 10:18] = rng.random((8, 8, 8, 1))
    y = Augment({"rotation": 30, "zoom": 0.1, "shear": 5}, seed=1)(x).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    # A blob in the middle stays inside the image: its mass changes by the zoom only.
    ratio = y.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
    assert np.all(ratio > 0.75) and np.all(ratio < 1.3)


def test_zero_config_is_identity_and_vectors_are_refused():
    x = _dots()
    np.testing.assert_array_equal(Augment({"rotation": 0}, 0)(x).numpy(), x)
    with pytest.raises(DataError, match="batch"):
        Augment(CONFIG, 0)(np.zeros((4, 10), "float32"))


def test_deterministic_per_seed_and_batch():
    x = np.random.default_rng(0).random((16, 32, 32, 1)).astype("float32")
    a = Augment(CONFIG, seed=0)
    np.testing.assert_array_equal(a(x).numpy(), Augment(CONFIG, seed=0)(x).numpy())
    assert not np.array_equal(a(x).numpy(), Augment(CONFIG, seed=1)(x).numpy())
    # Inside tf.data with parallel maps, same as eager.
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).map(a, num_parallel_calls=4)
    got = np.concatenate([b.numpy() for b in ds])
    want = np.concatenate([a(x[i:i + 4]).numpy() for i in range(0, 16, 4)])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Different images of one batch get different transforms.
    t = a.transforms(tf.constant(x)).numpy()
    assert len({tuple(np.round(r, 5)) for r in t}) == len(x)


def _tiny_images(n=64, size=12, seed=0):
    rng = np.random.default_rng(seed)
    tasks = [Task("a", "multiclass", classes=3), Task("b", "multiclass", classes=2)]
    splits = {}
    for split in ("train", "validation", "test"):
        x = rng.random((n, size, size, 1)).astype("float32")
        y = {"a": rng.integers(0, 3, n).astype("int32"), "b": rng.integers(0, 2, n).astype("int32")}
        splits[split] = Split(x, y)
    return MultiTaskData(tasks, splits, name="tiny")


def test_epoch_dataset_with_augment_is_reproducible():
    data = _tiny_images()
    aug = Augment(CONFIG, seed=0)
    first = [b[0].numpy() for b in data.epoch_dataset("train", 16, seed=0, augment=aug)]
    again = [b[0].numpy() for b in data.epoch_dataset("train", 16, seed=0, augment=aug)]
    plain = [b[0].numpy() for b in data.epoch_dataset("train", 16, seed=0)]
    for a, b, c in zip(first, again, plain):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_fit_spec_takes_an_augment_dict_and_is_deterministic():
    data = _tiny_images()
    spec = TreeSpec.shared(["a", "b"], 2)
    # A fresh backbone per run: a reused Backbone object initialises differently
    # on its first build than on later ones.
    runs = [fit_spec(spec, backbones.convnet4((12, 12, 1), filters=4, num_stages=2), data,
                     epochs=2, batch_size=16, seed=0, verbose=0, log=None,
                     augment=CONFIG, schedule="cosine") for _ in range(2)]
    bb = backbones.convnet4((12, 12, 1), filters=4, num_stages=2)
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], rtol=1e-5)
    with pytest.raises(DataError, match="rotaton"):
        fit_spec(spec, bb, data, epochs=1, verbose=0, log=None, augment={"rotaton": 10})
