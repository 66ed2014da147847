"""Learning to Branch: supernet, extraction, the search on planted groups, export."""

import os

import keras
import numpy as np
import pytest

from keras_branch import SearchError, Task, TreeSpec, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.search.learn_to_branch import (
    BranchingSupernet,
    build_supernet,
    default_widths,
    extract_model,
    extract_spec,
    format_branching,
    learn_to_branch,
    partition_ari,
    train_supernet,
)
from keras_branch.testing import check_tflite_parity, run_model_test
from keras_branch.training import compile_model, fit_spec

# The planted-groups recipe measured in benchmarks/ltb_planted.py: a narrow
# middle stage and 1000 training samples, where the planted tree trains
# clearly better than other groupings (with the default 4000 samples and
# wide stages, random groupings train as well, so no search can tell).
PLANTED = {"group_sizes": (3, 3, 2), "num_train": 1000}
STAGES = (32, 4, 8)
WIDTHS = (2, 4, 8)
EPOCHS = 30

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
    with pytest.raises(SearchError, match=r"`widths\[-1\]` must be 3. Received: widths=\[1, 2, 4\]"):
        build_supernet(bb, TASKS, widths=(1, 2, 4))
    with pytest.raises(SearchError, match=r"`widths\[0\]` must be an integer >= 1. Received: 0"):
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
    spec, history = learn_to_branch(data, bb, widths=(1, 2, 3), epochs=3, seed=0, batch_size=32)
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
    other = build_supernet(backbones.mlp(12, (4, 4)), [Task("zzz", "regression")], widths=(1, 1))
    with pytest.raises(SearchError, match=r"lacks the supernet's task\(s\) \['zzz'\]"):
        train_supernet(other, data, epochs=1)
    with pytest.raises(SearchError, match="must be a Backbone"):
        learn_to_branch(data, "mlp", epochs=1)


def planted_search(seed):
    data = planted_groups(seed=seed, **PLANTED)
    spec, _ = learn_to_branch(
        data, backbones.mlp(data.input_shape[0], STAGES), widths=WIDTHS, epochs=EPOCHS, seed=seed
    )
    return spec, data


@pytest.mark.xfail(strict=True, reason=(
    "Learning to Branch does not reliably recover the planted groups: since seeded "
    "builds no longer depend on the backbone's shape analysis, benchmarks/ltb_planted.py "
    "measures ARI 0.462/0.545/0.034/0.789/0.556/0.500 for seeds 0-5 (0 exact); the "
    "earlier 2 of 3 depended on that random-state side effect. Strict: tells us when "
    "a better search makes it pass."))
def test_learn_to_branch_recovers_the_planted_groups_in_two_of_three_seeds():
    # About 10 s per seed (benchmarks/ltb_planted.py; see the README).
    scores = []
    for seed in (0, 1, 2):
        spec, data = planted_search(seed)
        scores.append(partition_ari(spec.partition(1), data.info["partition"]))
        if scores[-1] == 1.0:
            assert spec.blocks_per_stage()[1:] == [3, 8]
    assert sum(s == 1.0 for s in scores) >= 2, scores


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
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ltb_planted.py"
    spec = importlib.util.spec_from_file_location("ltb_planted", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--seeds", "0", "--epochs", "2", "--retrain-epochs", "1", "--num-train", "200"])
    out = capsys.readouterr().out
    assert "| seed | middle-stage groups found | ARI |" in out
    assert "recovered exactly (ARI 1.0) in" in out
    assert set(report["ari"]) == {0} and -1.0 <= report["ari"][0] <= 1.0
