"""TAG: lookahead affinity by hand, planted groups, missing labels, MirroredStrategy, seeds."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch import SearchError, Task, TreeSpec, backbones, build_model
from keras_branch.data import MultiTaskData, Split, planted_groups
from keras_branch.masked import MaskedLoss
from keras_branch.search import (
    LookaheadMeter,
    adjusted_rand_index,
    affinity_from_z,
    affinity_search,
    branch,
    budget_for_blocks,
    tag_affinity,
)
from keras_branch.search.partitions import labels_from_groups

REGRESSION = [Task("a", "regression"), Task("b", "regression")]


def _linear_model():
    """One linear stage h = x.w (w = [1, 0]), heads y = h (kernel 1, bias 0)."""
    stage = keras.layers.Dense(1, use_bias=False)
    bb = backbones.Backbone((2,), [stage], name="linear",
                            stage_weights=[[np.array([[1.0], [0.0]], "float32")]])
    model = build_model(TreeSpec.shared(["a", "b"], 1), bb, REGRESSION)
    for key in ("a", "b"):
        model.get_layer(f"head_{key}").set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    return model


def test_lookahead_z_by_hand():
    """x1 = (1, 0), x2 = (0, 1); a's labels (2, 0), b's (0, 1); h = (1, 0) at w = (1, 0).

    L_a = ((1-2)^2 + 0^2) / 2 = 0.5, grad_w L_a = (-1, 0); L_b = (1 + 1) / 2 = 1,
    grad_w L_b = (1, -1). Lookahead rate 0.5:
    on a: w = (1.5, 0): L_a = 0.125 (Z 0.75), L_b = (2.25 + 1) / 2 = 1.625 (Z -0.625);
    on b: w = (0.5, 0.5): L_a = (2.25 + 0.25) / 2 = 1.25 (Z -1.5), L_b = 0.25 (Z 0.75).
    """
    model = _linear_model()
    before = [w.copy() for w in model.get_weights()]
    meter = LookaheadMeter(model, lookahead_lr=0.5)
    x = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    y = {"a": np.array([2.0, 0.0], "float32"), "b": np.array([0.0, 1.0], "float32")}
    z, pairs = meter.measure(x, y)
    np.testing.assert_allclose(z, [[[0.75, -0.625], [-1.5, 0.75]]], atol=1e-6, rtol=0)
    assert pairs.all() and meter.steps == 1
    for w, w0 in zip(model.get_weights(), before):  # a lookahead is never applied
        np.testing.assert_array_equal(w, w0)
    # Symmetrised (-1.0625), over sqrt(0.75 * 0.75): -1.42, clipped to -1. One stage is the
    # whole path (weight 1) and two tasks have no third task to compare: the same.
    np.testing.assert_allclose(affinity_from_z(z, profile=False)[0], [[[1, -1], [-1, 1]]])
    np.testing.assert_allclose(affinity_from_z(z)[0], [[[1, -1], [-1, 1]]])


def test_split_half_lookahead_by_hand():
    """Four samples x = (1, 0), so h = w_1 = 1 for every sample; the squared loss's step at
    rate 0.5 moves h to the mean label of the samples it is fitted on.

    Halves by position: even samples (a: 2, 2; b: 0, 0), odd ones (a: 3, 1; b: 1, 1). Loss
    sums before: a 2 (even) + 4 (odd) = 6, b 2 + 0 = 2.
    split="half": a's step on either half moves h to 2: a's losses 2 (odd) + 0 (even) = 2
    (Z 2/3), b's 2 + 8 = 10 (Z -4); b's step on the even half moves h to 0, scored on the
    odd one: a 10, b 2; on the odd half to 1, scored on the even one: a 2, b 2; so Z[b -> a]
    = 1 - 12/6 = -1 and Z[b -> b] = 1 - 4/2 = -1: b's halves disagree, so a step fitted on
    one raises its loss on the other.
    No split: every step fitted and scored on all four; b's step moves h to 0.5 and lowers
    its own loss (Z 1/2), the fit to the very samples it is scored on.
    """
    x = np.array([[1.0, 0.0]] * 4, "float32")
    y = {"a": np.array([2.0, 3.0, 2.0, 1.0], "float32"), "b": np.array([0.0, 1.0, 0.0, 1.0], "float32")}
    half = LookaheadMeter(_linear_model(), lookahead_lr=0.5, split="half")
    z, pairs = half.measure(x, y)
    np.testing.assert_allclose(z, [[[2 / 3, -4.0], [-1.0, -1.0]]], atol=1e-6, rtol=0)
    assert pairs.all()
    z, _ = LookaheadMeter(_linear_model(), lookahead_lr=0.5).measure(x, y)
    np.testing.assert_allclose(z, [[[2 / 3, -4.0], [-5 / 6, 0.5]]], atol=1e-6, rtol=0)
    # A task unlabelled in one half has no step or no score there: it takes part in no pair.
    y["b"] = np.array([np.nan, 1.0, np.nan, 1.0], "float32")
    z, pairs = half.measure(x, y)
    assert pairs.tolist() == [[True, False], [False, False]] and np.isnan(z[:, 1]).all()
    np.testing.assert_allclose(z[0, 0, 0], 2 / 3, atol=1e-6)
    assert half.pairs.tolist() == [[2, 1], [1, 1]]
    with pytest.raises(SearchError, match="`split` must be one of"):
        LookaheadMeter(_linear_model(), split="thirds")


def _reference_z(model, x, y, lr):
    """Z per stage by brute force: per-task gradients, then set_weights and a forward pass."""
    losses = {t.key: MaskedLoss(t.kind, reduction=None) for t in model.tasks}

    def task_losses():
        out = model(x, training=False)
        result = []
        for t in model.tasks:
            present = float(np.sum(np.isfinite(y[t.key]) & (y[t.key] != -1)))
            result.append(tf.reduce_sum(losses[t.key](y[t.key], out[t.key])) / present)
        return result

    before = np.array([float(v) for v in task_losses()])
    stages = [model.get_layer(f"stage{d + 1}_block0") for d in range(model.spec.num_stages)]
    z = np.zeros((len(stages), len(model.tasks), len(model.tasks)))
    for d, stage in enumerate(stages):
        original = stage.get_weights()
        for i in range(len(model.tasks)):
            with tf.GradientTape() as tape:
                loss = task_losses()[i]
            grads = tape.gradient(loss, stage.trainable_variables)
            stage.set_weights([w - lr * g.numpy() for w, g in zip(original, grads)])
            z[d, i] = 1.0 - np.array([float(v) for v in task_losses()]) / before
            stage.set_weights(original)
    return z


def test_vectorized_lookahead_matches_brute_force():
    """Three stages, mixed task kinds (regression, binary, 3-class), one missing label each."""
    tasks = [Task("r", "regression"), Task("c", "binary"), Task("m", "multiclass", classes=3),
             Task("s", "regression")]
    model = build_model(TreeSpec.shared([t.name for t in tasks], 3),
                        backbones.mlp(5, (6, 5, 4)), tasks)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype("float32")
    y = {"r": rng.standard_normal(12).astype("float32"), "c": rng.integers(0, 2, 12).astype("int32"),
         "m": rng.integers(0, 3, 12).astype("int32"), "s": rng.standard_normal(12).astype("float32")}
    y["r"][0], y["c"][1], y["m"][2], y["s"][3] = np.nan, -1, -1, np.nan
    z, pairs = LookaheadMeter(model, lookahead_lr=0.3).measure(x, y)
    assert pairs.all()
    np.testing.assert_allclose(z, _reference_z(model, x, y, 0.3), atol=2e-5, rtol=0)


def test_a_task_missing_from_a_batch_leaves_its_row_unchanged():
    tasks = [Task("a", "regression"), Task("b", "binary"), Task("c", "regression")]
    model = build_model(TreeSpec.shared(["a", "b", "c"], 2), backbones.mlp(4, (5, 3)), tasks)
    meter = LookaheadMeter(model, lookahead_lr=0.1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4)).astype("float32")
    y = {"a": rng.standard_normal(10).astype("float32"), "b": rng.integers(0, 2, 10).astype("int32"),
         "c": rng.standard_normal(10).astype("float32")}
    meter.measure(x, y)
    total, counted = meter.total.copy(), meter.pairs.copy()
    y["b"] = np.full(10, -1, "int32")  # task b has no label in this batch
    z, pairs = meter.measure(x[:7], {k: v[:7] for k, v in y.items()})  # and a new batch size
    assert pairs.tolist() == [[True, False, True], [False, False, False], [True, False, True]]
    assert np.isnan(z[:, 1, :]).all() and np.isnan(z[:, :, 1]).all()
    np.testing.assert_array_equal(meter.total[:, 1, :], total[:, 1, :])
    np.testing.assert_array_equal(meter.total[:, :, 1], total[:, :, 1])
    np.testing.assert_array_equal(meter.pairs[1], counted[1])
    assert (meter.pairs[[0, 2]][:, [0, 2]] == 2).all() and not np.allclose(meter.total[:, 0], total[:, 0])
    # b was measured once, the others twice: each pair's mean is over its own steps.
    np.testing.assert_allclose(meter.z[:, 1], total[:, 1])


def test_affinity_from_z_properties():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3, 6, 6))
    z[:, range(6), range(6)] = np.abs(z[:, range(6), range(6)]) + 0.5
    z[2, 4, 4] = -0.2  # a step on task 4 does not help task 4 at stage 3
    z[0, 5, 5] = -0.2  # nor task 5 at stage 1 (its path through stage 1 alone)
    for kwargs in ({}, {"path": False}, {"profile": False}, {"profile": False, "path": False}):
        values, _ = affinity_from_z(z, **kwargs)
        np.testing.assert_allclose(values, np.swapaxes(values, 1, 2), atol=1e-12)
        assert (np.diagonal(values, axis1=1, axis2=2) == 1).all() and np.abs(values).max() <= 1
    cosine, degenerate = affinity_from_z(z, profile=False, path=False)
    assert degenerate == [(0, 5), (2, 4)]
    assert (cosine[2, 4, [0, 1, 2, 3, 5]] == 0).all() and (cosine[0, 5, :5] == 0).all()
    # On the path, task 4's self-affinity through stages 1-3 is positive; task 5's
    # through stage 1 is not, and it takes 0 share of that stage (affinity 1: free to share).
    values, degenerate = affinity_from_z(z)
    assert degenerate == [(0, 5)] and (values[0, 5] == 1).all()
    with pytest.raises(SearchError, match="shape"):
        affinity_from_z(np.ones((2, 3)))


def test_third_task_profiles_by_brute_force():
    """P[i, j]: correlation of rows i, j of C over k != i, j; with fewer than 4 such k, P = C."""
    rng = np.random.default_rng(5)
    grads = rng.normal(size=(2, 7, 30))
    z = grads @ np.swapaxes(grads, 1, 2)  # first order: Z[i -> j] ~ g_i . g_j
    cosine, _ = affinity_from_z(z, profile=False, path=False)
    profiles, _ = affinity_from_z(z, path=False)
    for d in range(2):
        for i in range(7):
            for j in range(7):
                if i != j:
                    k = [t for t in range(7) if t not in (i, j)]
                    expected = np.corrcoef(cosine[d, i, k], cosine[d, j, k])[0, 1]
                    np.testing.assert_allclose(profiles[d, i, j], expected, atol=1e-12)
    for tasks in (4, 5):
        small = z[:, :tasks, :tasks]
        np.testing.assert_array_equal(affinity_from_z(small, path=False)[0],
                                      affinity_from_z(small, profile=False, path=False)[0])


def test_no_profile_over_three_third_tasks():
    """Five tasks that all help each other (cosines 0.6-0.8): over their 3 third tasks the
    closest pair's rows correlate at -1 (the profile would price sharing it at 2, the most
    any pair can cost) and a middling pair at +1. Over three values the correlation of
    unrelated rows is mostly near +-1, so under 4 third tasks the affinity is the cosine."""
    cosine = np.array([[1.0, 0.8, 0.7, 0.6, 0.7],
                       [0.8, 1.0, 0.6, 0.7, 0.6],
                       [0.7, 0.6, 1.0, 0.7, 0.7],
                       [0.6, 0.7, 0.7, 1.0, 0.7],
                       [0.7, 0.6, 0.7, 0.7, 1.0]])
    third = [2, 3, 4]
    assert np.corrcoef(cosine[0, third], cosine[1, third])[0, 1] == pytest.approx(-1.0)
    assert np.corrcoef(cosine[2, [0, 1, 3]], cosine[4, [0, 1, 3]])[0, 1] == pytest.approx(1.0)
    values, degenerate = affinity_from_z(cosine[None], path=False)
    assert degenerate == []
    np.testing.assert_allclose(values[0], cosine, atol=1e-12)
    # On the path (two stages, the first with a quarter of every task's progress) the
    # weights apply to the cosine: 1 - A = sqrt(share_i share_j) (1 - C).
    values, _ = affinity_from_z(np.stack([cosine / 3, cosine]))
    np.testing.assert_allclose(values[0], 1 - 0.25 * (1 - cosine), atol=1e-12)
    np.testing.assert_allclose(values[1], cosine, atol=1e-12)
    assert values[0, 0, 1] == pytest.approx(0.95)


def test_path_affinity_is_in_whole_network_units():
    """First order, Z = G G^T per stage: `1 - A` (no profile) is the stage-1..d gradients' misfit
    `sqrt(|g_i|^2 |g_j|^2) - g_i . g_j` over the path, divided by the whole-network norms;
    at the last stage A is the whole network's cosine, TAG's one-matrix affinity."""
    rng = np.random.default_rng(6)
    grads = rng.normal(size=(3, 5, 20)) * np.array([0.5, 1.0, 2.0])[:, None, None]
    z = grads @ np.swapaxes(grads, 1, 2)
    values, _ = affinity_from_z(z, profile=False)
    path = np.cumsum(z, axis=0)
    norms = np.sqrt(np.diagonal(path, axis1=1, axis2=2))  # [stages, T]
    total = norms[-1]
    expected = 1 - (norms[:, :, None] * norms[:, None, :] - path) / (total[:, None] * total[None, :])
    np.testing.assert_allclose(values, expected, atol=1e-12)
    whole = z.sum(0)
    np.testing.assert_allclose(values[-1], whole / np.outer(np.sqrt(np.diag(whole)), np.sqrt(np.diag(whole))),
                               atol=1e-12)


def _synthetic_groups_z(seed, scales=(0.3, 0.3, 0.5, 0.75), groups=(5,) * 8, dim=200):
    """First-order Z of 40 tasks in 8 groups: per stage, g_i = scale * (u_group + own_i), so the
    lookahead cosine is about 1/2 within a group and 0 across at every stage, as TAG measured on
    planted groups; deeper stages carry more of the progress (larger gradients)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(groups)), groups)
    z = []
    for scale in scales:
        own = rng.normal(size=(len(labels), dim)) * rng.uniform(0.8, 1.2, size=(len(labels), 1))
        g = scale * (rng.normal(size=(len(groups), dim))[labels] + own)
        z.append(g @ g.T)
    return np.stack(z), labels


