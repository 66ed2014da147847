"""benchmarks/forty_tasks.py: a tiny run of its main, its --out rule and its grouping rules."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from keras_branch import TreeSpec

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "forty_tasks.py"


@pytest.fixture(scope="module")
def forty():
    spec = importlib.util.spec_from_file_location("forty_tasks_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: 4 tasks in 2 groups, 3 stages, one epoch everywhere: every path of the script, small.
TINY = ["--seeds", "0", "--groups", "2-2", "--dim", "8", "--num-train", "128",
        "--num-validation", "32", "--num-test", "32", "--stages", "8,8,4", "--epochs", "1",
        "--probe-epochs", "1", "--ltb-epochs", "1", "--tag-every", "1", "--in-process"]


@pytest.mark.slow  # about a minute on 2 cores: the default run stays under 15 min
def test_tiny_run_prints_and_writes_one_row_per_method(forty, tmp_path):
    lines = []
    out = tmp_path / "out"
    result = forty.main(TINY + ["--methods", "rsa,tag,ltb", "--cheap", "1:0.5", "--out", str(out)],
                        log=lines.append)
    printed = "\n".join(lines)
    saved = json.loads((out / "forty_tasks.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["shared", "planted", "rsa", "tag", "ltb"]
    header = "| " + " | ".join(forty.COLUMNS) + " |"
    assert header in printed and result["table"].startswith(header)
    for name in ("ARI", "purity", "parameters", "test MSE", "search s", "x shared", "peak RSS MiB"):
        assert name in forty.COLUMNS
    for row in rows:
        assert f"| {row['method']} | 0 |" in result["table"]
        assert row["params"] > 0
        assert np.isfinite(row["test_mse"]) and row["test_mse"] > 0
        if row["method"] != "planted":
            assert row["seconds"] > 0 and row["ratio"] > 0
            assert row["peak_mib"] > 0 and row["peak_growth_mib"] >= 0
        if row["method"] != "shared":
            assert -1.0 <= row["ari"] <= 1.0
            assert 0.0 < row["purity"] <= 1.0
            assert sorted(n for g in row["found"] for n in g) == ["g0_t0", "g0_t1", "g1_t0", "g1_t1"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["shared"]["ratio"] == 1.0
    assert by_method["planted"]["ari"] == 1.0 and by_method["planted"]["purity"] == 1.0
    # The trees were bought with one block per group at the group stage (stage 2 of 3).
    assert by_method["rsa"]["grouping"] == "stage 2 (2 blocks bought)"
    assert by_method["ltb"]["widths"] == [2, 4, 4]
    assert by_method["ltb"]["grouping"] == "stage 1 (2 nodes)"
    # The cheap probes: one row, one Spearman per stage, compared with the full probes.
    (cheap,) = result["cheap"]
    assert (cheap["epochs"], cheap["fraction"]) == (1, 0.5)
    assert len(cheap["spearman"]) == 3 and all(-1 <= s <= 1 for s in cheap["spearman"])
    assert cheap["seconds"] > 0 and isinstance(cheap["same_tree"], bool)
    assert "| 0 | 1 | 0.5 |" in printed
    # A second run into the same folder is refused before any training.
    with pytest.raises(SystemExit, match="--overwrite"):
        forty.main(TINY + ["--methods", "tag", "--out", str(out)], log=lines.append)


def test_unknown_method_and_bad_cheap_variant_are_refused(forty):
    with pytest.raises(SystemExit, match="unknown"):
        forty.main(["--methods", "rsa,magic"], log=lambda line: None)
    with pytest.raises(SystemExit, match="EPOCHS:FRACTION"):
        forty.main(["--cheap", "one:0.5"], log=lambda line: None)
    with pytest.raises(SystemExit, match="fraction"):
        forty.main(["--cheap", "1:1.5"], log=lambda line: None)


def test_purity_and_scores_of_groupings(forty):
    planted = [["a", "b"], ["c", "d"]]
    assert forty.purity([["a"], ["b"], ["c", "d"]], planted) == 1.0  # splits stay pure
    assert forty.purity([["a", "c"], ["b", "d"]], planted) == 0.5
    assert forty.purity([["a", "b", "c", "d"]], planted) == 0.5
    scores = forty.grouping_scores([["d", "c"], ["b", "a"]], planted)
    assert scores["ari"] == 1.0 and scores["purity"] == 1.0
    assert forty.grouping_scores([["a", "c"], ["b", "d"]], planted)["ari"] < 0


def test_evolution_grouping_is_by_deepest_shared_block(forty):
    # a and b share stage 2's block 1; c shares only stage 1's block with a and b;
    # d clones every block and stops after stage 1: it shares nothing.
    spec = TreeSpec(["a", "b", "c", "d"],
                    {"a": [0, 1, 0], "b": [0, 1, 2], "c": [0, 3, 4], "d": [5, 6, 7]},
                    {"a": 3, "b": 3, "c": 3, "d": 1})
    groups = sorted(sorted(g) for g in forty.deepest_shared_grouping(spec))
    assert groups == [["a", "b"], ["c"], ["d"]]


def test_mixing_weights_cluster_by_similarity(forty):
    near = np.eye(2) * 0.9 + 0.05
    far = np.ones((2, 2)) * 0.5
    mixing = {"a": near, "b": near + 0.01, "c": far, "d": far - 0.01}
    groups = sorted(sorted(g) for g in forty.mixing_grouping(mixing, 2))
    assert groups == [["a", "b"], ["c", "d"]]
    assert forty.closest_stage([2, 4, 8, 16, 40], 8) == 2
    assert forty.closest_stage([2, 4, 4], 3) == 0  # a tie goes to the shallower stage
    assert forty.closest_stage([2, 4, 4], 4) == 1
