"""Smoke test of benchmarks/weighting.py: the planted setting, two seeds, one epoch."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from keras_branch import Task
from keras_branch.data import MultiTaskData
from keras_branch.data.multitask import Split

from conftest import load_script

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "weighting.py"


@pytest.fixture(scope="module")
def weighting_benchmark():
    return load_script(BENCHMARK, "weighting_benchmark")


@pytest.mark.slow  # about a minute on 2 cores: the default run stays under 15 min
def test_table_and_json(weighting_benchmark, tmp_path, capsys):
    args = ["--settings", "planted/conflict", "--methods", "equal,uncertainty,pcgrad",
            "--seeds", "0,1", "--epochs", "2", "--planted-train", "256", "--out", str(tmp_path)]
    assert weighting_benchmark.main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "weighting.json").read_text())
    rows = result["settings"]["planted/conflict"]
    assert list(rows) == ["equal", "uncertainty", "pcgrad"]
    for name, row in rows.items():
        assert len(row["scores"]) == 2 and all(0 < s < 2 for s in row["scores"])
        assert row["mean"] == pytest.approx(np.mean(row["scores"]))
        assert row["step_seconds"] > 0
        assert f"| planted/conflict | {name} | {row['mean']:.4f} ± {row['std']:.4f} |" in out
    assert rows["equal"]["step_vs_equal"] == 1.0
    assert rows["pcgrad"]["delta_vs_equal"] == pytest.approx(rows["pcgrad"]["mean"] - rows["equal"]["mean"])
    # The learned weights of each seed are kept (uncertainty's moved off 1).
    assert len(rows["uncertainty"]["weights"][0]) == 9
    assert any(abs(w - 1) > 1e-4 for w in rows["uncertainty"]["weights"][0].values())
    assert not (tmp_path / "weighting.partial.json").exists()
    # An existing result is refused without --overwrite.
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        weighting_benchmark.main(args)


def test_unknown_method_is_refused(weighting_benchmark):
    with pytest.raises(SystemExit, match="unknown weighting 'softmax'"):
        weighting_benchmark.main(["--settings", "planted/conflict", "--methods", "equal,softmax"])


def test_fixed_weights_are_inverse_initial_losses(weighting_benchmark):
    x = np.zeros((4, 2), "float32")
    tasks = [Task("a", "multiclass", classes=4), Task("b", "multiclass", classes=16),
             Task("c", "regression")]
    y = {"a": np.zeros(4), "b": np.zeros(4), "c": np.zeros(4, "float32")}
    data = MultiTaskData(tasks, {"train": Split(x, y)})
    weights = weighting_benchmark.initial_loss_weights(data)
    raw = [1 / math.log(4), 1 / math.log(16), 1.0]
    assert list(weights.values()) == pytest.approx([r / np.mean(raw) for r in raw])
