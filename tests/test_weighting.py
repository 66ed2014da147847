"""Task weightings: each method against a hand computation, missing tasks, saving, the CLI."""

import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch import Task, TreeSpec, backbones, build_model
from keras_branch.cli import main
from keras_branch.compiling import compile_model
from keras_branch.data import planted_groups
from keras_branch.errors import WeightingError
from keras_branch.testing import check_save_load
from keras_branch.training import fit_spec
from keras_branch.weighting import (
    DWA,
    CAGrad,
    GradNorm,
    PCGrad,
    Uncertainty,
    conflict_averse,
    get_weighting,
    gradnorm_step,
    parse_weighting,
    project_conflicting,
)

METHODS = ("fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad")


# -- the maths, by hand ---------------------------------------------------------

def test_pcgrad_projects_each_conflicting_gradient_on_the_others_normal_plane():
    g = tf.constant([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1: they conflict
    order = tf.constant([[0, 1], [1, 0]])
    # g1' = g1 - (-1 / |g2|^2) g2 = (0.5, 0.5); g2' = g2 - (-1 / |g1|^2) g1 = (0, 1).
    np.testing.assert_allclose(project_conflicting(g, tf.ones([2]), order), [0.5, 1.5], atol=1e-7)
    # No conflict: the plain sum.
    g = tf.constant([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(project_conflicting(g, tf.ones([2]), order), [2.0, 1.0], atol=1e-7)


def test_pcgrad_leaves_out_a_task_absent_from_the_batch():
    g = tf.constant([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    order = tf.constant([[1, 2, 0], [2, 0, 1], [0, 1, 2]])
    present = tf.constant([1.0, 1.0, 0.0])
    np.testing.assert_allclose(project_conflicting(g, present, order), [0.5, 1.5], atol=1e-7)
    # Only task 0 present: its own gradient, untouched by the absent task's.
    np.testing.assert_allclose(project_conflicting(g, tf.constant([1.0, 0.0, 0.0]), order),
                               [1.0, 0.0], atol=1e-7)


def test_cagrad_by_hand_and_its_guarantee():
    g = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    # c = 0: the sum. Orthogonal unit gradients: by symmetry w = (1/2, 1/2), g_w = g0,
    # lambda = c, update 2 * (1/2 + c/2) / (1 + c^2) per coordinate.
    np.testing.assert_allclose(conflict_averse(g, tf.ones([2]), 0.0), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(conflict_averse(g, tf.ones([2]), 0.4), [1.4 / 1.16] * 2, atol=1e-3)
    # Conflicting gradients: the worst task improves more than under the average.
    g = tf.constant([[1.0, 0.0], [-0.8, 0.3]])
    d = conflict_averse(g, tf.ones([2]), 0.4).numpy()
    g0 = g.numpy().mean(0)
    assert min(g.numpy() @ d) > min(g.numpy() @ g0)
    # An absent task is left out: CAGrad of the present task alone, which (w = 1,
    # lambda = c) is its gradient times (1 + c) / (1 + c^2).
    d = conflict_averse(tf.constant([[1.0, 2.0], [5.0, -7.0]]), tf.constant([1.0, 0.0]), 0.4)
    alone = conflict_averse(tf.constant([[1.0, 2.0]]), tf.ones([1]), 0.4)
    np.testing.assert_allclose(d, alone, rtol=1e-6)
    np.testing.assert_allclose(d, np.array([1.0, 2.0]) * 1.4 / 1.16, rtol=1e-3)


def test_gradnorm_step_by_hand():
    # G = w |g| = (2, 1), equal loss ratios: target = mean G = 1.5. The step is
    # sign(G - target) |g| / mean |g| = (+4/3, -2/3); w = 1 - 0.1 step = (0.8667, 1.0667),
    # rescaled to keep the sum 2: x 2 / 1.9333.
    w = gradnorm_step(tf.ones([2]), tf.constant([2.0, 1.0]), tf.ones([2]), tf.ones([2]),
                      tf.ones([2]), alpha=1.5, learning_rate=0.1).numpy()
    np.testing.assert_allclose(w, [0.8666667 * 2 / 1.9333333, 1.0666667 * 2 / 1.9333333], rtol=1e-6)
    # A task that learns slower (loss ratio 2 against 1) gets a larger target:
    # r = (2/1.5, 1/1.5), target = 1.5 * r^1.5 = (2.309, 0.816); G = (1, 1).
    w = gradnorm_step(tf.ones([2]), tf.ones([2]), tf.constant([2.0, 1.0]), tf.ones([2]),
                      tf.ones([2]), alpha=1.5, learning_rate=0.1).numpy()
    np.testing.assert_allclose(w, [1.1, 0.9], rtol=1e-6)
    # An absent task keeps its weight; the present ones keep their sum.
    w = gradnorm_step(tf.constant([1.0, 1.0, 1.5]), tf.constant([2.0, 1.0, 9.0]), tf.ones([3]),
                      tf.ones([3]), tf.constant([1.0, 1.0, 0.0]), 1.5, 0.1).numpy()
    assert w[2] == 1.5
    np.testing.assert_allclose(w[:2].sum(), 2.0, rtol=1e-6)


def test_dwa_weights_by_hand():
    w = DWA(temperature=2.0)
    w.attach(["a", "b"])
    assert w.current_weights() == [1.0, 1.0]  # the first two epochs
    # Epoch 1: a's loss averages 2 over the batches that label it, b's 1.
    for losses, present in (([2.5, 1.0], [1.0, 1.0]), ([1.5, 7.0], [1.0, 0.0])):
        w.update_state(tf.constant(losses), tf.constant(present), {})
    w.end_epoch()
    assert w.current_weights() == [1.0, 1.0]
    # Epoch 2: a falls to 1 (ratio 0.5), b to 0.9 (ratio 0.9).
    w.update_state(tf.constant([1.0, 0.9]), tf.constant([1.0, 1.0]), {})
    w.end_epoch()
    # w = 2 softmax((0.25, 0.45)) = (2 / (1 + e^0.2), 2 e^0.2 / (1 + e^0.2)).
    e = math.exp(0.2)
    np.testing.assert_allclose(w.current_weights(), [2 / (1 + e), 2 * e / (1 + e)], rtol=1e-6)
    # An epoch in which b is never labelled keeps b's average (ratio 1 next).
    w.update_state(tf.constant([0.5, 3.0]), tf.constant([1.0, 0.0]), {})
    w.end_epoch()
    np.testing.assert_allclose(w.epoch_losses.numpy(), [[0.5, 0.9], [1.0, 0.9]])


# -- the step on a model --------------------------------------------------------

def _tiny(weighting, kinds=("regression", "regression"), stages=1):
    tasks = [Task(name, kind) for name, kind in zip("ab", kinds)]
    keras.utils.set_random_seed(0)
    model = build_model(TreeSpec.shared(["a", "b"], num_stages=stages),
                        backbones.mlp(3, (4,) * stages), tasks)
    return compile_model(model, optimizer=keras.optimizers.SGD(0.1), weighting=weighting)


def test_uncertainty_step_by_hand():
    model = _tiny("uncertainty")
    model.weighting.log_variance.assign([0.0, math.log(2.0)])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], "float32")
    y = {"a": np.array([0.5, -1.0], "float32"), "b": np.array([2.0, 1.0], "float32")}
    pred = model.predict(x, verbose=0)
    mse = {k: float(np.mean((pred[k].ravel() - y[k]) ** 2)) for k in "ab"}
    logs = model.train_on_batch(x, y, return_dict=True)
    # loss = e^0 L_a + 0 / 2 + e^-log2 L_b + log 2 / 2
    np.testing.assert_allclose(logs["loss"], mse["a"] + mse["b"] / 2 + math.log(2) / 2, rtol=1e-5)
    # ds = -e^-s L + 1/2, one SGD step of 0.1.
    expected = [0.0 - 0.1 * (-mse["a"] + 0.5), math.log(2) - 0.1 * (-mse["b"] / 2 + 0.5)]
    np.testing.assert_allclose(model.weighting.log_variance.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad"])
def test_a_task_missing_from_a_batch_leaves_its_weight_as_it_was(method):
    model = _tiny(get_weighting(method), stages=2)
    model.optimizer = keras.optimizers.Adam(0.05)  # momentum: a zero gradient still moves
    model.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    full = {"a": rng.normal(size=8).astype("float32"), "b": rng.normal(size=8).astype("float32")}
    for _ in range(3):
        model.train_on_batch(x, full)
    state = [v.numpy().copy() for v in model.weighting.variables]
    before = model.weighting.current_weights()
    model.train_on_batch(x, {"a": full["a"], "b": np.full(8, np.nan, "float32")})
    after = model.weighting.current_weights()
    assert after[1] == before[1]
    if method == "dwa":  # b's loss sum and count did not move
        np.testing.assert_array_equal(model.weighting.loss_sum.numpy()[1], state[0][1])
        np.testing.assert_array_equal(model.weighting.loss_count.numpy()[1], state[1][1])
    if method == "gradnorm":
        assert after[0] == before[0]  # alone, a keeps the present tasks' sum


def test_gradient_methods_update_the_shared_layers_from_the_combined_gradient():
    # Two tasks with one shared Dense: PCGrad's update of the shared kernel is the
    # projected sum of the per-task gradients, computed here by hand with a tape.
    model = _tiny("pcgrad")
    shared = [v for v in model.trainable_variables if "head" not in v.path]
    heads = {key: [v for v in model.trainable_variables if f"head_{key}" in v.path] for key in "ab"}
    for a, b in zip(heads["a"], heads["b"]):
        b.assign(a)  # equal heads: task b's residuals alone decide the conflict
    x = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0], [0.0, -1.0, 1.0]], "float32")
    p = model.predict(x, verbose=0)["a"].ravel()
    y = {"a": p - np.array([1.0, 1.0, 1.0], "float32"),
         "b": p + np.array([1.0, 1.0, 0.5], "float32")}  # mostly against a
    grads = []
    for key in "ab":
        with tf.GradientTape() as tape:
            loss = model.loss[key](y[key], model(x, training=True)[key])
        grads.append(tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, shared)], 0))
    g = tf.stack(grads)
    expected = project_conflicting(g, tf.ones([2]), tf.constant([[0, 1], [1, 0]])).numpy()
    start = np.concatenate([v.numpy().ravel() for v in shared])
    model.train_on_batch(x, y)
    moved = (start - np.concatenate([v.numpy().ravel() for v in shared])) / 0.1
    np.testing.assert_allclose(moved, expected, atol=1e-5)
    assert float(tf.reduce_sum(g[0] * g[1])) < 0  # the case exercises a projection


