import zipfile

import numpy as np
import pytest

from keras_branch import DataError, Task
from keras_branch.data import (
    MultiTaskData,
    Split,
    load_data,
    load_npz,
    load_omniglot,
    merge_tasks,
    planted_groups,
    save_npz,
)


def test_planted_is_deterministic_per_seed():
    a, b = planted_groups(seed=3, num_train=50), planted_groups(seed=3, num_train=50)
    c = planted_groups(seed=4, num_train=50)
    np.testing.assert_array_equal(a.split("train").x, b.split("train").x)
    np.testing.assert_array_equal(a.split("test").y["g0_t0"], b.split("test").y["g0_t0"])
    assert not np.array_equal(a.split("train").x, c.split("train").x)
    assert a.info["partition"] == [["g0_t0", "g0_t1", "g0_t2"], ["g1_t0", "g1_t1", "g1_t2"], ["g2_t0", "g2_t1"]]
    assert [len(s) for s in a.splits.values()] == [50, 1000, 2000]


def test_planted_groups_are_planted():
    data = planted_groups(seed=0, num_train=4000)
    y = np.stack([data.split("train").y[n] for n in data.task_names], axis=1)
    corr = np.corrcoef(y.T)
    within = corr[0, 1]  # g0_t0 ~ g0_t1
    across = corr[0, 3]  # g0_t0 ~ g1_t0
    assert within > across + 0.2, (within, across)


def test_planted_binary_is_balanced():
    data = planted_groups(seed=0, kind="binary", num_train=200)
    labels = np.concatenate([s.y["g1_t2"] for s in data.splits.values()])
    assert set(np.unique(labels)) == {0, 1}
    assert abs(labels.mean() - 0.5) < 0.01


def test_merge_tasks_fills_missing_labels():
    tasks = [Task("a", "multiclass", 3), Task("r", "regression")]
    split = merge_tasks(tasks, {"a": (np.zeros((2, 4)), np.array([2, 0])), "r": (np.ones((3, 4)), np.array([0.5, 1.0, 2.0]))})
    assert split.x.shape == (5, 4)
    np.testing.assert_array_equal(split.y["a"], [2, 0, -1, -1, -1])
    np.testing.assert_array_equal(split.y["r"][2:], [0.5, 1.0, 2.0])
    assert np.isnan(split.y["r"][:2]).all()


def test_dataset_batches_are_keyed_by_output_key():
    tasks = [Task("Japanese_(katakana)", "multiclass", 3)]
    data = MultiTaskData(tasks, {"train": Split(np.zeros((5, 2), "float32"), {"Japanese_(katakana)": np.array([0, 1, 2, -1, 0])})})
    x, y = next(iter(data.dataset("train", batch_size=4)))
    assert tuple(x.shape) == (4, 2)
    assert list(y) == ["Japanese__katakana_"]
    assert data.labelled_counts("train") == {"Japanese_(katakana)": 4}


@pytest.mark.parametrize(
    "labels, task, fragment",
    [
        (np.array([0, 3]), Task("a", "multiclass", 3), "label 3 of task 'a' is outside its classes 0..2"),
        (np.array([0, -2]), Task("a", "multiclass", 3), "label -2 of task 'a'"),
        (np.array([0.5, 1.0]), Task("a", "multiclass", 3), "label 0.5 of task 'a'"),
        (np.array([1, 2]), Task("b", "binary"), "label 2 of task 'b' is outside its classes 0..1"),
        (np.array([1.0, np.inf]), Task("r", "regression"), "task 'r' has a non-finite label inf"),
        (np.array([1, 2, 3]), Task("a", "multiclass", 5), "must have shape (2,)"),
    ],
)
def test_bad_labels_are_named(labels, task, fragment):
    with pytest.raises(DataError) as err:
        MultiTaskData([task], {"train": Split(np.zeros((2, 3)), {task.name: labels})})
    assert fragment in str(err.value)


def test_npz_round_trip_and_errors(tmp_path):
    data = planted_groups(seed=0, num_train=30, num_validation=10, num_test=10, group_sizes=(2, 1))
    save_npz(tmp_path / "d.npz", data)
    again = load_data(f"npz:{tmp_path / 'd.npz'}")
    assert again.tasks == data.tasks
    np.testing.assert_array_equal(again.split("test").y["g1_t0"], data.split("test").y["g1_t0"])
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="no `tasks` entry"):
        load_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("mnist", "--data must be one of"),
        ("omniglot:/no/such/place", "does not exist: '/no/such/place'"),
        ("omniglot:", "needs a path"),
        ("planted:seed=x", "option seed needs a int. Received: 'x'"),
        ("planted:colour=red", "unknown option 'colour=red'"),
    ],
)
def test_bad_sources(source, fragment):
    with pytest.raises(DataError) as err:
        load_data(source)
    assert fragment in str(err.value)


