import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_branch import TreeSpec, backbones
from keras_branch.cli import main
from keras_branch.data import load_data, planted_groups, save_npz
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.saving import load_branched_model

# A spec as a user would write it by hand: 4 tasks, 3 stages, a tree.
USER_SPEC = """{
  "tasks": ["g0_t0", "g0_t1", "g1_t0", "g1_t1"],
  "routes": {
    "g0_t0": [0, 0, 0],
    "g0_t1": [0, 0, 1],
    "g1_t0": [0, 1, 2],
    "g1_t1": [0, 1, 3]
  }
}"""
PLANTED = "planted:groups=2-2,train=400,seed=1"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    spec = root / "spec.json"
    spec.write_text(USER_SPEC)
    out = root / "out"
    rc = main(["train", "--spec", str(spec), "--data", PLANTED, "--backbone", "mlp",
               "--backbone-arg", "widths=[32,32,16]", "--epochs", "3", "--out", str(out),
               "--progress", "none"])
    assert rc == 0
    return out


def test_train_writes_a_complete_run(trained_run):
    assert sorted(os.listdir(trained_run)) == [
        ".keras-branch", "config.json", "history.json", "metrics.json", "model.keras", "spec.json"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test"}
    assert set(metrics["test"]) == {"g0_t0", "g0_t1", "g1_t0", "g1_t1"}
    assert metrics["test"]["g0_t0"]["n"] == 2000
    history = json.loads((trained_run / "history.json").read_text())
    assert len(history["loss"]) == 3
    assert TreeSpec.load(trained_run / "spec.json") == TreeSpec.from_json(USER_SPEC)


def test_saved_model_params_equal_accounting(trained_run):
    model = load_branched_model(trained_run / "model.keras")
    bb = backbones.mlp(100, widths=(32, 32, 16))
    assert model.count_params() == TreeSpec.from_json(USER_SPEC).count_params(bb, model.tasks)


def test_evaluate_reproduces_test_metrics(trained_run, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(trained_run / "model.keras"), "--data", PLANTED,
               "--out", str(tmp_path / "m.json")])
    assert rc == 0
    again = json.loads((tmp_path / "m.json").read_text())["test"]
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    for task, values in saved.items():
        assert again[task]["mse"] == pytest.approx(values["mse"], rel=1e-5)
    out = capsys.readouterr().out
    assert sum(line.startswith("test g") for line in out.splitlines()) == 4
    # The run folder stands for its model.keras.
    assert main(["evaluate", "--model", str(trained_run), "--data", PLANTED]) == 0
    assert capsys.readouterr().out == out


def test_evaluate_refuses_data_the_model_cannot_read(trained_run, capsys):
    for data, fragment in [
        ("planted:groups=2-2,dim=20", "takes inputs of shape (100,); --data "
                                      "'planted:groups=2-2,dim=20' has inputs of shape (20,)"),
    ]:
        assert main(["evaluate", "--model", str(trained_run), "--data", data]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err, err
    assert main(["evaluate", "--model", str(trained_run), "--data", PLANTED,
                 "--split", "dev"]) == 2
    assert "--split 'dev' is not a split" in capsys.readouterr().err


def test_keras_round_trip_in_a_fresh_process(trained_run, tmp_path):
    model = load_branched_model(trained_run / "model.keras")
    x = load_data(PLANTED).split("test").x[:64]
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras, keras_branch\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "out = m.predict(np.load(sys.argv[2]), verbose=0)\n"
        "np.savez(sys.argv[3], **out)\n"
    )
    # cwd elsewhere: the installed package is imported, not the source tree.
    subprocess.run([sys.executable, "-c", script, str(trained_run / "model.keras"),
                    str(tmp_path / "x.npy"), str(tmp_path / "y.npz")], check=True,
                   capture_output=True, cwd=tmp_path)
    fresh = np.load(tmp_path / "y.npz")
    here = model.predict(x, verbose=0)
    assert set(fresh.files) == set(here)
    for key in here:
        np.testing.assert_allclose(fresh[key], here[key], atol=1e-6, rtol=0)