@pytest.mark.parametrize("method", METHODS)
def test_weighting_saves_and_reloads_with_the_model(method, tmp_path):
    weighting = parse_weighting("fixed:a=2" if method == "fixed" else method)
    model = _tiny(weighting, stages=2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {"a": rng.normal(size=16).astype("float32"), "b": rng.normal(size=16).astype("float32")}
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    loaded = check_save_load(model, x)  # safe mode; weights and outputs equal
    assert type(loaded.weighting) is type(model.weighting)
    assert loaded.weighting.get_config() == model.weighting.get_config()
    for a, b in zip(loaded.weighting.variables, model.weighting.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.weighting.current_weights() == model.weighting.current_weights()
    # Its state is training state, not a parameter of the network.
    plain = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(3, (4, 4)),
                        [Task("a", "regression"), Task("b", "regression")])
    assert model.count_params() == loaded.count_params() == plain.count_params()


def test_weights_reach_history_and_the_epoch_line(capsys):
    data = planted_groups(group_sizes=(1, 1), num_train=64, num_validation=16, num_test=16, dim=8)
    from keras_branch.callbacks import EpochLogger

    run = fit_spec(TreeSpec.shared(data.task_names, 2), backbones.mlp(8, (8, 8)), data, epochs=2,
                   verbose=0, log=None, weighting="gradnorm", callbacks=[EpochLogger(data.tasks)])
    keys = [t.key for t in data.tasks]
    for key in keys:
        assert len(run.history[f"{key}_weight"]) == 2
        assert len(run.history[f"{key}_loss"]) == 2
    # GradNorm keeps the sum of the weights at the number of tasks.
    np.testing.assert_allclose(sum(run.history[f"{k}_weight"][-1] for k in keys), 2.0, rtol=1e-5)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"weights {data.task_names[0]}=" in line


@pytest.mark.parametrize("policy, method", [("float16", "pcgrad"), ("bfloat16", "uncertainty")])
def test_mixed_precision(policy, method):
    data = planted_groups(group_sizes=(2, 1), num_train=128, num_validation=16, num_test=16, dim=8)
    run = fit_spec(TreeSpec.shared(data.task_names, 2), backbones.mlp(8, (8, 8)), data, epochs=2,
                   verbose=0, log=None, weighting=method, mixed_precision=policy)
    losses = run.history["loss"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert run.model.weighting.method == method


# -- bad input -------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("softmax", "Unknown weighting; known: equal, fixed, uncertainty, dwa, gradnorm, pcgrad, "
                "cagrad. Received: weighting='softmax'"),
    ("fixed:a=-1", "`fixed weight of task 'a'` must be a finite number >= 0. Received"),
    ("fixed:a=NaN", "`fixed weight of task 'a'` must be a finite number >= 0. Received"),
    ("dwa:tau=3", "dwa: unknown setting 'tau' (it takes temperature). Received: tau=3"),
    ("cagrad:c=1.5", "cagrad: `c` must be below 1. Received: c=1.5"),
    ("pcgrad:seed", "--weighting pcgrad must be KEY=VALUE. Received: 'seed'"),
])
def test_bad_weightings_name_the_method_and_value(text, message):
    with pytest.raises(WeightingError, match=re.escape(message)):
        parse_weighting(text)


