"""Task-owned batch norms: the TreeSpec field, the builder, and evolution's `norms` rule."""

import inspect
import re

import keras
import numpy as np
import pytest

from keras_branch import SearchError, SpecError, Task, TreeSpec, backbones, build_model
from keras_branch.build import NormedBlock, block_name, norm_name
from keras_branch.cli import main
from keras_branch.compiling import compile_model
from keras_branch.data import load_data
from keras_branch.data.multitask import MultiTaskData, Split
from keras_branch.search.evolution import (
    EvolvedSystem,
    TaskPath,
    apply_norm_rule,
    check_evolve_args,
    evolve,
)
from keras_branch.search.evolution.weights import component_layers, set_weights
from keras_branch.testing import check_tflite_parity, run_model_test
from keras_branch.training import fit_spec

FILTERS = 4
#: A convnet4 stage's batch norm: scale, offset, moving mean and variance per filter.
NORM_PARAMS = 4 * FILTERS
TASKS = [Task("a", "multiclass", classes=3), Task("b", "multiclass", classes=2),
         Task("c c", "binary")]
# a: the plain path; b owns the norms of its blocks at stages 1-3; "c c" shares
# b's stage-3 block, which no task runs whole, with norms of its own.
NORMED = TreeSpec(["a", "b", "c c"], {"a": [0, 0, 0], "b": [0, 0, 1], "c c": [0, 1, 1]},
                  norms={"b": [1, 1, 1], "c c": [0, 1, 1]})


def _backbone():
    return backbones.convnet4((12, 12, 1), filters=FILTERS, num_stages=3)


def _images(n=48, size=12, seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("train", "validation", "test"):
        x = rng.random((n, size, size, 1)).astype("float32")
        # Labels that depend on the images, so training moves the weights.
        mean = x.mean(axis=(1, 2, 3))
        y = {"a": (mean * 30).astype("int32") % 3, "b": (mean > np.median(mean)).astype("int32"),
             "c c": (x[:, 0, 0, 0] > 0.5).astype("int32")}
        splits[split] = Split(x, y)
    return MultiTaskData(TASKS, splits, name="tiny")


def _perturb_norms(model, rng):
    for layer in component_layers(model).values():
        if layer.name.startswith("norm"):
            layer.set_weights([w + rng.random(w.shape).astype("float32") for w in layer.get_weights()])


# === The spec field ===


def test_norms_round_trip_and_count_in_the_spec():
    assert TreeSpec.from_json(NORMED.to_json()) == NORMED
    assert TreeSpec.from_json(NORMED.to_json(indent=2)).to_dict() == NORMED.to_dict()
    assert NORMED.to_dict()["norms"] == {"b": [1, 1, 1], "c c": [0, 1, 1]}
    assert NORMED.norm_flags("a") == [0, 0, 0] and NORMED.owner("c c", 1) == (None, "c c")
    plain = TreeSpec(NORMED.tasks, NORMED.routes)
    assert NORMED != plain and not NORMED.is_plain
    # All zeros are not stored: the same spec as none.
    assert TreeSpec(plain.tasks, plain.routes, norms={"a": [0, 0, 0]}).to_dict() == plain.to_dict()
    # b and "c c" share stage 3's block after different inputs (their own norms at stage 2).
    assert plain.is_tree is False and TreeSpec(
        ["b", "c c"], {"b": [0, 1, 1], "c c": [0, 1, 1]}, norms={"b": [0, 1, 0]}).is_tree is False
    assert TreeSpec(["b", "c c"], {"b": [0, 1, 1], "c c": [0, 1, 1]}).is_tree
    assert "c c: own norms at stage(s) 2, 3" in str(NORMED)
    bb = _backbone()
    assert [bb.stage_norm_positions(d) for d in range(3)] == [[1], [1], [1]]
    assert bb.stage_norm_params(0) == NORM_PARAMS
    # b: 3 stages, "c c": 2 stages.
    assert NORMED.param_breakdown(bb, TASKS)["norms"] == 5 * NORM_PARAMS


@pytest.mark.parametrize("norms, message", [
    ({"b": [1, 2, 0]}, "Received: norms['b'][1]=2"),
    ({"b": [1, 1]}, "`norms['b']` must list one flag per stage (3)"),
    ({"zz": [1, 1, 1]}, "`norms` names task(s) ['zz']"),
    ({"b": "111"}, "Received: '111'"),
])
def test_bad_norms_are_refused_naming_the_field_and_value(norms, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        TreeSpec.from_dict({**NORMED.to_dict(), "norms": norms})


# === The builder ===


def test_a_normed_model_passes_the_model_contract_and_counts_every_parameter(tmp_path):
    bb = _backbone()
    model = build_model(NORMED, bb, TASKS)
    assert model.count_params() == NORMED.count_params(bb, TASKS)
    layers = component_layers(model)
    assert {norm_name(d, 1, "b") for d in range(3)} | {"norm2_1_c_c", "norm3_1_c_c"} <= set(layers)
    # Stage 3's block 1 is run only through its users' own norms; it is still
    # part of the model (its convolution shared), so its weights save and load.
    assert block_name(2, 1) in layers and block_name(2, 1) not in {x.name for x in model.layers}
    rng = np.random.default_rng(0)
    x = rng.random((4, 12, 12, 1), dtype="float32")
    y = {"a": rng.integers(0, 3, 4), "b": rng.integers(0, 2, 4),
         "c_c": rng.integers(0, 2, 4).astype("float32")}

    def perturbed():
        normed = build_model(NORMED, bb, TASKS)
        _perturb_norms(normed, np.random.default_rng(1))
        return normed

    run_model_test(perturbed, x, y, {"a": (None, 3), "b": (None, 2), "c_c": (None, 1)},
                   compile_fn=compile_model)
    # TFLite runs the shared layers around the task's norms as Keras does (float32).
    check_tflite_parity(perturbed(), x, tmp_path)


def test_own_norms_start_as_the_blocks_and_change_only_their_task():
    bb = _backbone()
    normed = build_model(NORMED, bb, TASKS)
    plain = build_model(TreeSpec(NORMED.tasks, NORMED.routes), bb, TASKS)
    rng = np.random.default_rng(0)
    for layer in component_layers(plain).values():  # blocks and heads: trained-like weights
        if layer.name.startswith(("stage", "head")):
            layer.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype("float32")
                               for w in layer.get_weights()])
    set_weights(normed, {name: layer.get_weights() for name, layer in component_layers(plain).items()
                         if name.startswith(("stage", "head"))})
    for normed_block in (x for x in normed.layers if isinstance(x, NormedBlock)):
        for i, norm in zip(normed_block.positions, normed_block.norms):
            norm.set_weights(normed_block.block.layers[i].get_weights())
    x = rng.random((6, 12, 12, 1), dtype="float32")
    want = plain.predict(x, verbose=0)
    got = normed.predict(x, verbose=0)
    for key in want:  # copies of the blocks' norms compute what the blocks compute
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6)
    _perturb_norms(normed, rng)
    moved = normed.predict(x, verbose=0)
    np.testing.assert_array_equal(moved["a"], got["a"])  # a owns no norm
    assert not np.allclose(moved["b"], got["b"]) and not np.allclose(moved["c_c"], got["c_c"])


