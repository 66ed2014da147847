import os

import pytest

from keras_branch import TreeSpec, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.errors import OutputExistsError
from keras_branch.files import (
    atomic_path,
    atomic_write_text,
    claim_folder,
    is_owned_folder,
    remove_owned_folder,
)
from keras_branch.results import TrainResult, save_run


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


# === Only what keras_branch created is ever removed ===


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def test_claimed_folder_is_marked_and_removable(tmp_path):
    folder = tmp_path / "ckpt"
    assert claim_folder(folder) == str(folder)
    assert is_owned_folder(folder)
    assert claim_folder(folder) == str(folder)  # ours: reused (a resume)
    assert remove_owned_folder(folder) is True
    assert not folder.exists()


def test_a_users_folder_is_refused_and_never_removed(tmp_path):
    folder = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match=r"--checkpoint-dir is a folder keras-branch did not create.*mine"):
        claim_folder(folder, "--checkpoint-dir")
    assert remove_owned_folder(folder) is False
    assert (folder / "notes.txt").read_text() == "mine"


def test_an_empty_users_folder_is_borrowed_emptied_and_kept(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    claim_folder(folder)
    assert not is_owned_folder(folder)
    (folder / "ckpt-1.index").write_text("ours")
    assert claim_folder(folder) == str(folder)  # a resume finds it again
    assert remove_owned_folder(folder) is True
    assert folder.is_dir() and os.listdir(folder) == []


def test_a_file_is_not_a_folder_to_claim(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not a folder"):
        claim_folder(path, "--state")
    with pytest.raises(OutputExistsError, match="must be a folder path"):
        claim_folder("", "--state")


def test_overwrite_replaces_our_folder_but_never_a_users(tmp_path):
    ours = tmp_path / "run"
    with atomic_path(ours) as tmp:
        os.makedirs(tmp)
    assert is_owned_folder(ours)
    atomic_write_text(ours, "now a file")  # overwrite=True: our folder may go
    assert ours.read_text() == "now a file"

    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="did not create"):
        atomic_write_text(mine, "clobber")
    with pytest.raises(OutputExistsError, match="did not create"):
        with atomic_path(mine, overwrite=True) as tmp:
            os.makedirs(tmp)
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["mine", "run"]  # no temporary left behind


def test_temporaries_of_a_killed_writer_are_cleaned_on_the_next_write(tmp_path):
    # A pid no process can have (beyond Linux's pid_max of 2**22): its writer is gone.
    dead_file = tmp_path / ".out.kbtmp-99999999-abc.tmp.json"
    dead_file.write_text("half")
    dead_dir = tmp_path / ".out.kbtmp-99999999-def.tmp.json"
    dead_dir.mkdir()
    (dead_dir / "part").write_text("half")
    live = tmp_path / f".out.kbtmp-{os.getppid()}-ghi.tmp.json"  # another process writes it
    live.write_text("busy")
    ours = tmp_path / f".out.kbtmp-{os.getpid()}-mno.tmp.json"  # a killed run that had our pid
    ours.write_text("half")
    other = tmp_path / ".other.kbtmp-99999999-jkl.tmp.json"  # another target's
    other.write_text("not ours to judge")
    user = tmp_path / ".out.backup.tmp.json"  # not our pattern
    user.write_text("mine")
    atomic_write_text(tmp_path / "out.json", "{}")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live.name, other.name, user.name, "out.json"])


def test_json_is_written_strict_or_not_at_all(tmp_path):
    import json

    from keras_branch.errors import OutputError
    from keras_branch.files import atomic_write_json

    target = tmp_path / "system.json"
    with pytest.raises(OutputError) as err:
        atomic_write_json(target, {"hparams": {"a": {"learning_rate": float("nan")}}})
    assert str(err.value) == (
        f"Cannot write {str(target)!r} as standard JSON: [\"hparams\"][\"a\"][\"learning_rate\"] "
        f"is nan (JSON has no NaN or infinity).")
    assert os.listdir(tmp_path) == []
    atomic_write_json(target, {"scores": [1.0, 2]})
    assert json.loads(target.read_text(), parse_constant=pytest.fail) == {"scores": [1.0, 2]}
