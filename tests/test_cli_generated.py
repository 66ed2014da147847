"""Generated command lines: malformed flags, paths and data never end in a traceback.

A seeded generator draws command lines for every subcommand from pools of
good and bad values (numbers out of range, paths that are files, folders of
the user's, missing files, files that are not what the flag wants). Each is
run through `keras_branch.cli.main` in-process and must end with exit 0, or
with exit 2 and one line on stderr; every file and folder that existed
before is unchanged unless `--overwrite` was passed. The default run draws
`LINES` lines; `--runslow` draws `SLOW_LINES`.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from keras_branch.cli import main

LINES = 300
SLOW_LINES = 2000

PLANTED = "planted:groups=1-1,train=40,seed=3"
ONE_TASK = '{"tasks": ["g0_t0"], "routes": {"g0_t0": [0, 0, 0]}}'


def _snapshot(root) -> dict[str, str]:
    """Path -> content hash (or 'dir') of everything under `root`."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            state[os.path.join(folder, d)] = "dir"
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as handle:
                state[path] = hashlib.sha256(handle.read()).hexdigest()
    return state


def _pools(tmp):
    """Per kind of value: (good values, bad values) (files, folders, numbers, text)."""
    user_file = os.path.join(tmp, "user", "notes.txt")
    user_dir = os.path.join(tmp, "user")
    spec = os.path.join(tmp, "inputs", "tree.json")
    bad_paths = [user_file, user_dir, os.path.join(tmp, "missing.json"), "",
                 os.path.join(user_file, "below.json")]
    return {
        "spec": ([spec], bad_paths),
        "model": ([os.path.join(tmp, "inputs", "bad.keras")], bad_paths),
        "out": ([os.path.join(tmp, "out", "run"), os.path.join(tmp, "out", "other")],
                [user_dir, user_file, "", os.path.join(user_file, "run"),
                 os.path.join(tmp, "out", "n" * 300)]),
        "data": ([PLANTED],
                 ["planted:seed=-1", "planted:train=0", "planted:groups=a", "omniglot:",
                  f"npz:{user_file}", f"npz:{os.path.join(tmp, 'missing.npz')}", "nope", ""]),
        "number": (["1", "2", "3"], ["0", "-1", "nan", "inf", "1e30", "a", "4294967296", "", "0.5"]),
        "fraction": (["0.5", "1"], ["0", "1.5", "nan", "-1"]),
        "json": (['{"shift": 0.1}', "{}"], ["{", "[]", '{"bogus": 1}', "null"]),
        "method": (["affinity", "tag", "ltb"], ["bogus"]),
        "weighting": (["equal", "dwa", "pcgrad", "fixed:g0_t0=2"],
                      ["bogus", "fixed:g0_t0=-1", "fixed:nope=1", "dwa:tau=1", "cagrad:c=2"]),
        "budget": (["2x", "1.5x"], ["0", "0.5x", "abc", "-3"]),
        "widths": (["1,2,2"], ["a", "1,0,2", "1,2"]),
        "formats": (["tflite", "saved_model"], ["bogus", ""]),
    }


COMMANDS = {
    "train": {"--spec": "spec", "--data": "data", "--out": "out", "--epochs": "number",
              "--batch-size": "number", "--learning-rate": "number", "--seed": "number",
              "--checkpoint-dir": "out", "--tensorboard": "out", "--augment": "json",
              "--weight-decay": "number", "--warmup-epochs": "number", "--weighting": "weighting"},
    "search": {"--data": "data", "--out": "out", "--budget": "budget", "--probe-epochs": "number",
               "--num-inputs": "number", "--seed": "number", "--widths": "widths",
               "--method": "method"},
    "evaluate": {"--model": "model", "--data": "data", "--out": "out", "--batch-size": "number"},
    "export": {"model": "model", "--out": "out", "--data": "data", "--check-samples": "number",
               "--formats": "formats", "--seed": "number"},
    "evolve": {"--root": "model", "--data": "data", "--out": "out", "--scale": "fraction",
               "--candidates": "number", "--state": "out", "--passes": "number"},
}
def _line(rng: random.Random, pools) -> list[str]:
    command = rng.choice(sorted(COMMANDS))
    argv = [command]
    flags = COMMANDS[command]
    for flag, kind in flags.items():
        required = flag in ("model", "--root", "--spec", "--data", "--out", "--model")
        if rng.random() < (0.1 if required else 0.5):
            continue
        good, bad = pools[kind]
        value = rng.choice(good if rng.random() < 0.75 else bad)
        argv += [value] if flag == "model" else [flag, value]
    if rng.random() < 0.2:
        argv.append("--overwrite")
    # Whatever trains, trains for one short epoch on tiny data (with the flag its
    # method takes: the others' flags are refused).
    if command == "search":
        method = argv[argv.index("--method") + 1] if "--method" in argv else "affinity"
        flag = "--probe-epochs" if method == "affinity" else "--epochs"
        if flag not in argv:
            argv += [flag, "1"]
    elif command in ("train", "evolve"):
        argv += ["--epochs", "1"] if command == "train" else ["--candidate-epochs", "1"]
    return argv


def _run_lines(tmp_path, capsys, count: int, seed: int):
    tmp = str(tmp_path)
    os.makedirs(os.path.join(tmp, "user"))
    os.makedirs(os.path.join(tmp, "inputs"))
    os.makedirs(os.path.join(tmp, "out"))
    with open(os.path.join(tmp, "user", "notes.txt"), "w") as f:
        f.write("mine")
    with open(os.path.join(tmp, "inputs", "tree.json"), "w") as f:
        f.write(ONE_TASK)
    with open(os.path.join(tmp, "inputs", "bad.keras"), "wb") as f:
        f.write(b"PK\x03\x04 not a model")
    pools = _pools(tmp)
    rng = random.Random(seed)
    protected = [os.path.join(tmp, "user"), os.path.join(tmp, "inputs")]
    for _ in range(count):
        argv = _line(rng, pools)
        before = {p: _snapshot(p) for p in protected}
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc in (0, 2), (argv, rc, err)
        assert "Traceback" not in err, (argv, err)
        if rc == 2:
            assert err.count("\n") == 0 and err.startswith("keras-branch"), (argv, err)
        if "--overwrite" not in argv:
            for path in protected:
                assert _snapshot(path) == before[path], (argv, path)


def test_generated_command_lines_end_cleanly(tmp_path, capsys):
    _run_lines(tmp_path, capsys, LINES, seed=0)


@pytest.mark.slow
def test_many_generated_command_lines_end_cleanly(tmp_path, capsys):
    _run_lines(tmp_path, capsys, SLOW_LINES, seed=1)
