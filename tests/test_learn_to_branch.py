"""Learning to Branch: supernet, extraction, the search on planted groups, export."""

import json

import keras
import numpy as np
import pytest

from keras_branch import SearchError, Task, TreeSpec, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.errors import OutputExistsError
from keras_branch.search.learn_to_branch import (
    BranchingSupernet,
    build_supernet,
    default_widths,
    extract_model,
    extract_spec,
    format_branching,
    branching_report,
    learn_to_branch,
    node_name,
    partition_ari,
    train_supernet,
    undecided,
    widths_for_budget,
)
from keras_branch.compiling import compile_model
from keras_branch.search.workflow import budget_for_blocks
from keras_branch.testing import check_tflite_parity, run_model_test
from keras_branch.training import fit_spec

from conftest import load_script

TASKS = [Task("a", "regression"), Task("b", "binary"), Task("c", "multiclass", classes=3)]


def small_batch(n=8, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("float32")
    y = {
        "a": rng.standard_normal(n).astype("float32"),
        "b": rng.integers(0, 2, n).astype("int32"),
        "c": rng.integers(-1, 3, n).astype("int32"),
    }
    return x, y


def set_choices(net, choices):
    """Makes every node's argmax parent the one in `choices[d]` (stages 2..D)."""
    for bp, chosen in zip(net.branch_points, choices):
        logits = np.zeros((bp.num_children, bp.num_parents), "float32")
        logits[np.arange(bp.num_children), chosen] = 1.0
        bp.logits.assign(logits)


# === The supernet ===


def test_supernet_passes_shared_model_test():
    x, y = small_batch()
    model = run_model_test(
        lambda: build_supernet(backbones.mlp(6, (8, 8, 4)), TASKS, widths=(1, 2, 3), seed=0),
        x, y, {"a": (None, 1), "b": (None, 1), "c": (None, 3)}, compile_fn=compile_model,
    )
    assert isinstance(model, BranchingSupernet)
    assert [bp.name for bp in model.branch_points] == ["branch2", "branch3"]
    assert [tuple(bp.logits.shape) for bp in model.branch_points] == [(2, 1), (3, 2)]
    # Nodes: 1 + 2 + 3 blocks; heads; logits (trainable only where P > 1).
    blocks = (6 * 8 + 8) + 2 * (8 * 8 + 8) + 3 * (8 * 4 + 4)
    heads = 5 + 5 + 15
    logits = 2 + 6
    scalars = 2 * 2  # temperature and uniform-mixing flag per BranchPoint
    assert model.count_params() == blocks + heads + logits + scalars


def test_default_and_invalid_widths():
    assert default_widths(3, 8) == [2, 4, 8]
    assert default_widths(5, 40) == [2, 4, 8, 16, 40]
    assert default_widths(2, 3) == [2, 3]
    bb = backbones.mlp(6, (8, 8, 4))
    with pytest.raises(SearchError, match=r"one entry per backbone stage \(3\).*Received: widths=\[2, 3\]"):
        build_supernet(bb, TASKS, widths=(2, 3))
    with pytest.raises(SearchError, match=r"`widths` must end with at most one node per task \(3\). Received: widths=\[1, 2, 4\]"):
        build_supernet(bb, TASKS, widths=(1, 2, 4))
    with pytest.raises(SearchError, match=r"entry 0 is not. Received: widths=\[0, 2, 3\]"):
        build_supernet(bb, TASKS, widths=(0, 2, 3))
    with pytest.raises(SearchError, match="Received: widths='2,3'"):
        build_supernet(bb, TASKS, widths="2,3")


# === Extraction ===

EIGHT = [Task(f"t{i}", "regression") for i in range(8)]


def test_extract_spec_follows_argmax_parents_and_merges_paths():
    net = build_supernet(backbones.mlp(6, (4, 4, 4)), EIGHT, widths=(2, 4, 8))
    # Leaves -> middle nodes 0,0,0,2,2,2,3,3 (node 1 unused); middle -> roots 1,0,1,1.
    set_choices(net, [[1, 0, 1, 1], [0, 0, 0, 2, 2, 2, 3, 3]])
    spec = extract_spec(net)
    names = [t.name for t in EIGHT]
    expected = TreeSpec.from_partitions(
        [[names], [names[:3], names[3:6], names[6:]], [[n] for n in names]]
    )
    assert spec == expected
    assert spec.is_tree
    # Canonical ids: renumbered 0, 1, ... by first use; the unused node is gone.
    assert spec.routes["t0"] == [0, 0, 0]
    assert spec.routes["t3"] == [0, 1, 3]
    assert spec.routes["t7"] == [0, 2, 7]
    assert spec.blocks_per_stage() == [1, 3, 8]
    assert spec == spec.canonical() and spec.routes == spec.canonical().routes

    # Middle nodes on different roots split the tasks at stage 1 too.
    set_choices(net, [[0, 0, 1, 1], [0, 0, 0, 2, 2, 2, 3, 3]])
    assert extract_spec(net).partitions()[:2] == [[names[:3], names[3:]], [names[:3], names[3:6], names[6:]]]


def test_extracted_model_equals_supernet_inference_exactly():
    rng = np.random.default_rng(0)
    net = build_supernet(backbones.mlp(6, (5, 4, 3)), EIGHT, widths=(2, 3, 8), seed=1)
    for layer in net.layers:  # non-trivial weights everywhere
        layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()]
                          if not layer.name.startswith("branch") else layer.get_weights())
    set_choices(net, [[1, 0, 1], [2, 0, 2, 1, 1, 0, 2, 2]])
    tree = extract_model(net)
    spec = extract_spec(net)
    assert tree.spec == spec
    assert tree.count_params() == spec.count_params(net.backbone, net.tasks)
    assert tree.count_params() < net.count_params()
    x = rng.standard_normal((16, 6)).astype("float32")
    want = net(x, training=False)
    got = tree(x, training=False)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
    # Without copied weights it is the fresh tree that retraining starts from.
    fresh = extract_model(net, copy_weights=False)
    assert fresh.spec == spec
    assert not np.allclose(np.asarray(fresh(x)["t0"]), np.asarray(want["t0"]))


