"""CelebA through tfds.load("celeb_a"): never downloads unasked; the zoo entry
builds, trains and exports on tfds.testing.mock_data (the real data cannot be
downloaded here)."""

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from keras_branch import TreeSpec, zoo  # noqa: E402
from keras_branch.data import CELEBA_ATTRIBUTES, load_celeba, load_data  # noqa: E402
from keras_branch.errors import DataError  # noqa: E402

from conftest import load_script  # noqa: E402


@pytest.fixture(autouse=True)
def tfds_temp_dirs_in_tmp_path(tmp_path, monkeypatch):
    """A builder without prepared data fetches its metadata into a fresh
    `tempfile.mkdtemp` it never removes; keep those inside the test's folder."""
    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))


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


# === The 40-task path end to end: benchmarks/celeba_mock.py ===

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "celeba_mock.py"


@pytest.fixture(scope="module")
def celeba_mock():
    return load_script(BENCHMARK)


def test_epoch_estimate_is_celeba_size_over_throughput(celeba_mock):
    assert celeba_mock.CELEBA_TRAIN == 162_770
    assert celeba_mock.estimate_epoch_seconds(1000.0) == pytest.approx(162.77)
    assert celeba_mock.estimate_epoch_seconds(50.0, num_samples=100) == 2.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="samples_per_second"):
            celeba_mock.estimate_epoch_seconds(bad)


def test_mock_celeba_search_train_export_end_to_end(celeba_mock, tmp_path, capsys):
    """tfds.load("celeb_a") -> TAG search over 40 tasks -> training -> SavedModel, timed.

    Small settings (16x16 images, a 2-stage convnet, 32 images): tracing a
    training step with 40 heads is most of the time (about 20-40 s on 2 cores).
    """
    rc = celeba_mock.main(["--image-size", "16", "--train", "32", "--eval", "4",
                           "--backbone-arg", "filters=4", "--backbone-arg", "num_stages=2",
                           "--tag-epochs", "1", "--every", "1", "--epochs", "2",
                           "--batch-size", "16", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    # The searched tree routes all 40 attributes; its affinity is TAG's.
    spec = TreeSpec.load(tmp_path / "search" / "tree.json")
    assert sorted(spec.tasks) == sorted(CELEBA_ATTRIBUTES) and spec.num_stages == 2
    affinity = json.loads((tmp_path / "search" / "affinity.json").read_text())
    assert affinity["info"]["method"] == "tag" and len(affinity["tasks"]) == 40
    assert affinity["info"]["measured_steps"] == 2  # 2 steps of 16 images, every one
    # The export: a SavedModel with one signature per task and serving_default.
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert (tmp_path / "export" / "saved_model" / "saved_model.pb").is_file()
    assert len(manifest["signatures"]) == 41 and "Smiling" in manifest["signatures"]
    # 2 epochs of 2 steps; the first traces, the other 3 (48 images) are timed.
    rate = float(re.search(r"3 steps after the first timed: ([0-9.]+) images/s", out).group(1))
    line = next(line for line in out.splitlines() if line.startswith("estimated seconds"))
    assert "(162,770 train images, 16x16)" in line
    seconds = float(re.search(r"16x16\): ([0-9.]+) ", line).group(1))
    assert math.isfinite(seconds) and seconds > 0
    assert seconds == pytest.approx(162_770 / rate, rel=2e-3)  # both printed rounded
    assert re.search(r"\| TAG search \| [0-9.]+ \|.*blocks \[\d+, \d+\]", out)


def test_mock_benchmark_help(celeba_mock, capsys):
    with pytest.raises(SystemExit) as done:
        celeba_mock.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "tfds.testing.mock_data" in text and "--image-size" in text and "162,770" in text