def test_path_affinity_lets_the_tree_search_find_stage_flat_groups():
    """The cause of issue 20's misses: with the per-stage cosine (flat over stages, about 0
    across groups), sharing the first block costs as much as merging groups at the last, and
    the budget that buys 8 group blocks goes elsewhere. On the path affinity it recovers them."""
    tasks = [Task(f"t{i}", "regression") for i in range(40)]
    bb = backbones.mlp(100, (64, 64, 64, 16))
    budget = budget_for_blocks(bb, tasks, [1, 1, 8, 40])
    per_stage = []
    for seed in range(4):
        z, labels = _synthetic_groups_z(seed)
        for kwargs, found in (({}, None), ({"profile": False, "path": False}, per_stage)):
            tree = branch(affinity_from_z(z, **kwargs)[0], bb, tasks, budget)
            ari = adjusted_rand_index([tree.spec.routes[t.name][2] for t in tasks], list(labels))
            if found is None:
                assert ari == 1.0, (seed, tree.spec.blocks_per_stage())
            else:
                found.append(ari)
    assert max(per_stage) < 1.0


def _planted(seed):
    return planted_groups(group_sizes=(3, 3), num_train=1000, num_validation=50, num_test=50,
                          seed=seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_tag_search_recovers_planted_groups(seed):
    """Within-group affinity above every across-group one at the last stage; ARI 1.0."""
    data = _planted(seed)
    bb = backbones.mlp(100, (32, 32, 8))
    # Blocks cost 3232, 1056 and 264: a third middle block (or a second first one)
    # would need 4 (12) fewer last blocks than the 6 tasks need.
    result = affinity_search(data, bb, budget_for_blocks(bb, data.tasks, [1, 2, 6]), affinity="tag",
                             epochs=10, learning_rate=0.01, every=1, seed=seed, log=None)
    names = data.task_names
    planted = labels_from_groups(names, data.info["partition"])
    same = np.equal.outer(planted, planted)
    last = result.affinity.values[-1]
    assert last[same & ~np.eye(6, dtype=bool)].min() > last[~same].max()
    assert result.spec.blocks_per_stage() == [1, 2, 6]
    assert adjusted_rand_index(labels_from_groups(names, result.spec.partition(1)), planted) == 1.0
    assert result.affinity.info["method"] == "tag" and result.affinity_method == "tag"
    assert set(result.seconds) == {"tag", "search"}


def _with_holes(seed=0):
    """Planted data where task g0_t1 is labelled on a third of the samples only."""
    data = planted_groups(group_sizes=(2, 2), num_train=300, num_validation=20, num_test=20, seed=seed)
    train = data.split("train")
    y = dict(train.y)
    y["g0_t1"] = np.where(np.arange(len(train)) % 3 == 0, y["g0_t1"], np.nan).astype("float32")
    return MultiTaskData(data.tasks, {**data.splits, "train": Split(train.x, y)}, data.info, "holes")


def test_same_seed_same_affinity():
    data, bb = _with_holes(), backbones.mlp(100, (16, 8))
    kwargs = dict(epochs=2, batch_size=32, every=3, seed=3, log=None)
    first, second = tag_affinity(data, bb, **kwargs), tag_affinity(data, bb, **kwargs)
    np.testing.assert_array_equal(first.values, second.values)
    assert first.info == second.info and first.info["measured_steps"] == 7
    assert np.isfinite(first.values).all() and first.values.shape == (2, 4, 4)
    other = tag_affinity(data, bb, **{**kwargs, "seed": 4})
    assert not np.array_equal(first.values, other.values)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"every": 0}, "`every` must be an int >= 1. Received: every=0"),
    ({"lookahead_lr": -1.0}, "`lookahead_lr` must be a finite number > 0"),
    ({"tasks": ["g0_t0"]}, "at least 2 tasks"),
    ({"tasks": ["g0_t0", "nope"]}, "Unknown task(s) ['nope']"),
    ({"split": "quarters"}, "`split` must be one of [None, 'half']"),
])
def test_bad_settings_are_refused_before_training(kwargs, fragment):
    with pytest.raises(SearchError) as err:
        tag_affinity(_with_holes(), backbones.mlp(100, (4,)), log=pytest.fail, **kwargs)
    assert fragment in str(err.value)