def test_heads_pick_a_node_when_the_last_stage_has_fewer_nodes_than_tasks():
    rng = np.random.default_rng(1)
    net = build_supernet(backbones.mlp(6, (5, 4, 3)), EIGHT, widths=(1, 2, 3), seed=1)
    assert [bp.name for bp in net.branch_points] == ["branch2", "branch3", "branch_heads"]
    assert tuple(net.get_layer("branch_heads").logits.shape) == (8, 3)
    for layer in net.layers:
        if not layer.name.startswith("branch"):
            layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    # Leaves: node 0 <- middle 0, nodes 1, 2 <- middle 1; heads: tasks 0-2 on leaf 0, 3-4 on leaf 2, 5-7 on leaf 1.
    set_choices(net, [[0, 0], [0, 1, 1], [0, 0, 0, 2, 2, 1, 1, 1]])
    spec = extract_spec(net)
    names = [t.name for t in EIGHT]
    assert spec.partitions() == [[names], [names[:3], names[3:]], [names[:3], names[3:5], names[5:]]]
    tree = extract_model(net)
    assert tree.count_params() == spec.count_params(net.backbone, net.tasks)
    x = rng.standard_normal((16, 6)).astype("float32")
    want, got = net(x, training=False), tree(x, training=False)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
    heads = branching_report(net)[-1]
    assert heads["stage"] == "heads" and [n["parent"] for n in heads["nodes"]] == [0, 0, 0, 2, 2, 1, 1, 1]
    assert all(n["used"] for n in heads["nodes"])
    assert format_branching(net).splitlines()[-1].startswith("head 7 <- parents [")


