import os

import pytest

from keras_branch import TreeSpec, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.errors import OutputExistsError
from keras_branch.files import atomic_path, atomic_write_text
from keras_branch.training import TrainResult, save_run


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == []


def test_overwrite_is_refused_unless_asked(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    with pytest.raises(OutputExistsError, match="Output path exists"):
        with atomic_path(target, overwrite=False):
            pass
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_save_run_crash_leaves_no_folder(tmp_path, monkeypatch):
    data = planted_groups(group_sizes=(1, 1), num_train=20, num_validation=5, num_test=5)
    spec = TreeSpec.shared(data.task_names, 3)
    model = build_model(spec, backbones.mlp(100, widths=(4, 4, 4)), data.tasks)
    result = TrainResult(model, {"loss": [1.0]}, {"test": {}})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_run(tmp_path / "run", result)
    assert os.listdir(tmp_path) == []