def test_omniglot_protocol(omniglot_zip):
    data = load_omniglot(omniglot_zip, image_size=28)
    assert [t.name for t in data.tasks] == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert [t.classes for t in data.tasks] == [24, 22, 24, 40, 26]
    for split, per_char in (("train", 10), ("validation", 4), ("test", 6)):
        counts = data.labelled_counts(split)
        for task in data.tasks:
            assert counts[task.name] == per_char * task.classes
            labels = data.split(split).y[task.name]
            labelled = labels[labels >= 0]
            assert np.bincount(labelled).tolist() == [per_char] * task.classes
    x = data.split("train").x
    assert x.shape == (1360, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert 0.02 < x.mean() < 0.3  # strokes are 1 on a 0 background


def test_omniglot_split_is_by_drawer(omniglot_zip, tmp_path):
    # Extract one alphabet to a folder: the folder reader must agree with the zip.
    with zipfile.ZipFile(omniglot_zip) as archive:
        members = [m for m in archive.namelist() if "/Greek/" in m]
        archive.extractall(tmp_path, members)
    from_folder = load_omniglot(tmp_path, image_size=16)
    from_zip = load_omniglot(omniglot_zip, image_size=16, alphabets=["Greek"])
    assert from_folder.task_names == ["Greek"]
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(from_folder.split(split).x, from_zip.split(split).x)
    # Drawers 01-10 train, 11-14 validation, 15-20 test.
    greek = sorted(m for m in members if "character01/" in m and m.endswith(".png"))
    import tensorflow as tf

    with zipfile.ZipFile(omniglot_zip) as archive:
        first_test = archive.read(greek[14])
    image = tf.image.resize(tf.cast(tf.io.decode_png(first_test, channels=1), "float32") / 255.0, (16, 16), method="area")
    np.testing.assert_allclose(from_zip.split("test").x[0], 1.0 - image.numpy(), atol=1e-6)


def test_omniglot_bad_inputs(omniglot_zip, tmp_path):
    with pytest.raises(DataError, match=r"Unknown alphabet\(s\) \['Klingon'\]"):
        load_omniglot(omniglot_zip, alphabets=["Klingon"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No Omniglot drawings"):
        load_omniglot(tmp_path / "empty")
    with pytest.raises(DataError, match="Received: image_size=2"):
        load_omniglot(omniglot_zip, image_size=2)


def test_inputs_must_be_finite_real_numbers():
    from keras_branch.data.multitask import MultiTaskData, Split

    data = planted_groups(group_sizes=(1,), num_train=10, num_validation=5, num_test=5)
    x, y = data.split("train").x.copy(), dict(data.split("train").y)
    x[4, 0] = -np.inf
    with pytest.raises(DataError, match=r"d/train: 1 input row\(s\) hold NaN or infinity, "
                                        r"the first is row 4"):
        MultiTaskData(data.tasks, {"train": Split(x, y)}, name="d")
    words = np.array([["a"] * 3] * 10)
    with pytest.raises(DataError, match=r"d/train: inputs must be real numbers. Received dtype <U1"):
        MultiTaskData(data.tasks, {"train": Split(words, y)}, name="d")


def test_training_refuses_no_training_samples():
    from keras_branch import TreeSpec, backbones, build_model
    from keras_branch.data.multitask import MultiTaskData, Split
    from keras_branch.training import train

    data = planted_groups(group_sizes=(1,), num_train=10, num_validation=5, num_test=5)
    train_split = data.split("train")
    empty = MultiTaskData(data.tasks, {
        "train": Split(train_split.x[:0], {k: v[:0] for k, v in train_split.y.items()}),
        "test": data.split("test")}, name="empty")
    model = build_model(TreeSpec.shared(data.task_names, 2), backbones.mlp(100, widths=[4, 4]),
                        data.tasks)
    with pytest.raises(DataError, match="empty: no training samples; nothing to train on"):
        train(model, empty, epochs=1, verbose=0)


# === Bad .npz contents: one DataError naming the file and entry, never an unpickling ===


class _Exploit:
    """Unpickling it would create a file: proof that a pickle was (not) loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz_cases(tmp_path):
    import io
    import json
    import pickle

    from numpy.lib import format as npy_format

    tasks = np.array(json.dumps([{"name": "a", "kind": "multiclass", "classes": 3}]))
    cases = {}

    def savez(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        cases[name] = tmp_path / name

    savez("ragged.npz", tasks=tasks, x_train=np.array([[1.0, 2.0], [3.0]], dtype=object),
          y_train_0=np.array([0, 1]))
    savez("object_labels.npz", tasks=tasks, x_train=np.zeros((2, 2)),
          y_train_0=np.array([0, None], dtype=object))
    savez("string_labels.npz", tasks=tasks, x_train=np.zeros((2, 2)),
          y_train_0=np.array(["cat", "dog"]))
    savez("tasks_not_text.npz", tasks=np.zeros((2, 2)), x_train=np.zeros((2, 2)),
          y_train_0=np.array([0, 1]))
    savez("scalar_inputs.npz", tasks=tasks, x_train=np.array(3.0), y_train_0=np.array([0, 1]))
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["empty.npz"] = tmp_path / "empty.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    cases["single.npz"] = tmp_path / "single.npz"
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(_Exploit(tmp_path / "pwned")))
    cases["pickle.npz"] = tmp_path / "pickle.npz"
    with zipfile.ZipFile(tmp_path / "raw_member.npz", "w") as z:
        z.writestr("tasks.npy", b"garbage")
    cases["raw_member.npz"] = tmp_path / "raw_member.npz"
    whole = (tmp_path / "ragged.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    cases["truncated.npz"] = tmp_path / "truncated.npz"
    header = io.BytesIO()  # a header promising 32 TiB
    npy_format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**42,)})
    buffer = io.BytesIO()
    np.save(buffer, tasks)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("tasks.npy", buffer.getvalue())
        z.writestr("x_train.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y_train_0.npy", buffer.getvalue())
    cases["huge.npz"] = tmp_path / "huge.npz"
    return cases


NPZ_ERRORS = {
    "ragged.npz": "`x_train` is an object array (ragged rows or Python objects); keras_branch "
                  "reads numeric arrays only and never unpickles a file.",
    "object_labels.npz": "`y_train_0` is an object array",
    "string_labels.npz": "labels of task 'a' must be real numbers (class indices, or floats for "
                         "regression). Received dtype <U3.",
    "tasks_not_text.npz": "`tasks` must be one string of JSON task configs",
    "scalar_inputs.npz": "inputs must have shape (samples, features...). Received shape ().",
    "empty.npz": "as .npz (np.savez): the file is empty.",
    "single.npz": "holds a single array (ndarray), not an .npz archive of named arrays",
    "pickle.npz": "it holds pickled Python objects; keras_branch never unpickles a file.",
    "raw_member.npz": "`tasks` is not a .npy array (np.savez writes one per name).",
    "truncated.npz": "as .npz (np.savez): File is not a zip file.",
    "huge.npz": "`x_train` cannot be read: Unable to allocate",
}


def test_bad_npz_contents_are_one_data_error(tmp_path):
    for name, path in _npz_cases(tmp_path).items():
        with pytest.raises(DataError) as err:
            load_data(f"npz:{path}")
        assert NPZ_ERRORS[name] in str(err.value), (name, str(err.value))
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled


def test_omniglot_member_that_is_not_a_png_is_named(tmp_path):
    import tensorflow as tf

    png = tf.io.encode_png(tf.zeros((12, 12, 1), tf.uint8)).numpy()
    fake = "root/Alpha/character01/0002_02.png"
    with zipfile.ZipFile(tmp_path / "fake.zip", "w") as z:
        for character in ("character01", "character02"):
            for drawer in (1, 2, 3):
                name = f"root/Alpha/{character}/000{drawer}_0{drawer}.png"
                z.writestr(name, b"<html>not an image</html>" if name == fake else png)
    with pytest.raises(DataError) as err:
        load_omniglot(tmp_path / "fake.zip", split_sizes=(1, 1, 1))
    assert str(err.value) == (
        f"{str(tmp_path / 'fake.zip')!r}: {fake!r} is not a readable PNG image: Unknown image "
        f"file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.")