def test_widths_for_a_budget_grow_from_the_leaves_and_fit():
    bb = backbones.mlp(100, (64, 64, 16))
    tasks = planted_groups(group_sizes=(3, 3, 2), num_train=10, num_validation=5, num_test=5).tasks
    shared = budget_for_blocks(bb, tasks, [1, 1, 1])
    stage = [bb.stage_params(d) for d in range(3)]
    # shared = (100*64+64) + (64*64+64) + (64*16+16) + 8 heads * (16+1) = 11,800; stage 3 = 1,040.
    # 1.5x: 5,900 more buys floor(5,900 / 1,040) = 5 extra last-stage nodes: widths 1, 1, 6.
    assert shared == 11800 and stage == [6464, 4160, 1040]
    assert widths_for_budget(bb, tasks, "1.5x") == [1, 1, 6]
    # 2x: 11,800 more fills the last stage (7 extra, 7,280), and 4,520 left buys one middle node.
    assert widths_for_budget(bb, tasks, "2x") == [1, 2, 8]
    assert widths_for_budget(bb, tasks, shared) == [1, 1, 1]
    for budget in ("1.5x", "2x", "3x", 20000):
        widths = widths_for_budget(bb, tasks, budget)
        assert widths == sorted(widths) and budget_for_blocks(bb, tasks, widths) <= (
            budget if isinstance(budget, int) else float(budget[:-1]) * shared)
    with pytest.raises(SearchError, match="No tree fits `budget`='0.5x'"):
        widths_for_budget(bb, tasks, "0.5x")


def test_a_budgeted_search_returns_a_tree_within_the_budget():
    data = tiny_planted(seed=0)
    bb = backbones.mlp(12, (8, 4, 4))
    result = learn_to_branch(data, bb, budget="1.3x", epochs=2, batch_size=32)
    assert result.settings["widths"] == widths_for_budget(bb, data.tasks, "1.3x")
    shared = budget_for_blocks(bb, data.tasks, [1, 1, 1])
    assert result.spec.count_params(bb, data.tasks) <= 1.3 * shared
    with pytest.raises(SearchError, match="Give `widths` or `budget`, not both"):
        learn_to_branch(data, bb, widths=(1, 1, 3), budget="2x", epochs=1)


def test_extraction_needs_a_supernet():
    with pytest.raises(SearchError, match="needs a BranchingSupernet. Received: Sequential"):
        extract_spec(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


def test_format_branching_lists_every_node():
    net = build_supernet(backbones.mlp(6, (4, 4)), TASKS, widths=(2, 3))
    set_choices(net, [[1, 0, 1]])
    lines = format_branching(net).splitlines()
    assert len(lines) == 3
    low, high = 1 / (1 + np.exp(10)), 1 / (1 + np.exp(-10))  # softmax of logits [0, 10]
    assert lines[0] == f"stage 2 node 0 <- parents [{low:.2f} {high:.2f}]  (argmax 1)"


# === Adjusted Rand index ===


def test_partition_ari_compares_groups_of_names():
    planted = [["a", "b", "c"], ["d", "e"], ["f"]]
    assert partition_ari(planted, [["f"], ["e", "d"], ["c", "a", "b"]]) == 1.0
    # Labels [0,0,0,1,1,2] vs [0,0,0,1,1,1]: index 4, expected 4*6/15, max 5 -> 12/17.
    assert partition_ari(planted, [["a", "b", "c"], ["d", "e", "f"]]) == pytest.approx(12 / 17)
    assert partition_ari([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]]) == pytest.approx(-0.5)
    with pytest.raises(SearchError, match="different items"):
        partition_ari([["a"], ["b"]], [["a", "c"]])


# === Training ===


def tiny_planted(**kwargs):
    return planted_groups(group_sizes=(2, 1), num_train=128, num_validation=32, num_test=32, dim=12, **kwargs)


def test_learn_to_branch_returns_a_spec_and_history_and_the_spec_retrains():
    data = tiny_planted(seed=0)
    bb = backbones.mlp(12, (8, 4, 4))
    result = learn_to_branch(data, bb, widths=(1, 2, 3), epochs=3, seed=0, batch_size=32)
    spec, history = result.spec, result.history
    assert isinstance(spec, TreeSpec)
    assert spec.tasks == data.task_names
    assert spec.num_stages == 3 and spec.is_tree
    assert spec == spec.canonical() and spec.routes == spec.canonical().routes
    assert spec.blocks_per_stage()[0] == 1 and spec.blocks_per_stage()[-1] == 3
    assert len(history["loss"]) == 3 and len(history["val_loss"]) == 3
    # Warm-up (1 epoch, ~1%) then sqrt decay from E/20: 3/20/sqrt(1), 3/20/sqrt(2).
    np.testing.assert_allclose(history["temperature"], [0.15, 0.15, 0.15 / np.sqrt(2)], rtol=1e-6)
    # The spec is plain JSON that `keras-branch train` (fit_spec) retrains from scratch.
    again = TreeSpec.from_json(spec.to_json())
    run = fit_spec(again, bb, data, epochs=1, batch_size=32, verbose=0)
    assert run.model.count_params() == again.count_params(bb, data.tasks)