def test_omniglot_tree_trains_through_the_cli(omniglot_zip, tmp_path):
    spec = TreeSpec.from_partitions([
        [["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]],
        [["Balinese", "Early_Aramaic", "Korean"], ["Greek", "Latin"]],
        [["Balinese", "Early_Aramaic"], ["Korean"], ["Greek", "Latin"]],
        [["Balinese"], ["Early_Aramaic"], ["Korean"], ["Greek"], ["Latin"]],
    ])
    spec.save(tmp_path / "tree.json")
    rc = main(["train", "--spec", str(tmp_path / "tree.json"), "--data", f"omniglot:{omniglot_zip}",
               "--backbone", "convnet4", "--backbone-arg", "filters=8", "--image-size", "16",
               "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run"),
               "--progress", "none"])
    assert rc == 0
    model = load_branched_model(tmp_path / "run" / "model.keras")
    assert model.count_params() == spec.count_params(
        backbones.convnet4((16, 16, 1), filters=8), model.tasks)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert {m["n"] for m in metrics.values()} == {144, 132, 240, 156}


def test_demo_prints_one_line_per_task(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--probe-epochs", "1", "--no-baselines",
                 "--out", str(tmp_path / "demo")]) == 0
    lines = capsys.readouterr().out.splitlines()
    task_lines = [line for line in lines if line.startswith("test g")]
    assert len(task_lines) == 8 and all("mse=" in line for line in task_lines)
    assert any(line.startswith("adjusted Rand index of stage 2") for line in lines)
    assert (tmp_path / "demo" / "model.keras").exists()
    assert (tmp_path / "demo" / "search" / "tree.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_tree_beats_both_baselines(tmp_path, capsys, seed):
    # Measured (2 CPU cores, about 50 s each): mean test mse of tree / shared / independent
    # 0.1364 / 0.1424 / 0.1719 (seed 0), 0.1405 / 0.1612 / 0.1814 (1), 0.1381 / 0.1412 / 0.1766 (2).
    assert main(["demo", "--seed", str(seed), "--out", str(tmp_path / "demo")]) == 0
    rows = {line[:14].strip(): float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()
            if line.startswith(("found tree ", "fully shared ", "independent "))}
    assert rows["found tree"] < min(rows["fully shared"], rows["independent"]), rows


# === Bad input: exit status 2 and one line naming field and value ===


def _spec_file(tmp_path, text):
    path = tmp_path / "spec.json"
    path.write_text(text)
    return str(path)


def _bad_label_npz(tmp_path):
    data = planted_groups(group_sizes=(1,), num_train=10, num_validation=5, num_test=5, kind="binary")
    y = data.split("train").y["g0_t0"].copy()
    y[3] = 7
    bad = MultiTaskData.__new__(MultiTaskData)  # skip validation to write a broken file
    bad.tasks, bad.info, bad.name = data.tasks, {}, "bad"
    bad.splits = {"train": Split(data.split("train").x, {"g0_t0": y})}
    save_npz(tmp_path / "bad.npz", bad)
    return f"npz:{tmp_path / 'bad.npz'}"


ONE_TASK = '{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, 0, 0]}}'


@pytest.mark.parametrize(
    "spec_text, data, fragment",
    [
        ("{oops", PLANTED, "not valid JSON"),
        ('{"tasks": ["g0_t0"], "routes": {"g0_t0": [0,0,0], "zz": [0,0,0]}}', PLANTED,
         "task(s) ['zz'] that are not in `tasks`"),
        ('{"tasks": ["g0_t0", "g0_t1"], "routes": {"g0_t0": [0,0,0]}}', PLANTED,
         "no route for task(s) ['g0_t1']"),
        ('{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, 0]}}', PLANTED,
         "Routes have 2 stage(s) but backbone 'mlp' has 3"),
        ('{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, -1, 0]}}', PLANTED,
         "`routes['g0_t0'][1]` must be a non-negative integer block id. Received: -1"),
        ('{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, 0.5, 0]}}', PLANTED, "Received: 0.5"),
        ('{"tasks": ["g0_t0", "g0_t0"], "routes": {"g0_t0": [0, 0, 0]}}', PLANTED,
         "Duplicate task name in `tasks`: 'g0_t0'"),
        ('{"tasks": [], "routes": {}}', PLANTED, "at least one task. Received: tasks=[]"),
        ('{"tasks": ["nope"], "routes": {"nope": [0, 0, 0]}}', PLANTED,
         "Spec task(s) ['nope'] are not in data"),
        (ONE_TASK, "omniglot:/no/such/dir", "does not exist: '/no/such/dir'"),
        (ONE_TASK, "bad_label", "label 7 of task 'g0_t0' is outside its classes 0..1"),
    ],
)
def test_train_bad_input_exits_2_with_one_line(tmp_path, capsys, spec_text, data, fragment):
    if data == "bad_label":
        data = _bad_label_npz(tmp_path)
    rc = main(["train", "--spec", _spec_file(tmp_path, spec_text), "--data", data,
               "--out", str(tmp_path / "out"), "--epochs", "1", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and err.startswith("keras-branch train: error: ")
    assert fragment in err
    assert not (tmp_path / "out").exists()


def test_missing_spec_file_and_existing_out(tmp_path, capsys):
    assert main(["train", "--spec", str(tmp_path / "none.json"), "--data", PLANTED,
                 "--out", str(tmp_path / "o")]) == 2
    assert "Tree spec file does not exist" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
                 "--out", str(tmp_path / "o")]) == 2
    assert "--out exists" in capsys.readouterr().err


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def test_a_users_checkpoint_folder_is_refused_and_kept(tmp_path, capsys):
    mine = _user_folder(tmp_path / "mine")
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
                 "--epochs", "1", "--progress", "none", "--checkpoint-dir", str(mine),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoint folder is a folder keras-branch did not create" in err
    assert os.listdir(mine) == ["notes.txt"] and not (tmp_path / "o").exists()


def test_an_empty_checkpoint_folder_is_used_and_kept(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
                 "--epochs", "1", "--progress", "none", "--checkpoint-dir", str(empty),
                 "--out", str(tmp_path / "o")]) == 0
    assert empty.is_dir() and (tmp_path / "o" / "model.keras").is_file()
    # The default checkpoint folder is the program's own: gone once the run is saved.
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
                 "--epochs", "1", "--progress", "none", "--out", str(tmp_path / "p")]) == 0
    assert not (tmp_path / "p.checkpoint").exists()


