"""The inference benchmark script: FLOP counting by hand, and a tiny end-to-end run."""

from pathlib import Path

import pytest

from keras_branch import Task, TreeSpec, backbones, build_model

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "inference_benchmark")


def test_flops_of_an_mlp_tree_by_hand(bench):
    tasks = [Task("a", "multiclass", classes=10), Task("b", "regression")]
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    model = build_model(spec, backbones.mlp(16, widths=(32, 8)), tasks)
    dense = lambda fan_in, units: 2 * fan_in * units + units  # noqa: E731
    # Stage 1 once (shared), stage 2 twice, heads 10 and 1 units.
    expected = dense(16, 32) + 2 * dense(32, 8) + dense(8, 10) + dense(8, 1)
    assert bench.count_flops(model) == expected


def test_flops_of_a_convnet_by_hand(bench):
    tasks = [Task("a", "multiclass", classes=3), Task("b", "multiclass", classes=3)]
    model = build_model(TreeSpec.independent(["a", "b"], 2),
                        backbones.convnet4((8, 8, 1), filters=4, num_stages=2), tasks)
    conv = lambda hw, cin, cout: 2 * 9 * cin * cout * hw * hw  # noqa: E731 (no bias: batch norm)
    per_task = conv(8, 1, 4) + conv(4, 4, 4) + (2 * (2 * 2 * 4) * 3 + 3)
    assert bench.count_flops(model) == 2 * per_task


def test_benchmark_specs_share_as_named(bench):
    specs = bench.benchmark_specs(["a", "b", "c", "d"], 4)
    assert specs["shared"].blocks_per_stage() == [1, 1, 1, 1]
    assert specs["independent"].blocks_per_stage() == [4, 4, 4, 4]
    assert specs["branched"].blocks_per_stage() == [1, 2, 4, 4]
    assert specs["branched"].is_tree


def test_tiny_benchmark_prints_its_table(bench, tmp_path, capsys):
    code = bench.main(["--backbone", "mlp", "--tasks", "2", "--image-size", "16",
                       "--width", "16", "--runs", "3", "--formats", "saved_model,tflite",
                       "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 4  # header + 3 models
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "independent", "shared", "branched"]
    assert "FLOPs(branched)/FLOPs(shared)" in out
    rows = bench.run_benchmark("mlp", 2, 16, width=16, runs=3, formats=("tflite",))
    by = {r["model"]: r for r in rows}
    assert by["shared"]["flops"] < by["branched"]["flops"] < by["independent"]["flops"]
    assert by["shared"]["params"] < by["branched"]["params"] < by["independent"]["params"]
    assert all(r["litert_ms"] > 0 and r["size_tflite"] > 0 for r in rows)
    ok, text = bench.ratio_check(rows)
    assert isinstance(ok, bool) and "factor" in text
