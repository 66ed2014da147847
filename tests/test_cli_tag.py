"""`keras-branch search --method tag`: TAG's affinity through the affinity search's path.

The search runs in-process on planted groups (3 + 3 regression tasks) with
the recipe that recovers them in tests/test_tag.py; the flag checks end
before any data loads.
"""

import json
import os
import shutil

import pytest

from keras_branch import TreeSpec, backbones
from keras_branch.cli import main
from keras_branch.data import load_data
from keras_branch.search import adjusted_rand_index, budget_for_blocks
from keras_branch.search.partitions import labels_from_groups

PLANTED = "planted:groups=3-3,train=1000,seed=0"
WIDTHS = "widths=[32,32,8]"
TAG = ["search", "--method", "tag", "--data", PLANTED, "--backbone", "mlp",
       "--backbone-arg", WIDTHS]


def _budget() -> str:
    # One block at stage 1, two at stage 2 (the planted groups), one per task at the last.
    data = load_data(PLANTED)
    return str(budget_for_blocks(backbones.mlp(100, (32, 32, 8)), data.tasks, [1, 2, 6]))


@pytest.fixture(scope="module")
def tag_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("tag") / "search"
    rc = main([*TAG, "--budget", _budget(), "--epochs", "10", "--learning-rate", "0.01",
               "--every", "1", "--seed", "0", "--out", str(out)])
    assert rc == 0
    return out