def test_training_moves_the_branching_logits():
    data = tiny_planted(seed=1)
    net = build_supernet(backbones.mlp(12, (8, 4, 4)), data.tasks, widths=(2, 2, 3), seed=0)
    before = [np.asarray(bp.logits).copy() for bp in net.branch_points]
    train_supernet(net, data, epochs=2, batch_size=32, warmup_epochs=0)
    after = [np.asarray(bp.logits) for bp in net.branch_points]
    assert all(np.abs(a - b).min() > 0 for a, b in zip(after, before))


def test_search_settings_are_checked():
    data = tiny_planted(seed=0)
    net = build_supernet(backbones.mlp(12, (4, 4)), data.tasks, widths=(1, 3))
    with pytest.raises(SearchError, match=r"`warmup_epochs` must be smaller than `epochs` \(2\)"):
        train_supernet(net, data, epochs=2, warmup_epochs=2)
    with pytest.raises(SearchError, match="Received: epochs=0"):
        train_supernet(net, data, epochs=0)
    with pytest.raises(SearchError, match="Received: warmup_epochs=-1"):
        train_supernet(net, data, epochs=2, warmup_epochs=-1)
    other = build_supernet(backbones.mlp(12, (4, 4)), [Task("zzz", "regression")], widths=(1, 1))
    with pytest.raises(SearchError, match=r"lacks the supernet's task\(s\) \['zzz'\]"):
        train_supernet(other, data, epochs=1)
    with pytest.raises(SearchError, match="must be a Backbone"):
        learn_to_branch(data, "mlp", epochs=1)


def test_branching_report_margins_and_what_is_saved(tmp_path):
    data = tiny_planted(seed=0)
    result = learn_to_branch(data, backbones.mlp(12, (8, 4, 4)), widths=(1, 2, 3), epochs=2,
                             seed=0, batch_size=32)
    assert result.settings["logits_learning_rate"] == pytest.approx(1e-2)  # 10x the weights'
    stage2, stage3 = result.branching
    assert stage2["stage"] == 2 and len(stage2["nodes"]) == 2 and len(stage3["nodes"]) == 3
    probs = result.supernet.branching_probabilities()
    for stage, p in zip(result.branching, probs):
        for j, node in enumerate(stage["nodes"]):
            top = np.sort(p[j])[::-1]
            assert node["probabilities"] == pytest.approx(p[j].tolist(), abs=1e-6)
            assert node["parent"] == int(np.argmax(p[j]))
            # One parent (stage 1 has one node) is no choice: margin 1.
            margin = top[0] - top[1] if len(top) > 1 else 1.0
            assert node["margin"] == pytest.approx(margin, abs=1e-6)
    assert all(node["used"] for node in stage3["nodes"])  # every leaf is a task's
    assert sum(n["used"] for n in stage2["nodes"]) == result.spec.blocks_per_stage()[1]
    # A threshold above every margin reports each used node; 0 reports none.
    used = sum(n["used"] for stage in result.branching for n in stage["nodes"])
    assert len(undecided(result.branching, min_margin=1.01)) == used
    assert undecided(result.branching, min_margin=0.0) == []
    out = result.save(tmp_path / "search")
    assert TreeSpec.load(tmp_path / "search" / "tree.json") == result.spec
    saved = json.loads((tmp_path / "search" / "branching.json").read_text())
    assert saved["stages"] == result.branching and saved["undecided"] == undecided(result.branching)
    with pytest.raises(OutputExistsError):
        result.save(out)