def test_norms_need_stages_holding_batch_norms():
    spec = TreeSpec(["a"], {"a": [0, 0]}, norms={"a": [0, 1]})
    with pytest.raises(SpecError, match=r"`norms\['a'\]\[1\]` is 1, but stage 2 of backbone 'mlp' "
                                        r"is a Dense with no BatchNormalization"):
        build_model(spec, backbones.mlp(6, widths=(4, 4)), [Task("a", "regression")])


# === Evolution's rule ===


@pytest.fixture(scope="module")
def evolved_with_norms():
    data = _images()
    keras.utils.set_random_seed(0)
    root = fit_spec(TreeSpec.shared(["a"], 3), _backbone(), data.select_tasks(["a"]), epochs=2,
                    verbose=0, log=None).model
    # With these draws a clones every stage and b shares two root stages.
    result = evolve(root, ["a", "b"], data, scale=0.5, passes=1, candidates=3, candidate_epochs=1,
                    mutation_prob=0.3, norms="task", log=None)
    return data, root, result


def test_apply_norm_rule_owns_the_norms_of_shared_blocks_only(evolved_with_norms):
    _, _, result = evolved_with_norms
    system = result.system
    # Stage 1 shared, stage 2 a fresh clone (negative), stage 3 past the depth.
    path = TaskPath([0, -1, 0], 2, [0, 0, 0], {})
    assert apply_norm_rule(system, path, "task").norms == [1, 0, 0]
    assert apply_norm_rule(system, TaskPath.root(3), "task").norms == [1, 1, 1]
    assert apply_norm_rule(system, TaskPath.root(3), "frozen").norms == [0, 0, 0]
    # A block id the system does not hold is a clone of this visit: trained, not shared.
    assert apply_norm_rule(system, TaskPath([0, 0, 99], 3, [0, 0, 0], {}), "task").norms == [1, 1, 0]
    # Accounting: the task's own norms are its own.
    task = Task("new", "binary")
    assert system.accounted_params(task, apply_norm_rule(system, TaskPath.root(3), "task")) == \
        pytest.approx(system.accounted_params(task, TaskPath.root(3)) + 3 * NORM_PARAMS)