def test_evaluate_out_never_replaces_a_users_path(trained_run, tmp_path, capsys):
    model = str(trained_run / "model.keras")
    existing = tmp_path / "m.json"
    existing.write_text("keep")
    assert main(["evaluate", "--model", model, "--data", PLANTED, "--out", str(existing)]) == 2
    assert "--out exists" in capsys.readouterr().err
    assert existing.read_text() == "keep"
    mine = _user_folder(tmp_path / "mine")
    assert main(["evaluate", "--model", model, "--data", PLANTED, "--out", str(mine),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did not create" in err
    assert os.listdir(mine) == ["notes.txt"]
    assert main(["evaluate", "--model", model, "--data", PLANTED, "--out", str(existing),
                 "--overwrite"]) == 0
    assert set(json.loads(existing.read_text())) == {"test"}


def test_ltb_search_under_a_budget_through_the_cli(tmp_path, capsys):
    data = "planted:groups=2-1,train=100,seed=0"
    assert main(["search", "--method", "ltb", "--data", data, "--backbone", "mlp",
                 "--backbone-arg", "widths=[8,4,4]", "--budget", "1.03x", "--epochs", "1",
                 "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    # shared: 808 + 36 + 20 + 3 heads * 5 = 879; 3% more buys one 20-parameter leaf: heads choose.
    assert summary["method"] == "ltb"
    assert summary["scores"]["settings"]["budget"] == "1.03x"
    assert summary["scores"]["settings"]["widths"] == [1, 1, 2]
    spec = TreeSpec.load(tmp_path / "s" / "tree.json")
    bb = backbones.mlp(100, (8, 4, 4))
    tasks = load_data(data).tasks
    assert spec.count_params(bb, tasks) <= 1.03 * TreeSpec.shared(spec.tasks, 3).count_params(bb, tasks)
    assert "head 2 <- parents [" in capsys.readouterr().out


@pytest.mark.parametrize("flags, fragment", [
    (["--widths", "1,2"], "--widths` needs one entry per backbone stage (3). Received: --widths=[1, 2]"),
    (["--widths", "1,2,4"], "must end with at most one node per task (3). Received: --widths=[1, 2, 4]"),
    (["--widths", "1,0,3"], "entry 1 is not. Received: --widths=[1, 0, 3]"),
    (["--widths", "a"], "--widths must be integers separated by commas (e.g. 1,3,8). Received: --widths 'a'"),
    (["--logits-learning-rate", "0"], "argument --logits-learning-rate: must be a finite number > 0. Received: '0'"),
    (["--logits-learning-rate", "nan"], "argument --logits-learning-rate: must be a finite number > 0. Received: 'nan'"),
    (["--learning-rate", "-1"], "argument --learning-rate: must be a finite number > 0. Received: '-1'"),
    (["--balance", "-1"], "argument --balance: must be a finite number >= 0. Received: '-1'"),
    (["--warmup-epochs", "-1"], "argument --warmup-epochs: must be an int >= 0. Received: '-1'"),
    (["--budget", "0.5x"], "No tree fits `budget`='0.5x'"),
    (["--budget", "2x", "--widths", "1,2,3"], "takes --widths or --budget, not both. Received: --widths '1,2,3' --budget '2x'"),
])
def test_ltb_search_bad_input_exits_2_with_one_line(tmp_path, capsys, flags, fragment):
    rc = main(["search", "--method", "ltb", "--data", "planted:groups=2-1,train=50,seed=0",
               "--backbone", "mlp", "--backbone-arg", "widths=[4,4,4]", "--epochs", "1", *flags,
               "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and err.startswith("keras-branch search: error: ")
    assert fragment in err
    assert not (tmp_path / "s").exists()


def test_evaluate_bad_model_path(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "m.keras"), "--data", PLANTED]) == 2
    assert "--model file does not exist" in capsys.readouterr().err


def test_console_exit_status_is_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_branch.cli", "train", "--spec", _spec_file(tmp_path, "[]"),
         "--data", PLANTED, "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("keras-branch train: error: ") and "must be a JSON object" in last


def test_ltb_search_and_soft_ordering_training_through_the_cli(tmp_path):
    data = "planted:groups=2-1,train=200,seed=4"
    assert main(["search", "--method", "ltb", "--data", data, "--backbone", "mlp",
                 "--backbone-arg", "widths=[16,16,8]", "--widths", "1,2,3", "--epochs", "2",
                 "--out", str(tmp_path / "ltb")]) == 0
    spec = TreeSpec.load(tmp_path / "ltb" / "tree.json")
    assert sorted(spec.tasks) == ["g0_t0", "g0_t1", "g1_t0"] and spec.num_stages == 3
    branching = json.loads((tmp_path / "ltb" / "branching.json").read_text())
    assert [s["stage"] for s in branching["stages"]] == [2, 3]
    assert [len(s["nodes"]) for s in branching["stages"]] == [2, 3]
    for node in branching["stages"][1]["nodes"]:
        assert sum(node["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= node["margin"] <= 1.0 and node["used"]
    assert main(["train", "--spec", str(tmp_path / "ltb" / "tree.json"), "--data", data,
                 "--backbone", "mlp", "--backbone-arg", "widths=[16,16,8]", "--epochs", "1",
                 "--out", str(tmp_path / "retrained"), "--progress", "none"]) == 0
    assert main(["train", "--model", "soft-ordering", "--data", data, "--epochs", "1",
                 "--out", str(tmp_path / "soft"), "--progress", "none"]) == 0
    metrics = json.loads((tmp_path / "soft" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"g0_t0", "g0_t1", "g1_t0"}
    restored = keras.saving.load_model(tmp_path / "soft" / "model.keras")
    assert type(restored).__name__ == "SoftOrderingModel"
    assert main(["evaluate", "--model", str(tmp_path / "soft" / "model.keras"), "--data", data,
                 "--out", str(tmp_path / "soft_eval.json")]) == 0
    again = json.loads((tmp_path / "soft_eval.json").read_text())["test"]
    for task, values in metrics["test"].items():
        assert again[task]["mse"] == pytest.approx(values["mse"], rel=1e-5)


NUMERIC_FLAGS = [
    (["train", "--spec", "S", "--data", PLANTED], "--batch-size", "0", "must be an int >= 1"),
    (["train", "--spec", "S", "--data", PLANTED], "--epochs", "-3", "must be an int >= 1"),
    (["train", "--spec", "S", "--data", PLANTED], "--seed", "4294967296",
     "must be an int from 0 to 4294967295"),
    (["train", "--spec", "S", "--data", PLANTED], "--seed", "-1", "must be an int from 0"),
    (["train", "--spec", "S", "--data", PLANTED], "--learning-rate", "nan",
     "must be a finite number > 0"),
    (["train", "--spec", "S", "--data", PLANTED], "--learning-rate", "inf", "must be a finite number > 0"),
    (["train", "--spec", "S", "--data", PLANTED], "--learning-rate", "-1", "must be a finite number > 0"),
    (["train", "--spec", "S", "--data", PLANTED], "--weight-decay", "-0.1", "must be a finite number >= 0"),
    (["train", "--spec", "S", "--data", PLANTED], "--image-size", "x", "must be an int >= 1"),
    (["search", "--data", PLANTED], "--num-inputs", "0", "must be an int >= 1"),
    (["search", "--data", PLANTED], "--balance", "nan", "must be a finite number >= 0"),
    (["evaluate", "--model", "m.keras", "--data", PLANTED], "--batch-size", "0", "must be an int >= 1"),
    (["export", "m.keras"], "--check-samples", "0", "must be an int >= 1"),
    (["export", "m.keras"], "--check-samples", "-1", "must be an int >= 1"),
    (["evolve", "--data", PLANTED], "--candidates", "0", "must be an int >= 1"),
    (["evolve", "--data", PLANTED], "--scale", "0", "must be a number in (0, 1]"),
    (["evolve", "--data", PLANTED], "--scale", "1.5", "must be a number in (0, 1]"),
    (["evolve", "--data", PLANTED], "--scale", "nan", "must be a number in (0, 1]"),
    (["evolve", "--data", PLANTED], "--mutation-prob", "-0.1", "must be a number in [0, 1]"),
    (["evolve", "--data", PLANTED], "--final-epochs", "-1", "must be an int >= 0"),
    (["evolve", "--data", PLANTED], "--final-learning-rate", "0", "must be a finite number > 0"),
    (["evolve", "--data", PLANTED], "--finalists", "0", "must be an int >= 1"),
    (["evolve", "--data", PLANTED], "--final-batch-size", "0", "must be an int >= 1"),
    (["zoo", "train", "planted-affinity"], "--learning-rate", "nan", "must be a finite number > 0"),
    (["zoo", "train", "planted-affinity"], "--batch-size", "0", "must be an int >= 1"),
]


@pytest.mark.parametrize("command,flag,value,fragment", NUMERIC_FLAGS,
                         ids=[f"{c[0]}{f}={v}" for c, f, v, _ in NUMERIC_FLAGS])
def test_bad_numbers_end_with_one_line_naming_the_flag(tmp_path, capsys, command, flag, value,
                                                       fragment):
    out = tmp_path / "out"
    rc = main([*command, "--out", str(out), flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and "Traceback" not in err
    prog = "keras-branch " + " ".join(command[:2] if command[0] == "zoo" else command[:1])
    assert err.startswith(f"{prog}: error: argument {flag}: {fragment}"), err
    assert f"Received: {value!r}" in err
    assert not out.exists()


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("keras-branch ")
    assert main(["train", "--help"]) == 0
    assert "--learning-rate" in capsys.readouterr().out


@pytest.mark.parametrize("data,fragment", [
    ("planted:seed=-1", "`seed` must be an int from 0 to 4294967295. Received: seed=-1"),
    ("planted:seed=4294967296", "Received: seed=4294967296"),
    ("planted:train=0", "`num_train` must be an int >= 1. Received: num_train=0"),
])
def test_bad_planted_options_end_with_one_line(tmp_path, capsys, data, fragment):
    rc = main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", data,
               "--out", str(tmp_path / "out"), "--epochs", "1", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and fragment in err
    assert not (tmp_path / "out").exists()


def _not_models(tmp_path):
    """Files that are not loadable models, as a user might pass them."""
    import zipfile

    spec = tmp_path / "tree.keras"
    spec.write_text(ONE_TASK)
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    truncated = tmp_path / "cut.keras"
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as z:
        z.writestr("config.json", "{}" * 100)
    truncated.write_bytes((tmp_path / "whole.zip").read_bytes()[:40])
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("config.json", '{"class_name": "NoSuchModel", "config": {}}')
        z.writestr("metadata.json", '{"keras_version": "3.0.0"}')
    h5 = tmp_path / "model.h5"
    h5.write_text("not hdf5")
    return [spec, text, truncated, broken, h5]


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_files_that_are_not_models_end_with_one_line(tmp_path, capsys, command):
    for path in _not_models(tmp_path):
        before = path.read_bytes()
        out = tmp_path / "out"
        if command == "evaluate":
            argv = ["evaluate", "--model", str(path), "--data", PLANTED]
        else:
            argv = ["export", str(path), "--out", str(out), "--formats", "tflite"]
        assert main(argv) == 2, path
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert err.startswith(f"keras-branch {command}: error: ") and repr(str(path)) in err, err
        assert path.read_bytes() == before and not out.exists()


def test_augment_on_flat_data_ends_with_one_line(tmp_path, capsys):
    rc = main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
               "--augment", '{"shift": 0.1}', "--out", str(tmp_path / "out"), "--epochs", "1",
               "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "`augment` transforms images (height, width, channels)" in err and "(100,)" in err
    assert not (tmp_path / "out").exists()


def _npz_with(tmp_path, name, change):
    """A planted regression npz whose arrays `change(x_train, y_train, y_test)` edited in place."""
    data = planted_groups(group_sizes=(1,), num_train=40, num_validation=8, num_test=8, seed=2)
    train, test = data.split("train"), data.split("test")
    x, y, y_test = train.x.copy(), train.y["g0_t0"].copy(), test.y["g0_t0"].copy()
    change(x, y, y_test)
    bad = MultiTaskData.__new__(MultiTaskData)  # skip validation to write the file
    bad.tasks, bad.info, bad.name = data.tasks, {}, name
    bad.splits = {"train": Split(x, {"g0_t0": y}), "validation": data.split("validation"),
                  "test": Split(test.x, {"g0_t0": y_test})}
    save_npz(tmp_path / f"{name}.npz", bad)
    return f"npz:{tmp_path / name}.npz"


def _set(array, index, value):
    array[index] = value


@pytest.mark.parametrize("change,fragment", [
    (lambda x, y, t: _set(x, (5, 3), np.nan),
     "1 input row(s) hold NaN or infinity, the first is row 5"),
    (lambda x, y, t: _set(x, (slice(7, 9), 0), np.inf), "2 input row(s) hold NaN or infinity"),
    (lambda x, y, t: _set(x, slice(None), 1e30), "The training loss became inf in epoch 1"),
])
def test_bad_inputs_end_with_one_line_before_anything_is_saved(tmp_path, capsys, change, fragment):
    data = _npz_with(tmp_path, "bad", change)
    rc = main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", data,
               "--out", str(tmp_path / "out"), "--epochs", "2", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "spec.json"]


def test_a_task_without_test_labels_reports_no_score(tmp_path, capsys):
    data = _npz_with(tmp_path, "unlabelled", lambda x, y, t: _set(t, slice(None), np.nan))
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", data,
                 "--out", str(tmp_path / "out"), "--epochs", "1", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "test g0_t0  no labelled samples  (n=0)" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["test"]["g0_t0"] == {"n": 0}


def test_output_paths_the_file_system_refuses_end_with_one_line(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    base = ["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
            "--epochs", "1", "--progress", "none"]
    cases = [
        (["--out", ""], "--out must be a path. Received: --out ''"),
        (["--out", str(tmp_path / "o1"), "--tensorboard", str(a_file / "tb")], "file.txt"),
        (["--out", str(tmp_path / "o2"), "--checkpoint-dir", str(a_file)], "file.txt"),
        (["--out", str(a_file / "run")], "file.txt"),
        (["--out", str(tmp_path / ("n" * 300))], "n" * 20),
    ]
    for flags, fragment in cases:
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("keras-branch train: error: "), err
        assert fragment in err, err
    assert a_file.read_text() == "mine"
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_the_printed_train_command_builds_the_searched_model(tmp_path, capsys):
    import shlex

    from keras_branch import TreeSpec, backbones
    from keras_branch.saving import load_task_model

    search = tmp_path / "search"
    assert main(["search", "--data", PLANTED, "--backbone", "mlp",
                 "--backbone-arg", "widths=[8,8,4]", "--budget", "2x", "--probe-epochs", "1",
                 "--num-inputs", "32", "--out", str(search)]) == 0
    line = capsys.readouterr().out.split("train it with: ")[-1].strip()
    argv = shlex.split(line)
    assert argv[:2] == ["keras-branch", "train"]
    assert "--backbone-arg" in argv and "widths=[8,8,4]" in argv and "--image-size" in argv
    run = tmp_path / "run"
    argv = [str(run) if a == "RUN_DIR" else a for a in argv[1:]]
    assert main([*argv, "--epochs", "1", "--progress", "none"]) == 0
    spec = TreeSpec.load(search / "tree.json")
    data = load_data(PLANTED)
    expected = spec.count_params(backbones.mlp(100, widths=[8, 8, 4]), data.tasks)
    assert load_task_model(run / "model.keras").count_params() == expected


# === Issue 18: bad files, bad specs, stale temporaries, help, quiet console ===


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"keras-branch {command}: error: "), err
    return err


def _bad_data_files(tmp_path):
    """`--data` values whose files are not what they claim, with the fragment of their error."""
    import pickle
    import zipfile

    import tensorflow as tf

    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"x_train": [1, 2]}))
    np.savez(tmp_path / "ragged.npz", tasks=np.array('[{"name": "a", "kind": "binary"}]'),
             x_train=np.array([[1.0], [2.0, 3.0]], dtype=object), y_train_0=np.array([0, 1]))
    np.savez(tmp_path / "surrogate.npz", tasks=np.array(
        json.dumps([{"name": "a\udc80", "kind": "binary"}])), x_train=np.zeros((2, 2)),
        y_train_0=np.array([0, 1]))
    png = tf.io.encode_png(tf.zeros((8, 8, 1), tf.uint8)).numpy()
    with zipfile.ZipFile(tmp_path / "fake.zip", "w") as z:
        for character in ("character01", "character02"):
            for drawer in range(1, 21):
                fake = character == "character01" and drawer == 7
                z.writestr(f"A/{character}/0001_{drawer:02d}.png", b"GIF89a?" if fake else png)
    return [
        (f"npz:{tmp_path / 'pickle.npz'}", "it holds pickled Python objects"),
        (f"npz:{tmp_path / 'ragged.npz'}", "`x_train` is an object array"),
        (f"npz:{tmp_path / 'surrogate.npz'}", "Received: name='a\\udc80'"),
        (f"omniglot:{tmp_path / 'fake.zip'}", "'A/character01/0001_07.png' is not a readable PNG"),
    ]


def test_bad_data_files_end_with_one_line_naming_them(tmp_path, capsys):
    spec = _spec_file(tmp_path, ONE_TASK)
    for data, fragment in _bad_data_files(tmp_path):
        before = sorted(os.listdir(tmp_path))
        assert main(["train", "--spec", spec, "--data", data, "--out", str(tmp_path / "out"),
                     "--epochs", "1", "--progress", "none"]) == 2, data
        assert fragment in _one_line_error(capsys, "train"), data
        assert sorted(os.listdir(tmp_path)) == before


def test_a_huge_adapter_width_ends_with_one_line(tmp_path, capsys):
    spec = _spec_file(tmp_path, '{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, 0, 0]}, '
                                '"adapters": {"g0_t0": [0, 1000000000000000000, 0]}}')
    assert main(["train", "--spec", spec, "--data", PLANTED, "--out", str(tmp_path / "out"),
                 "--epochs", "1", "--progress", "none"]) == 2
    assert ("`adapters['g0_t0'][1]` must be an int from 0 to 65536. Received: "
            "adapters['g0_t0'][1]=1000000000000000000") in _one_line_error(capsys, "train")
    assert not (tmp_path / "out").exists()


def test_metrics_that_are_nan_are_not_written_as_json(trained_run, tmp_path, capsys):
    model = keras.saving.load_model(trained_run / "model.keras")
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(tmp_path / "nan.keras")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(tmp_path / "nan.keras"), "--data", PLANTED,
                 "--out", str(out)]) == 2
    assert (f"Cannot write {str(out)!r} as standard JSON: [\"test\"][\"g0_t0\"][\"loss\"] is nan"
            in _one_line_error(capsys, "evaluate"))
    assert not out.exists()


def test_stale_temporaries_of_a_killed_save_are_cleaned_by_the_next_run(trained_run, tmp_path):
    # What a kill during the final save (or the export) leaves beside --out: a temporary
    # named after the target and the dead writer's pid (no process has pid 99999999).
    stale_run = tmp_path / ".run.kbtmp-99999999-a1b2c3.tmp"
    stale_run.mkdir()
    (stale_run / "model.keras").write_text("half")
    stale_export = tmp_path / ".export.kbtmp-99999999-d4e5f6.tmp"
    stale_export.mkdir()
    users = [tmp_path / ".run.backup.tmp", tmp_path / ".run.kbtmp-notes.tmp",
             tmp_path / ".other.kbtmp-99999999-x.tmp"]  # not ours, or another target's
    for path in users:
        path.write_text("mine")
    assert main(["train", "--spec", _spec_file(tmp_path, ONE_TASK), "--data", PLANTED,
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--progress", "none"]) == 0
    assert main(["export", str(tmp_path / "run" / "model.keras"), "--out", str(tmp_path / "export"),
                 "--formats", "saved_model"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["spec.json", "run", "export"] + [p.name for p in users])
    assert all(p.read_text() == "mine" for p in users)


def test_zoo_train_without_out_says_nothing_is_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["zoo", "train", "planted-affinity", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "no --out: the model is trained and scored but not saved" in lines[1]
    assert any(line.startswith("epoch 1/2 ") for line in lines)  # progress, one line per epoch
    assert lines[-1] == "nothing saved (no --out); pass --out DIR to keep the model and its metrics"
    assert os.listdir(tmp_path) == []


def _parsers(parser, path=()):
    """Every parser of the CLI with its command words (argparse keeps subparsers in `choices`)."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_shows_its_defaults_and_an_example():
    import argparse

    from keras_branch.cli import build_parser

    seen = []
    for path, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        words = " ".join(("keras-branch", *path))
        assert "example" in text and f"{words} " in text.split("example")[-1] + " ", words
        for action in parser._actions:
            default = action.default
            if default is None or default is False or default == [] or default is argparse.SUPPRESS:
                continue
            assert (f"(default: {default})" in text
                    or "default" in (action.help or "").lower()), (words, action.option_strings)
        seen.append(words)
    assert len(seen) == 14  # top, 7 subcommands, 6 zoo subcommands
    help_of_evaluate = " ".join(_help_text(["evaluate"]).split())
    assert "'npz:PATH'" in help_of_evaluate and "(default: test)" in help_of_evaluate


def _help_text(argv):
    import contextlib
    import io

    from keras_branch.cli import build_parser

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return buffer.getvalue()


def _console(*args, cwd):
    """Runs the installed console script as a user would (no TF_CPP_MIN_LOG_LEVEL of ours)."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-branch")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def _tf_log_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(("I0000", "W0000", "E0000"))]


@pytest.mark.slow  # two console-script subprocesses, each importing TensorFlow
def test_the_console_script_keeps_tensorflow_logs_out_unless_verbose(tmp_path):
    spec = _spec_file(tmp_path, '{"tasks": ["g0_t0", "g0_t1", "g1_t0"], "routes": '
                                '{"g0_t0": [0, 0, 0], "g0_t1": [0, 0, 0], "g1_t0": [0, 0, 1]}}')
    version = _console("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("keras-branch ")
    assert version.stderr == ""
    train = _console("train", "--spec", spec, "--data", "planted:groups=2-1,train=100",
                     "--epochs", "1", "--out", "run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert _tf_log_lines(train.stderr) == [] and train.stderr == "", train.stderr
    assert "saved to run" in train.stdout
    bad = _console("train", "--spec", spec, "--data", "planted", "--epochs", "0", "--out", "o",
                   cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("keras-branch train: error: argument --epochs")
    verbose = _console("--verbose", "--version", cwd=tmp_path)
    assert verbose.returncode == 0 and _tf_log_lines(verbose.stderr) != []


def test_noise_filter_drops_tensorflow_lines_only():
    from keras_branch_launcher import is_noise

    for line in [
        b"I0000 00:00:1796070151.216408   24746 port.cc:153] oneDNN custom operations are on.",
        b"W0000 00:00:1796070166.187339   24827 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
        b"E0000 00:00:1796070163.111096   24827 cuda_platform.cc:52] failed call to cuInit",
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32",
        b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    ]:
        assert is_noise(line), line
    for line in [
        b"keras-branch train: error: --epochs must be an int >= 1. Received: '0'",
        b"Traceback (most recent call last):",
        b"F0000 00:00:1796070163.111096   24827 some.cc:1] Check failed: fatal",
        b"I0000 is the name of my task",
    ]:
        assert not is_noise(line), line
