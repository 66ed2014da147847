"""CelebA through tfds.load("celeb_a"): never downloads unasked; the zoo entry
builds, trains and exports on tfds.testing.mock_data (the real data cannot be
downloaded here)."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from keras_branch import zoo  # noqa: E402
from keras_branch.data import CELEBA_ATTRIBUTES, load_celeba, load_data  # noqa: E402
from keras_branch.errors import DataError  # noqa: E402


def test_missing_data_names_the_folder_and_downloads_nothing(tmp_path):
    with pytest.raises(DataError, match=f"not prepared in data_dir='{tmp_path}'.*download=1"):
        load_celeba(data_dir=tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        load_data(f"celeba:data_dir={tmp_path}")
    assert not any(tmp_path.rglob("*.zip"))


def test_bad_arguments():
    with pytest.raises(DataError, match="Unknown CelebA attribute.*'Smiles'"):
        load_celeba(attributes=["Smiles"])
    with pytest.raises(DataError, match="num_train=0"):
        load_celeba(num_train=0)
    with pytest.raises(DataError, match="unknown option 'size=3'"):
        load_data("celeba:size=3")


def test_mock_data_loads_forty_binary_tasks(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        data = load_data(f"celeba:data_dir={tmp_path},train=5,validation=3,test=2", image_size=24)
    assert data.task_names == list(CELEBA_ATTRIBUTES) and len(data.tasks) == 40
    assert all(t.kind == "binary" for t in data.tasks)
    assert [len(data.split(s)) for s in ("train", "validation", "test")] == [5, 3, 2]
    x = data.split("train").x
    assert x.shape == (5, 24, 24, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(data.split("train").y["Smiling"])) <= {0, 1}


def test_entry_builds_and_runs_on_mock_images(tmp_path):
    entry = zoo.entry("celeba-affinity")
    assert entry.data == "celeba" and entry.backbone["name"] == "mobilenet_v2"
    with tfds.testing.mock_data(num_examples=4):
        data = load_celeba(data_dir=tmp_path, image_size=32, num_train=4, num_validation=2,
                           num_test=2)
    model = zoo.get("celeba-affinity", image_size=32)
    assert model.count_params() == entry.count_params(input_shape=(32, 32, 3))
    outputs = model.predict_on_batch(data.split("test").x)
    assert len(outputs) == 40
    assert all(np.asarray(v).shape == (2, 1) for v in outputs.values())


@pytest.mark.slow
def test_entry_trains_a_step_and_exports_on_mock_data(tmp_path):
    # 6 to 11 minutes on 2 shared CPU cores (358 s and 647 s measured): tracing a training step of 9 MobileNetV2 stage blocks with
    # 40 heads, and a SavedModel with 41 signatures for the TFLite converter.
    from keras_branch.export import export_model

    with tfds.testing.mock_data(num_examples=8):
        data = load_data(f"celeba:data_dir={tmp_path},train=8,validation=4,test=4", image_size=32)
    run = zoo.train("celeba-affinity", data, recipe={"epochs": 1, "batch_size": 8},
                    out=tmp_path / "run", log=None)
    assert set(run.metrics["test"]) == set(CELEBA_ATTRIBUTES)
    assert len(run.history["loss"]) == 1 and np.isfinite(run.history["loss"][0])
    result = export_model(run.model, tmp_path / "export", formats=("tflite",), data=data,
                          check=True)
    assert result.passed and result.sizes["tflite"] > 1_000_000