def test_evolved_paths_own_the_norms_of_what_they_share_and_train_only_them(evolved_with_norms,
                                                                           tmp_path):
    data, root, result = evolved_with_norms
    system = result.system
    root_system = EvolvedSystem.from_root(root)
    a_route = system.path("a").route
    for name in ("a", "b"):
        path = system.path(name)
        # a (visited first) shares only the root; b also shares a's clones.
        shared = [int(d < path.depth and (block == 0 or (name == "b" and block == a_route[d])))
                  for d, block in enumerate(path.route)]
        assert path.norms == shared, (name, path)
        owned = {n for n in system.weights if n.startswith("norm") and n.endswith(f"_{name}")}
        assert owned == {norm_name(d, 1, name) for d, flag in enumerate(shared) if flag}
        # Trained away from the norm of the block they replace (its weights after the kernel).
        for d in (d for d, flag in enumerate(shared) if flag):
            block_norm = system.weights[block_name(d, path.route[d])][1:]
            assert not all(np.array_equal(w, v) for w, v in
                           zip(system.weights[norm_name(d, 1, name)], block_norm)), (name, d)
    assert sum(system.path("b").norms) >= 1  # the draws above: a case that shares
    # The root's blocks are frozen: bit-identical to the root's after the search.
    for d in range(3):
        for w, v in zip(root_system.weights[block_name(d, 0)], system.weights[block_name(d, 0)]):
            np.testing.assert_array_equal(w, v)
    # The system saves, loads and builds the same model, parameters counted.
    out = tmp_path / "system"
    system.save(out)
    loaded = EvolvedSystem.load(out)
    assert loaded.spec == system.spec and loaded.spec.norms
    model = loaded.build()
    assert model.count_params() == system.spec.count_params(system.backbone, system.tasks)
    x = data.split("test").x[:8]
    want = result.model.predict(x, verbose=0)
    for got in (model.predict(x, verbose=0),
                keras.saving.load_model(out / "model.keras").predict(x, verbose=0)):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert result.scores["config"]["norms"] == "task"


def test_adding_a_task_with_own_norms_leaves_old_outputs_bit_identical(evolved_with_norms):
    data, _, result = evolved_with_norms
    grown = evolve(result.system, ["c c"], data, scale=0.5, passes=1, candidates=2,
                   candidate_epochs=1, norms="task", log=None)
    x = data.split("test").x[:16]
    before = result.model.predict(x, verbose=0)
    after = grown.model.predict(x, verbose=0)
    for key in before:
        assert np.array_equal(before[key], after[key]), key
    assert any(grown.system.path("c c").norms)


def test_norms_rule_errors_and_defaults(evolved_with_norms, tmp_path, capsys):
    data, root, result = evolved_with_norms
    assert inspect.signature(evolve).parameters["norms"].default == "frozen"
    frozen = evolve(root, ["a"], data, passes=1, candidates=1, candidate_epochs=1, log=None)
    assert not frozen.system.spec.norms and "norms" not in frozen.scores["config"]
    with pytest.raises(SearchError, match=r"`norms` must be one of \['frozen', 'task'\]\. "
                                          r"Received: norms='own'"):
        evolve(root, ["a"], data, norms="own", log=None)
    with pytest.raises(SearchError, match=r"`evolve_norms` must be one of"):
        check_evolve_args({"norms": "x"}, prefix="evolve_")
    # A backbone without batch norms: refused before any training, in Python and
    # on the command line (so the flag reaches the search).
    planted = "planted:seed=0,groups=2-2,train=200"
    flat = load_data(planted)
    mlp_root = fit_spec(TreeSpec.shared(flat.task_names[:1], 2), backbones.mlp(
        flat.input_shape[0], widths=(4, 4)), flat, epochs=1, verbose=0, log=None).model
    message = (r"no stage of backbone 'mlp' is a keras.Sequential holding BatchNormalization "
               r"layers\. Received: norms='task'")
    with pytest.raises(SearchError, match=message):
        evolve(mlp_root, None, flat, norms="task", log=None)
    root_file = tmp_path / "root.keras"
    mlp_root.save(root_file)
    for value, expected in (("task", message), ("own", r"--norms: invalid choice: 'own'")):
        assert main(["evolve", "--root", str(root_file), "--data", planted, "--norms", value,
                     "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(expected, err), err
    assert not (tmp_path / "y").exists()