def test_meter_needs_a_shared_model():
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    model = build_model(spec, backbones.mlp(2, (3, 3)), REGRESSION)
    with pytest.raises(SearchError, match="fully shared"):
        LookaheadMeter(model)
    with pytest.raises(SearchError, match="`affinity` must be one of"):
        affinity_search(_with_holes(), backbones.mlp(100, (4,)), "2x", affinity="cka")


MIRRORED_WORKER = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_tag import _with_holes
    from keras_branch import backbones, distribute
    from keras_branch.search import tag_affinity

    data, bb = _with_holes(seed=1), backbones.mlp(100, (16, 8))
    # 300 samples in batches of 64: the last batch (44) is split 22 + 22.
    runs = {}
    for name, strategy in (("single", None),
                           ("mirrored", distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))):
        # Rate 0.01, not the default (the training's 1e-3): Z = 1 - L'/L is float32
        # rounding (~1e-7) over a change ~lr; at 1e-3 the affinities of the two runs
        # differed by up to 1.2e-5, rounding rather than distribution.
        aff = tag_affinity(data, bb, epochs=3, batch_size=64, every=2, seed=0,
                           lookahead_lr=0.01, strategy=strategy, log=None)
        runs[name] = aff.values
        runs[name + "_z"] = np.array(aff.info["z"])
        runs[name + "_replicas"] = aff.info["replicas"]
        # Halves by position parity: the same halves on one device and on two
        # replicas (every replica's part of a batch is even: 32 + 32, 22 + 22).
        runs[name + "_half_z"] = np.array(tag_affinity(
            data, bb, epochs=2, batch_size=64, every=2, seed=0, lookahead_lr=0.01,
            strategy=strategy, log=None, split="half").info["z"])
    np.savez(sys.argv[1], **runs)
""")


def test_mirrored_strategy_matches_one_device(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(MIRRORED_WORKER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    out = tmp_path / "tag.npz"
    proc = subprocess.run([sys.executable, str(script), str(out), os.path.dirname(__file__)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = np.load(out)
    assert int(runs["single_replicas"]) == 1 and int(runs["mirrored_replicas"]) == 2
    np.testing.assert_allclose(runs["mirrored_z"], runs["single_z"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(runs["mirrored"], runs["single"], atol=1e-5, rtol=0)
    assert np.abs(runs["single_z"]).max() > 1e-3
    np.testing.assert_allclose(runs["mirrored_half_z"], runs["single_half_z"], atol=1e-5, rtol=0)
    assert np.abs(runs["single_half_z"]).max() > 1e-3