@pytest.mark.parametrize("kwargs, message", [
    ({"logits_learning_rate": 0.0}, "Received: logits_learning_rate=0.0"),
    ({"logits_learning_rate": float("nan")}, "logits_learning_rate=nan"),
    ({"learning_rate": -1.0}, "Received: learning_rate=-1.0"),
    ({"balance": -0.5}, "Received: balance=-0.5"),
])
def test_search_arguments_are_checked(kwargs, message):
    with pytest.raises(SearchError, match=message):
        learn_to_branch(tiny_planted(seed=0), backbones.mlp(12, (8, 4, 4)), widths=(1, 2, 3),
                        epochs=1, **kwargs)


def test_tied_initialisation_gives_siblings_equal_weights():
    data = tiny_planted(seed=0)
    net = build_supernet(backbones.mlp(12, (8, 4, 4)), data.tasks, widths=(1, 2, 3))
    for d, width in enumerate(net.widths):
        first = net.get_layer(node_name(d, 0)).get_weights()
        for j in range(1, width):
            for a, b in zip(first, net.get_layer(node_name(d, j)).get_weights()):
                np.testing.assert_array_equal(a, b)
    untied = build_supernet(backbones.mlp(12, (8, 4, 4)), data.tasks, widths=(1, 2, 3),
                            tie_init=False)
    a, b = (untied.get_layer(node_name(1, j)).get_weights()[0] for j in (0, 1))
    assert not np.array_equal(a, b)


# The measured setting of benchmarks/ltb_planted.py, smaller: two planted
# groups, the demo's MLP, default search settings.
PLANTED_SMALL = {"group_sizes": (2, 2), "num_train": 2000}


# Seed 0 in the default run; seeds 1 and 2 (the same check on other draws) with --runslow.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_learn_to_branch_recovers_planted_groups(seed):
    data = planted_groups(seed=seed, **PLANTED_SMALL)
    result = learn_to_branch(data, backbones.mlp(100, (64, 64, 16)), widths=(1, 2, 4), seed=seed)
    assert partition_ari(result.spec.partition(1), data.info["partition"]) == 1.0
    assert result.spec.blocks_per_stage() == [1, 2, 4]
    assert undecided(result.branching) == []


# === Export ===




def test_extracted_tree_and_supernet_export_to_tflite_with_float32_parity(tmp_path):
    data = tiny_planted(seed=2)
    bb = backbones.mlp(12, (8, 6, 4))
    keras.utils.set_random_seed(0)
    net = build_supernet(bb, data.tasks, widths=(2, 2, 3), seed=0)
    train_supernet(net, data, epochs=2, batch_size=32)
    x = data.split("test").x[:10]
    # The extracted tree: an ordinary BranchedModel built with build_model.
    tree = build_model(extract_spec(net), bb, data.tasks)
    compile_model(tree)
    tree.fit(*data.arrays("train"), epochs=1, batch_size=32, verbose=0)
    got = check_tflite_parity(tree, x, tmp_path)
    assert {k: v.shape for k, v in got.items()} == {t.key: (10, 1) for t in data.tasks}
    # The supernet itself: at inference each BranchPoint is a fixed selection.
    check_tflite_parity(net, x, tmp_path)


# === The benchmark script ===


def test_planted_benchmark_runs_and_prints_its_table(capsys):
    from pathlib import Path

    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "ltb_planted.py")
    report = bench.main(["--seeds", "0", "--groups", "2-1", "--middle", "groups,3",
                         "--stages", "16,8,4", "--epochs", "1", "--retrain-epochs", "1",
                         "--num-train", "100", "--search-arg", "balance=0.5"])
    out = capsys.readouterr().out
    assert "| groups | middle width | seed | ARI | pure | min margin | search s |" in out
    assert "| groups | middle width | ARI 1.0 | pure | seeds |" in out
    assert "learn_to_branch defaults, balance=0.5, epochs=1" in out
    assert set(report["summary"]) == {("2-1", 2), ("2-1", 3)}
    for row in report["rows"]:
        assert -1.0 <= row["ari"] <= 1.0 and 0.0 <= row["min_margin"] <= 1.0
        assert row["found_mse"] > 0 and row["planted_mse"] > 0
        assert sorted(n for g in row["found"] for n in g) == ["g0_t0", "g0_t1", "g1_t0"]
