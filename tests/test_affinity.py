import json

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import spearmanr

from keras_branch import SearchError, TreeSpec, backbones
from keras_branch.cli import main
from keras_branch.data import planted_groups
from keras_branch.plots import plot_affinity
from keras_branch.search import (
    TaskAffinity,
    adjusted_rand_index,
    affinity_search,
    budget_for_blocks,
    rdm,
    rdm_affinity,
    spearman,
)
from keras_branch.search.affinity import rankdata
from keras_branch.search.partitions import labels_from_groups


def test_rdm_matches_scipy():
    f = np.random.default_rng(0).standard_normal((40, 3, 5))
    expected = squareform(pdist(f.reshape(40, -1), metric="correlation"))
    np.testing.assert_allclose(rdm(f), expected, atol=1e-9, rtol=0)


def test_constant_rows_are_uncorrelated():
    f = np.random.default_rng(1).standard_normal((5, 8))
    f[2] = 0.0
    m = rdm(f)
    assert m[2, 2] == 0.0 and np.all(m[2, [0, 1, 3, 4]] == 1.0)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = rng.integers(0, 6, 200).astype(float)  # many ties
        b = a + rng.normal(0, 2, 200)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-9)
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])


def test_rdm_affinity_matches_scipy():
    rng = np.random.default_rng(3)
    rdms = np.stack([rdm(rng.standard_normal((30, 6))) for _ in range(4)])
    got = rdm_affinity(rdms)
    rows, cols = np.triu_indices(30, 1)
    for i in range(4):
        for j in range(4):
            expected = spearmanr(rdms[i][rows, cols], rdms[j][rows, cols]).statistic
            assert got[i, j] == pytest.approx(expected, abs=1e-9)


def test_affinity_json_round_trip_and_plot(tmp_path):
    values = np.stack([np.eye(3) * 0.5 + 0.5] * 2)
    aff = TaskAffinity(values, ["a", "b", "c"], {"seed": 1})
    aff.save(tmp_path / "aff.json")
    again = TaskAffinity.load(tmp_path / "aff.json")
    np.testing.assert_array_equal(again.values, values)
    assert again.tasks == ["a", "b", "c"] and again.info == {"seed": 1}
    plot_affinity(aff, tmp_path / "aff.png")
    assert (tmp_path / "aff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "values, names, fragment",
    [
        (np.ones((2, 3)), ["a", "b"], "Received shape (2, 3)"),
        (np.ones((1, 3, 3)), ["a", "b"], "3 tasks but 2 task names"),
        (np.full((1, 2, 2), np.nan), ["a", "b"], "NaN or infinite"),
    ],
)
def test_bad_affinity(values, names, fragment):
    with pytest.raises(SearchError) as err:
        TaskAffinity(values, names)
    assert fragment in str(err.value)


def test_affinity_file_errors(tmp_path):
    with pytest.raises(SearchError, match="does not exist"):
        TaskAffinity.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SearchError, match="not valid JSON"):
        TaskAffinity.load(tmp_path / "bad.json")


# Seed 0 in the default run; seeds 1 and 2 (the same check on other draws) with --runslow.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_planted_groups_are_recovered(seed):
    """Must show: with a budget that allows exactly three middle blocks, ARI 1.0."""
    data = planted_groups(seed=seed)
    bb = backbones.mlp(100, widths=(64, 64, 8))
    # Blocks cost 6464, 4160 and 520 parameters at the three stages. Four middle
    # blocks (and so >= 4 last ones) need 18720 > 3 x 4160 + 8 x 520 = 16640, and a
    # second first block 6464 more: the budget allows at most three middle blocks.
    budget = budget_for_blocks(bb, data.tasks, [1, 3, 8])
    search = affinity_search(data, bb, budget, probe_epochs=3, seed=seed, log=None)
    assert search.spec.blocks_per_stage() == [1, 3, 8]
    found = labels_from_groups(data.task_names, search.spec.partition(1))
    planted = labels_from_groups(data.task_names, data.info["partition"])
    assert adjusted_rand_index(found, planted) == 1.0