def test_tag_search_writes_what_the_affinity_search_writes(tag_search):
    assert sorted(os.listdir(tag_search)) == [
        ".keras-branch", "affinity.json", "affinity.png", "pareto.png", "search.json",
        "tree.json", "tree.png"]
    for plot in ("affinity.png", "pareto.png", "tree.png"):
        assert (tag_search / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    affinity = json.loads((tag_search / "affinity.json").read_text())
    info = affinity["info"]
    assert info["method"] == "tag"
    # The flags given, and --lookahead-lr's default: --learning-rate. 16 steps per epoch,
    # every one measured.
    assert (info["epochs"], info["learning_rate"], info["every"], info["lookahead_lr"]) == (
        10, 0.01, 1, 0.01)
    assert info["batch_size"] == 64 and info["measured_steps"] == 160
    names = ["g0_t0", "g0_t1", "g0_t2", "g1_t0", "g1_t1", "g1_t2"]
    assert affinity["tasks"] == names
    assert len(affinity["values"]) == 3 and all(len(row) == 6 for row in affinity["values"][0])
    summary = json.loads((tag_search / "search.json").read_text())
    assert summary["method"] == "affinity"
    assert summary["scores"]["affinity_method"] == "tag"
    assert set(summary["seconds"]) == {"tag", "search"}
    assert summary["scores"]["params"] <= summary["scores"]["budget"] == int(_budget())


def test_tag_search_finds_the_planted_groups(tag_search):
    spec = TreeSpec.load(tag_search / "tree.json")
    data = load_data(PLANTED)
    assert sorted(spec.tasks) == sorted(data.task_names)
    assert spec.blocks_per_stage() == [1, 2, 6]
    found = labels_from_groups(data.task_names, spec.partition(1))
    planted = labels_from_groups(data.task_names, data.info["partition"])
    assert adjusted_rand_index(found, planted) == 1.0


def test_an_existing_out_is_refused_unless_overwrite(tag_search, capsys):
    before = (tag_search / "affinity.json").read_text()
    assert main([*TAG, "--budget", "2x", "--epochs", "1", "--out", str(tag_search)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"keras-branch search: error: --out exists: {str(tag_search)!r}; "
                   f"pass --overwrite to replace it.")
    assert (tag_search / "affinity.json").read_text() == before
    # A user's folder (no keras-branch marker) is refused even with --overwrite.
    mine = tag_search.parent / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*TAG, "--budget", "2x", "--epochs", "1", "--out", str(mine), "--overwrite"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert (mine / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_search_folder(tag_search, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(tag_search, out)  # a search folder, keras-branch's marker included
    assert main([*TAG, "--budget", "2x", "--epochs", "2", "--every", "4", "--batch-size", "250",
                 "--out", str(out), "--overwrite"]) == 0
    info = json.loads((out / "affinity.json").read_text())["info"]
    assert (info["epochs"], info["every"], info["measured_steps"]) == (2, 4, 2)  # steps 0 and 4


BAD = [
    # (method, flags, the error's fragment)
    ("tag", ["--every", "0"], "argument --every: must be an int >= 1. Received: '0'"),
    ("tag", ["--every", "1.5"], "argument --every: must be an int >= 1. Received: '1.5'"),
    ("tag", ["--lookahead-lr", "0"], "argument --lookahead-lr: must be a finite number > 0. "
                                     "Received: '0'"),
    ("tag", ["--lookahead-lr", "nan"], "argument --lookahead-lr: must be a finite number > 0"),
    ("tag", ["--lookahead-lr", "inf"], "argument --lookahead-lr: must be a finite number > 0"),
    ("tag", ["--epochs", "0"], "argument --epochs: must be an int >= 1. Received: '0'"),
    ("tag", ["--strategy", "multiworker"], "argument --strategy: invalid choice: 'multiworker'"),
    ("tag", ["--probe-epochs", "2"], "--method tag does not take --probe-epochs (a flag of "
                                     "--method affinity). Received: --probe-epochs 2"),
    ("tag", ["--num-inputs", "8"], "--method tag does not take --num-inputs"),
    ("tag", ["--widths", "1,2,6"], "--method tag does not take --widths (a flag of --method "
                                   "ltb). Received: --widths 1,2,6"),
    ("tag", ["--per-example"], "--method tag does not take --per-example (a flag of --method "
                               "ltb). Received: --per-example"),
    ("tag", ["--balance", "0"], "--method tag does not take --balance"),
    ("tag", ["--logits-learning-rate", "0.1"], "--method tag does not take "
                                               "--logits-learning-rate"),
    ("tag", ["--warmup-epochs", "0"], "--method tag does not take --warmup-epochs"),
    ("affinity", ["--every", "2"], "--method affinity does not take --every (a flag of --method "
                                   "tag). Received: --every 2"),
    ("affinity", ["--lookahead-lr", "0.1"], "--method affinity does not take --lookahead-lr"),
    ("affinity", ["--strategy", "none"], "--method affinity does not take --strategy"),
    ("affinity", ["--epochs", "3"], "--method affinity does not take --epochs (a flag of "
                                    "--method tag or ltb). Received: --epochs 3"),
    ("ltb", ["--every", "2"], "--method ltb does not take --every (a flag of --method tag)"),
    ("ltb", ["--search", "beam"], "--method ltb does not take --search (a flag of --method "
                                  "affinity or tag). Received: --search beam"),
    ("ltb", ["--probe-epochs", "1"], "--method ltb does not take --probe-epochs"),
]


@pytest.mark.parametrize("method, flags, fragment", BAD,
                         ids=[f"{m}{' '.join(f)}" for m, f, _ in BAD])
def test_bad_flags_end_with_one_line_naming_flag_and_method(tmp_path, capsys, method, flags,
                                                            fragment):
    out = tmp_path / "s"
    rc = main(["search", "--method", method, "--data", PLANTED, "--budget", "2x", *flags,
               "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and err.startswith("keras-branch search: error: "), err
    assert fragment in err, err
    assert not out.exists()


def test_tag_needs_a_budget(tmp_path, capsys):
    assert main([*TAG, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("keras-branch search: error: --method tag needs --budget (parameters, or a "
                   "multiple like 2x).")
    assert not (tmp_path / "s").exists()


class _Called(Exception):
    pass


def test_unset_flags_take_each_methods_default(tmp_path, monkeypatch):
    import keras_branch.cli as cli

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise _Called

    monkeypatch.setattr(cli, "affinity_search", record)
    monkeypatch.setattr(cli, "learn_to_branch", record)
    for method in ("tag", "affinity", "ltb"):
        with pytest.raises(_Called):
            main(["search", "--method", method, "--data", PLANTED, "--budget", "2x",
                  "--out", str(tmp_path / method)])
    with pytest.raises(_Called):  # every tag flag given reaches the search as given
        main(["search", "--method", "tag", "--data", PLANTED, "--budget", "1000",
              "--epochs", "4", "--learning-rate", "0.02", "--every", "3", "--lookahead-lr", "0.5",
              "--strategy", "mirrored", "--search", "beam", "--batch-size", "8", "--seed", "7",
              "--out", str(tmp_path / "given")])
    tag, affinity, ltb, given = calls
    # --lookahead-lr unset: None, which affinity_search reads as --learning-rate.
    assert tag == {"seed": 0, "method": "auto", "batch_size": 64, "affinity": "tag",
                   "epochs": 20, "learning_rate": 1e-3, "every": 10, "lookahead_lr": None,
                   "strategy": "auto"}
    assert given == {"seed": 7, "method": "beam", "batch_size": 8, "affinity": "tag",
                     "epochs": 4, "learning_rate": 0.02, "every": 3, "lookahead_lr": 0.5,
                     "strategy": "mirrored"}
    assert affinity == {"seed": 0, "method": "auto", "batch_size": 64, "affinity": "rsa",
                        "probe_epochs": 5, "num_inputs": 256}
    assert (ltb["epochs"], ltb["learning_rate"], ltb["budget"]) == (30, 1e-3, "2x")


def test_help_names_tag_and_each_methods_defaults(capsys):
    assert main(["search", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--method {affinity,tag,ltb}" in text
    assert "supernet training epochs (default: tag 20, ltb 30)" in text
    assert "every k training steps (default: 10)" in text
    assert "SGD rate of each lookahead step (default: --learning-rate" in text
    assert "keras-branch search --method tag --data planted --budget 2x" in text
