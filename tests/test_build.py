import keras
import numpy as np
import pytest

from keras_branch import SpecError, Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model
from keras_branch.testing import run_model_test

TASKS = [
    Task("reg", "regression"),
    Task("bin", "binary"),
    Task("cls", "multiclass", classes=5),
    Task("Japanese_(katakana)", "multiclass", classes=3),
]
NAMES = [t.name for t in TASKS]
TREE = TreeSpec(NAMES, {"reg": [0, 0, 0], "bin": [0, 0, 1], "cls": [0, 1, 2], "Japanese_(katakana)": [0, 1, 3]})
NON_TREE = TreeSpec(NAMES, {"reg": [0, 0, 0], "bin": [0, 1, 0], "cls": [1, 1, 1], "Japanese_(katakana)": [1, 0, 1]})


def batch(n=8, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("float32")
    y = {
        "reg": rng.standard_normal(n).astype("float32"),
        "bin": rng.integers(0, 2, n).astype("int32"),
        "cls": rng.integers(-1, 5, n).astype("int32"),
        "Japanese__katakana_": rng.integers(0, 3, n).astype("int32"),
    }
    return x, y


def block_calls(model: keras.Model) -> dict[str, int]:
    """How many times each stage block is called in the functional graph."""
    # A plain functional view of the same graph exposes its nodes publicly.
    config = keras.Model(model.input, model.output).get_config()
    return {
        layer["name"]: len(layer["inbound_nodes"])
        for layer in config["layers"]
        if layer["name"].startswith("stage")
    }


def prefixes(spec: TreeSpec) -> set[tuple[int, ...]]:
    return {tuple(r[: d + 1]) for r in spec.routes.values() for d in range(spec.num_stages)}


def test_branched_model_passes_shared_model_test():
    x, y = batch()
    run_model_test(
        lambda: build_model(TREE, backbones.mlp(6, widths=(8, 8, 4)), TASKS),
        x,
        y,
        {"reg": (None, 1), "bin": (None, 1), "cls": (None, 5), "Japanese__katakana_": (None, 3)},
        compile_fn=compile_model,
    )


@pytest.mark.parametrize(
    "spec",
    [TREE, NON_TREE, TreeSpec.shared(NAMES, 3), TreeSpec.independent(NAMES, 3)],
    ids=["tree", "non-tree", "shared", "independent"],
)
@pytest.mark.parametrize("backbone_name", ["mlp", "convnet"])
def test_count_params_equals_accounting(spec, backbone_name):
    bb = (
        backbones.mlp(6, widths=(8, 8, 4))
        if backbone_name == "mlp"
        else backbones.convnet4((16, 16, 1), filters=4, num_stages=3)
    )
    model = build_model(spec, bb, TASKS)
    assert model.count_params() == spec.count_params(bb, TASKS)


def test_tree_calls_every_block_exactly_once():
    model = build_model(TREE, backbones.mlp(6, widths=(8, 8, 4)), TASKS)
    calls = block_calls(model)
    expected = {f"stage{d + 1}_block{b}" for d in range(3) for b in TREE.blocks(d)}
    assert set(calls) == expected
    assert all(n == 1 for n in calls.values())
    # Every shared prefix is one computation: calls == distinct route prefixes.
    assert sum(calls.values()) == len(prefixes(TREE))


def test_non_tree_shares_weights_across_inputs():
    model = build_model(NON_TREE, backbones.mlp(6, widths=(8, 8, 4)), TASKS)
    calls = block_calls(model)
    assert sum(calls.values()) == len(prefixes(NON_TREE))
    assert calls["stage3_block1"] == 2  # cls and katakana reach it from different blocks
    assert model.count_params() == NON_TREE.count_params(backbones.mlp(6, widths=(8, 8, 4)), TASKS)


def test_outputs_keep_task_order_and_safe_keys():
    model = build_model(TREE, backbones.mlp(6, widths=(8, 8, 4)), TASKS)
    assert list(model.output.keys()) == [t.key for t in TASKS]
    assert model.task_keys["Japanese_(katakana)"] == "Japanese__katakana_"
    x, y = batch(32)
    compile_model(model)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert "Japanese__katakana__accuracy" in history.history


def test_shared_prefix_outputs_match_manual_computation():
    bb = backbones.mlp(6, widths=(8, 8, 4))
    model = build_model(TREE, bb, TASKS)
    x, _ = batch(4)
    # reg and bin share stages 1-2: the head input of both comes from stage2_block0.
    trunk = model.get_layer("stage2_block0")(model.get_layer("stage1_block0")(x))
    reg = model.get_layer("head_reg")(model.get_layer("stage3_block0")(trunk))
    np.testing.assert_allclose(np.asarray(model(x)["reg"]), np.asarray(reg), atol=1e-6)


def test_mismatched_tasks_and_stages():
    bb = backbones.mlp(6, widths=(8, 8, 4))
    with pytest.raises(SpecError, match="Routes have 2 stage"):
        build_model(TreeSpec.shared(NAMES, 2), bb, TASKS)
    with pytest.raises(SpecError, match=r"Task\(s\) \['extra'\] have no route"):
        build_model(TREE, bb, TASKS + [Task("extra", "binary")])
    with pytest.raises(SpecError, match="task list lacks"):
        build_model(TREE, bb, TASKS[:3])


def test_single_task_model_reports_its_metrics():
    from keras_branch.data import planted_groups
    from keras_branch.evaluation import evaluate

    data = planted_groups(group_sizes=(1,), num_train=64, num_validation=32, num_test=32)
    model = compile_model(build_model(TreeSpec.shared(data.task_names, 2),
                                      backbones.mlp(100, widths=(4, 4)), data.tasks))
    metrics = evaluate(model, data, "test")["g0_t0"]
    assert set(metrics) == {"loss", "mse", "mae", "n"} and metrics["n"] == 32
    assert metrics["loss"] == pytest.approx(metrics["mse"], rel=1e-5)


def test_model_fit_refuses_label_lists_and_task_names_as_keys():
    """Keras pairs a list with sorted output keys: it would train the wrong heads."""
    from keras_branch.errors import TaskError

    tasks = [Task("smile", "binary"), Task("age", "regression"),
             Task("Japanese (katakana)", "multiclass", classes=3)]
    model = build_model(TreeSpec.shared([t.name for t in tasks], 2),
                        backbones.mlp(6, widths=[4, 4]), tasks)
    compile_model(model)
    rng = np.random.default_rng(0)
    x = rng.random((8, 6)).astype("float32")
    labels = [rng.integers(0, 2, 8), rng.random(8).astype("float32"), rng.integers(0, 3, 8)]
    with pytest.raises(TaskError, match=r"not a (list|tuple).*sorted key order.*model.task_keys"):
        model.fit(x, labels, epochs=1, verbose=0)
    by_name = dict(zip([t.name for t in tasks], labels))
    with pytest.raises(TaskError, match=r"\['Japanese \(katakana\)'\] are not output keys.*"
                                        r"'Japanese \(katakana\)': 'Japanese__katakana_'"):
        model.evaluate(x, by_name, verbose=0)
    # The right structure still trains after the refused calls.
    by_key = dict(zip([t.key for t in tasks], labels))
    history = model.fit(x, by_key, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("name", ["inputs", "stage1_block0", "head_b", "features_0", "stem"])
def test_a_task_named_like_a_layer_of_the_model_is_refused(name):
    from keras_branch.errors import TaskError
    from keras_branch.soft_ordering_model import build_soft_ordering_model

    tasks = [Task(name, "regression"), Task("b", "regression")]
    with pytest.raises(TaskError, match=rf"Task '{name}' \(output key '{name}'\) has the name of "
                                        r"a layer that a BranchedModel builds"):
        build_model(TreeSpec.shared([name, "b"], 2), backbones.mlp(6, widths=[4, 4]), tasks)
    if name in ("inputs", "head_b", "stem"):
        with pytest.raises(TaskError, match="a SoftOrderingModel builds"):
            build_soft_ordering_model(tasks, (6,), "soft", depth=2, width=4)