def test_search_cli_writes_a_spec_that_train_accepts(tmp_path, capsys):
    data = "planted:groups=2-2,train=300,seed=3"
    rc = main(["search", "--method", "affinity", "--data", data, "--backbone", "mlp",
               "--backbone-arg", "widths=[16,16,8]", "--budget", "2x", "--probe-epochs", "1",
               "--num-inputs", "64", "--out", str(tmp_path / "search")])
    assert rc == 0
    files = sorted(p.name for p in (tmp_path / "search").iterdir())
    assert files == [".keras-branch", "affinity.json", "affinity.png", "pareto.png", "search.json", "tree.json", "tree.png"]
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert summary["method"] == "affinity" and summary["spec"] == TreeSpec.load(
        tmp_path / "search" / "tree.json").to_dict()
    summary = summary["scores"]
    assert summary["params"] <= summary["budget"] == 2 * summary["shared_params"]
    assert "probe 4/4" in capsys.readouterr().out
    rc = main(["train", "--spec", str(tmp_path / "search" / "tree.json"), "--data", data,
               "--backbone", "mlp", "--backbone-arg", "widths=[16,16,8]", "--epochs", "1",
               "--out", str(tmp_path / "run"), "--progress", "none"])
    assert rc == 0


def test_search_cli_rejects_impossible_budget(tmp_path, capsys):
    rc = main(["search", "--data", "planted:groups=2-2,train=100", "--budget", "1000",
               "--probe-epochs", "1", "--num-inputs", "16", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "No tree fits `budget`=1000" in err and "\n" not in err
    assert not (tmp_path / "s").exists()


def _without_train_labels(task_name):
    from keras_branch.data import MultiTaskData, Split

    data = planted_groups(group_sizes=(2, 1), num_train=40, num_validation=40, num_test=10)
    train = data.split("train")
    y = dict(train.y)
    y[task_name] = np.full(len(train), np.nan, "float32")  # an all-missing regression task
    return MultiTaskData(data.tasks, {**data.splits, "train": Split(train.x, y)}, name="holes")


def test_a_task_without_training_labels_is_refused_before_any_probe(tmp_path, capsys):
    from keras_branch.data import save_npz
    from keras_branch.search import task_affinity

    data = _without_train_labels("g1_t0")
    with pytest.raises(SearchError) as err:
        task_affinity(data, backbones.mlp(100, widths=(8, 8, 4)), probe_epochs=1, num_inputs=8,
                      log=pytest.fail)  # no probe may start
    assert str(err.value) == (
        "Task(s) ['g1_t0'] of 'holes' have no labelled training sample (every label missing): "
        "their probes would train on nothing. Remove them from the data or label some samples.")
    save_npz(tmp_path / "holes.npz", data)
    out = tmp_path / "search"
    assert main(["search", "--data", f"npz:{tmp_path / 'holes.npz'}", "--budget", "2x",
                 "--probe-epochs", "1", "--num-inputs", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("keras-branch search: error: Task(s) ['g1_t0']"), err
    assert not out.exists()


def test_average_linkage_clusters_and_orders():
    """Clear blocks come out as clusters; merged to one cluster, the leaf order is `cluster_order`'s."""
    from keras_branch.search.affinity import average_linkage, cluster_order

    labels = np.array([0, 1, 0, 2, 1, 2])
    rng = np.random.default_rng(0)
    dissim = np.where(labels[:, None] == labels[None, :], 0.1, 1.0) + rng.uniform(0, 0.05, (6, 6))
    dissim = (dissim + dissim.T) / 2
    np.fill_diagonal(dissim, 0.0)
    assert sorted(sorted(c) for c in average_linkage(dissim, 3)) == [[0, 2], [1, 4], [3, 5]]
    assert average_linkage(dissim, 1) == [cluster_order(dissim)]
    assert average_linkage(dissim, 6) == [[i] for i in range(6)]