def test_fixed_weights_for_tasks_the_model_lacks():
    with pytest.raises(WeightingError, match=r"fixed: weights name tasks the model does not "
                                             r"have \(its tasks: \['a', 'b'\]\). Received: c=2.0"):
        _tiny(parse_weighting("fixed:c=2"))


def test_weighting_on_a_plain_keras_model_is_refused():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(inputs)})
    with pytest.raises(WeightingError, match="needs a keras_branch TaskModel"):
        compile_model(model, [Task("a", "regression")], weighting="dwa")


def test_cli_train_with_a_weighting(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(TreeSpec.shared(["g0_t0", "g1_t0"], 2).to_json())
    data = "planted:groups=1-1,train=128,seed=0"
    args = ["train", "--spec", str(spec), "--data", data, "--backbone", "mlp",
            "--backbone-arg", "widths=[8,8]", "--epochs", "2", "--out", str(tmp_path / "run")]
    assert main([*args, "--weighting", "dwa:temperature=1"]) == 0
    out = capsys.readouterr().out
    assert "weights g0_t0=1 g1_t0=1" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["weighting"] == "dwa:temperature=1"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["g0_t0_weight"]) == 2


@pytest.mark.parametrize("weighting, message", [
    ("adaptive", "Unknown weighting; known: equal, fixed"),
    ("fixed:g0_t0=-2", "`fixed weight of task 'g0_t0'` must be a finite number >= 0. Received"),
    ("fixed:nope=2", "fixed: weights name tasks the model does not have"),
])
def test_cli_bad_weighting_exits_2_with_one_line(tmp_path, capsys, weighting, message):
    spec = tmp_path / "spec.json"
    spec.write_text(TreeSpec.shared(["g0_t0", "g1_t0"], 2).to_json())
    code = main(["train", "--spec", str(spec), "--data", "planted:groups=1-1,train=64",
                 "--backbone", "mlp", "--backbone-arg", "widths=[8,8]", "--epochs", "1",
                 "--weighting", weighting, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_weighting_classes_are_registered_for_safe_loading():
    for cls in (Uncertainty, DWA, GradNorm, PCGrad, CAGrad):
        name = keras.saving.get_registered_name(cls)
        assert name == f"keras_branch>{cls.__name__}"
        assert keras.saving.get_registered_object(name) is cls



def test_a_weighted_model_exports_with_parity(tmp_path):
    from keras_branch.export import export_model

    data = planted_groups(group_sizes=(1, 1), num_train=64, num_validation=16, num_test=16, dim=8)
    run = fit_spec(TreeSpec.shared(data.task_names, 2), backbones.mlp(8, (8, 8)), data, epochs=1,
                   verbose=0, log=None, weighting="dwa", mixed_precision="bfloat16")
    result = export_model(run.model, tmp_path / "export", formats="saved_model,tflite", data=data,
                          check=True)
    # The weighting is training state: the float32 copy carries it, the artifacts do not.
    assert result.parity.passed, result.parity.format_table()
    assert {r.format for r in result.parity.rows} == {"saved_model", "tflite"}
