"""muNet evolution: evolved specs, the adapter, the search, adding tasks, resuming."""

import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_branch import SearchError, SpecError, Task, TreeSpec, backbones, build_model
from keras_branch.build import adapter_name, block_name
from keras_branch.cli import main
from keras_branch.compiling import compile_model
from keras_branch.data import load_data
from keras_branch.evaluation import evaluate
from keras_branch.export import export_model, litert_runner
from keras_branch.layers import Adapter
from keras_branch.layers.adapter import adapter_params
from keras_branch.search.evolution import (
    DEFAULT_HPARAMS,
    DRAWS_PER_SLOT,
    HPARAM_LISTS,
    EvolvedSystem,
    TaskPath,
    evolve,
    mutate,
)
from keras_branch.search.evolution.candidates import (
    child_weights,
    final_start_weights,
    train_candidate,
)
from keras_branch.search.evolution.state import SearchState
from keras_branch.search.evolution.selection import finalists
from keras_branch.search.tree_search import shared_params
from keras_branch.testing import run_layer_test, run_model_test
from keras_branch.training import fit_spec

DATA = "planted:seed=0,groups=2-2,train=600"
TINY = dict(passes=1, candidates=3, candidate_epochs=1, log=None)


# === The adapter ===


def test_adapter_layer_contract():
    run_layer_test(Adapter, {"dim": 4}, (3, 5, 5, 8), (3, 5, 5, 8))
    run_layer_test(Adapter, {"dim": 2}, (4, 6), (4, 6))


def test_adapter_starts_as_identity_and_counts_its_params():
    layer = Adapter(8)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 16)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    assert layer.count_params() == adapter_params(16, 8) == 2 * 16 + 16 * 8 + 8 + 8 * 16 + 16


def test_adapter_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim=0"):
        Adapter(0)


# === The evolved spec ===

EVOLVED = {
    "tasks": ["a", "b", "c"],
    "routes": {"a": [0, 0, 0, 0], "b": [0, 0, 1, 1], "c": [0, 1, 0, 0]},
    "depths": {"c": 3},
    "adapters": {"b": [0, 8, 0, 4]},
    "hparams": {"b": {"learning_rate": 0.01, "adapter_dim": 8}},
}
TASKS3 = [Task("a", "multiclass", classes=5), Task("b", "binary"), Task("c", "regression")]


def test_evolved_spec_round_trips_and_builds_with_exact_param_count():
    spec = TreeSpec.from_dict(EVOLVED)
    assert TreeSpec.from_json(spec.to_json()) == spec
    assert TreeSpec.from_json(spec.to_json(indent=2)).to_dict() == EVOLVED
    assert spec.used_route("c") == [0, 1, 0] and spec.depth("a") == 4
    assert spec.blocks(3) == [0, 1]  # c stops before stage 4
    assert not spec.is_tree  # b's adapter makes its stage-3 input its own
    bb = backbones.convnet4((28, 28, 1))
    model = build_model(spec, bb, TASKS3)
    assert model.count_params() == spec.count_params(bb, TASKS3)
    parts = spec.param_breakdown(bb, TASKS3)
    assert parts["adapters"] == adapter_params(64, 8) + adapter_params(64, 4)
    # c's head reads stage 3: 3x3x64 flattened at 28x28.
    assert model.get_layer("head_c").kernel.shape == (3 * 3 * 64, 1)
    assert {"adapter2_b", "adapter4_b"} <= {layer.name for layer in model.layers}
    rng = np.random.default_rng(0)
    x = rng.random((4, 28, 28, 1), dtype="float32")
    y = {"a": rng.integers(0, 5, 4), "b": rng.integers(0, 2, 4).astype("float32"),
         "c": rng.standard_normal(4).astype("float32")}
    run_model_test(lambda: build_model(spec, bb, TASKS3), x, y,
                   {"a": (None, 5), "b": (None, 1), "c": (None, 1)}, compile_fn=compile_model)


def test_plain_specs_are_unchanged_by_the_new_fields():
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    assert spec.to_dict() == {"tasks": ["a", "b"], "routes": {"a": [0, 0], "b": [0, 1]}}
    assert spec.is_plain and spec.is_tree
    # Defaults are not stored: an explicit full depth and zero adapters equal the plain spec.
    same = TreeSpec(["a", "b"], spec.routes, depths={"a": 2}, adapters={"b": [0, 0]})
    assert same == spec and same.to_dict() == spec.to_dict()


@pytest.mark.parametrize("field, value, message", [
    ("depths", {"a": 0}, "depths['a']"),
    ("depths", {"a": 5}, "Received: 5"),
    ("depths", {"zz": 1}, "zz"),
    ("adapters", {"b": [0, 8]}, "adapters['b']"),
    ("adapters", {"b": [0, -1, 0, 0]}, "Received: adapters['b'][1]=-1"),
    ("hparams", {"b": {"lr": [1, 2]}}, "JSON scalars"),
    ("hparams", [1], "`hparams` must map"),
])
def test_evolved_spec_errors_name_field_and_value(field, value, message):
    data = {**EVOLVED, field: value}
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TreeSpec.from_dict(data)


# === Mutations ===


def test_mutations_are_seeded_and_cover_every_kind():
    parent = TaskPath.root(4)
    a = mutate(parent, 4, np.random.default_rng(3), prob=0.5)
    b = mutate(parent, 4, np.random.default_rng(3), prob=0.5)
    assert a[0] == b[0] and a[1] == b[1]
    assert mutate(parent, 4, np.random.default_rng(0), prob=0.0) == (parent, [])
    child, done = mutate(parent, 4, np.random.default_rng(0), prob=1.0)
    kinds = {d.split("(")[0] for d in done}
    assert {"clone", "adapter"} <= kinds and "depth" in kinds
    assert len(kinds - {"clone", "adapter", "depth"}) == 1  # one hyperparameter moved
    assert child.depth == 3  # from the full depth, the only step is down
    assert all(b < 0 for b in child.route[:3])  # clones are marked until they get ids
    name = next(iter(kinds - {"clone", "adapter", "depth"}))
    values = HPARAM_LISTS[name]
    assert abs(values.index(child.hparams[name]) - values.index(parent.hparams[name])) == 1
    assert parent == TaskPath.root(4)  # the parent is not modified


# === The search ===


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    data = load_data(DATA)
    keras.utils.set_random_seed(0)
    bb = backbones.mlp(data.input_shape[0], widths=(32, 32, 32))
    root = fit_spec(TreeSpec.shared(data.task_names[:1], 3), bb, data, epochs=3, verbose=0,
                    log=None).model
    out = tmp_path_factory.mktemp("evolve") / "system"
    first = evolve(root, data.task_names[:2], data, scale=0.5, out_dir=out, **TINY)
    return data, root, first, out


def test_evolve_builds_a_system_whose_spec_and_weights_round_trip(evolved):
    data, _, result, out = evolved
    system = result.system
    assert system.task_names == data.task_names[:2]
    spec = TreeSpec.load(out / "spec.json")
    assert spec == system.spec
    model = keras.saving.load_model(out / "model.keras")
    assert model.count_params() == spec.count_params(system.backbone, system.tasks)
    x = data.split("test").x[:16]
    want = result.model.predict(x, verbose=0)
    got = model.predict(x, verbose=0)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    loaded = EvolvedSystem.load(out)
    assert loaded.spec == system.spec and loaded.root_params == system.root_params
    for name, weights in system.weights.items():
        for w, v in zip(weights, loaded.weights[name]):
            np.testing.assert_array_equal(w, v)
    # The root stays in the system even when no task uses its last block.
    assert {"stage1_block0", "stage2_block0", "stage3_block0"} <= set(loaded.weights)


def test_every_candidate_is_scored_by_the_formula(evolved):
    data, _, result, _ = evolved
    system = result.system
    root_params = 32 * 32 + 32 + 2 * (32 * 32 + 32) + data.input_shape[0] * 32 - 32 * 32
    assert system.root_params == root_params
    assert len(result.history) == 2 * TINY["candidates"]
    for record in result.history:
        assert record["score"] == pytest.approx(
            record["quality"] * 0.5 ** (record["params"] / root_params), rel=1e-12)
    # The last task installed is charged what it was scored with; earlier tasks
    # are charged less once later tasks share their blocks, never more.
    now = {t.name: system.accounted_params(t, system.path(t.name)) for t in system.tasks}
    last = system.task_names[-1]
    assert system.scores[last]["params"] == pytest.approx(now[last])
    for name in system.task_names:
        assert now[name] <= system.scores[name]["params"] + 1e-9


def test_accounted_params_divide_shared_blocks_by_their_users(evolved):
    _, _, result, _ = evolved
    system = result.system
    bb = system.backbone
    task = Task("new", "regression")
    path = TaskPath.root(3)
    # The task itself and the root (kept by the system) are users too.
    users = [system.block_users(d, 0) + 2 for d in range(3)]
    expected = sum(bb.stage_params(d) / users[d] for d in range(3)) + bb.feature_size() + 1
    assert system.accounted_params(task, path) == pytest.approx(expected)


def test_adding_a_task_leaves_old_tasks_bit_identical_in_keras_and_tflite(evolved, tmp_path):
    data, _, first, _ = evolved
    new_task = data.task_names[2]
    second = evolve(first.system, [new_task], data, scale=0.5, **TINY)
    assert second.system.task_names == data.task_names[:3]
    # Components the old tasks use are byte-for-byte the same arrays.
    for name, weights in first.system.weights.items():
        if name in second.system.weights:
            for w, v in zip(weights, second.system.weights[name]):
                np.testing.assert_array_equal(w, v)
    x = data.split("test").x[:32]
    old_keys = [t.key for t in first.system.tasks]
    before = first.model.predict(x, verbose=0)
    after = second.model.predict(x, verbose=0)
    for key in old_keys:
        assert np.array_equal(before[key], after[key]), key
    # TFLite: the per-task signatures of the old tasks give identical bytes.
    exports = {}
    for label, result in (("before", first), ("after", second)):
        out = export_model(result.model, tmp_path / label, formats=["tflite"])
        exports[label] = litert_runner.run_all(os.path.join(out.out_dir, out.files["tflite"]), x)
    for key in old_keys:
        for output, value in exports["before"][key].items():
            assert np.array_equal(value, exports["after"][key][output]), (key, output)


def test_a_task_added_later_scores_as_in_one_evolution_of_all_tasks(evolved):
    # With one pass, a task's visit sees the same system and draws the same
    # candidates whether its predecessors were evolved in this call or loaded
    # from a saved system: adding it later costs it nothing.
    data, root, _, system_dir = evolved
    new_task = data.task_names[2]
    added = evolve(EvolvedSystem.load(system_dir), [new_task], data, scale=0.5, **TINY)
    together = evolve(root, data.task_names[:3], data, scale=0.5, **TINY)
    assert added.system.spec == together.system.spec
    for split in ("validation", "test"):
        assert added.metrics[split][new_task] == pytest.approx(together.metrics[split][new_task],
                                                               abs=1e-6)


def test_evolve_rejects_bad_arguments(evolved):
    data, root, _, _ = evolved
    with pytest.raises(SearchError, match="scale=1.5"):
        evolve(root, None, data, scale=1.5, log=None)
    with pytest.raises(SearchError, match="candidates=0"):
        evolve(root, None, data, candidates=0, log=None)
    with pytest.raises(SearchError, match="final_epochs=-1"):
        evolve(root, None, data, final_epochs=-1, log=None)
    with pytest.raises(SearchError, match="final_learning_rate=0"):
        evolve(root, None, data, final_epochs=1, final_learning_rate=0, log=None)
    with pytest.raises(SearchError, match=r"`clones` must be one of .*Received: clones='tree'"):
        evolve(root, None, data, clones="tree", log=None)
    with pytest.raises(SearchError, match=r"`depth_moves` must be one of \['shape', 'any'\]\. "
                                          r"Received: depth_moves='all'"):
        evolve(root, None, data, depth_moves="all", log=None)
    with pytest.raises(SearchError, match=r"`adapters` must be one of \['between', 'any'\]\. "
                                          r"Received: adapters='last'"):
        evolve(root, None, data, adapters="last", log=None)
    with pytest.raises(SearchError, match="unknown"):
        evolve(root, ["nope"], data, log=None)
    with pytest.raises(SearchError, match="root_task"):
        evolve(root, None, data, root_task="nope", log=None)
    with pytest.raises(SearchError, match="no trained weights"):
        evolve(backbones.mlp(100), None, data, log=None)


def test_finalists_are_the_best_entries_of_distinct_structure():
    def entry(name, value, route, adapters=(0, 0, 0), depth=3):
        return {"id": name, "score": value,
                "path": {"route": list(route), "depth": depth, "adapters": list(adapters)}}

    shared = lambda d, b: b in (0, 1)  # noqa: E731  (blocks 0 and 1 are the system's)
    population = [
        entry("root", None, (0, 0, 0)),                 # not scored: never a finalist
        entry("frozen", 0.90, (0, 0, 0)),
        entry("frozen_again", 0.95, (0, 0, 0)),         # same structure, better: replaces it
        entry("clone3", 0.95, (0, 0, 7)),               # ties frozen_again: comes after it
        entry("clone3_other", 0.99, (0, 0, 9)),         # another lineage's clone, same structure
        entry("other_task", 0.80, (0, 0, 1)),           # reads another task's block
        entry("adapters", 0.85, (0, 0, 0), (0, 0, 16)),
        entry("shallow", 0.70, (0, 0, 5), depth=2),     # stage 3 unused: same as frozen at depth 2
    ]
    ids = lambda n: [e["id"] for e in finalists(population, n, shared)]  # noqa: E731
    assert ids(1) == ["clone3_other"]
    assert ids(3) == ["clone3_other", "frozen_again", "adapters"]
    assert ids(10) == ["clone3_other", "frozen_again", "adapters", "other_task", "shallow"]
    # Ties keep the population's order, as the single best (max) always did.
    tied = [entry("a", 0.5, (0, 0, 0)), entry("b", 0.5, (0, 0, 7))]
    assert [e["id"] for e in finalists(tied, 1, shared)] == ["a"]
    assert finalists([entry("root", None, (0, 0, 0))], 2, shared) == []


@pytest.mark.slow  # two evolutions with final training; the final training itself is tested below
def test_finalists_train_longer_and_the_best_after_it_is_installed(evolved):
    data, _, first, _ = evolved
    name = data.task_names[2]
    settings = dict(TINY, candidates=6, mutation_prob=0.6, final_epochs=3)
    one = evolve(first.system, [name], data, **settings)
    two = evolve(first.system, [name], data, finalists=2, **settings)
    finals = [r for r in two.scores["history"] if "final" in r]
    assert [(r["finalist"], r["epochs"]) for r in finals] == [(1, 3), (2, 3)]
    # The candidates are one finalist's run's, record for record, and so is the first finalist.
    candidates = [r for r in two.scores["history"] if "final" not in r]
    assert _without_seconds(candidates) == \
        _without_seconds([r for r in one.scores["history"] if "final" not in r])
    assert _without_seconds(finals[:1]) == \
        _without_seconds([r for r in one.scores["history"] if "final" in r])
    # The finalists are the two best kept candidates of distinct structure.
    kept = {f"p0c{r['candidate']}": r for r in candidates if r["accepted"]}
    assert finals[0]["score"] is not None and finals[0]["path"] != finals[1]["path"]
    assert kept[finals[0]["final"]]["score"] >= kept[finals[1]["final"]]["score"]
    # Installed: the finalist with the better score after the final training.
    winner = max(finals, key=lambda r: r["score"])
    assert two.system.scores[name]["quality"] == winner["quality"]
    assert two.system.path(name).to_dict()["route"] == winner["path"]["route"]
    assert two.scores["config"]["finalists"] == 2
    with pytest.raises(SearchError, match=r"`finalists` must be a positive int. Received: finalists=0"):
        evolve(first.system, [name], data, finalists=0, **TINY)


def test_final_training_trains_the_installed_path_and_nothing_else(evolved):
    data, _, first, _ = evolved
    name = data.task_names[2]
    plain = evolve(first.system, [name], data, **TINY)
    final = evolve(first.system, [name], data, final_epochs=3, **TINY)
    finals = [r for r in final.scores["history"] if "final" in r]
    assert [(r["task"], r["epochs"]) for r in finals] == [(name, 3)]
    # The candidates are those of the run without final training, record for record.
    assert _without_seconds([r for r in final.scores["history"] if "final" not in r]) == \
        _without_seconds(plain.scores["history"])
    # The installed path is the best candidate's, trained further: its quality is the
    # final training's, measured on the validation split.
    assert final.system.spec == plain.system.spec
    assert final.system.scores[name]["quality"] == finals[0]["quality"]
    model = final.system.build()
    compile_model(model)
    got = evaluate(model, data.select_tasks(final.system.task_names), "validation")[name]
    assert finals[0]["quality"] == pytest.approx(1 / (1 + got["mse"]), rel=1e-4)
    # Only the new task's own components moved; every other component is the system's.
    own = [n for n in final.system.weights if n not in first.system.weights]
    assert own and all(n.endswith(final.system.tasks[-1].key) or n.startswith("stage") for n in own)
    assert any(not np.array_equal(a, b) for n in own
               for a, b in zip(final.system.weights[n], plain.system.weights[n]))
    for n, weights in first.system.weights.items():
        for a, b in zip(weights, final.system.weights[n]):
            np.testing.assert_array_equal(a, b)
    # A final rate of its own changes only the final training (the path keeps its hparams).
    other = evolve(first.system, [name], data, final_epochs=3, final_learning_rate=0.05, **TINY)
    assert other.system.spec == final.system.spec
    assert _without_seconds([r for r in other.scores["history"] if "final" not in r]) == \
        _without_seconds(plain.scores["history"])
    assert any(not np.array_equal(a, b) for n in own
               for a, b in zip(other.system.weights[n], final.system.weights[n]))


def test_final_batch_size_sets_only_the_final_trainings_batch(evolved, monkeypatch):
    """The final training runs at `final_batch_size`; candidates and the installed path keep theirs."""
    from keras_branch.search.evolution import loop

    data, _, first, _ = evolved
    name = data.task_names[2]
    calls = []
    real = loop.train_candidate

    def spy(system, task, path, owned, data, epochs, *args, schedule="constant"):
        calls.append((schedule, path.hparams["batch_size"]))
        return real(system, task, path, owned, data, epochs, *args, schedule=schedule)

    monkeypatch.setattr(loop, "train_candidate", spy)
    result = evolve(first.system, [name], data, final_epochs=1, final_batch_size=5, **TINY)
    candidates = [c for c in calls if c[0] == "constant"]
    assert [c[0] for c in calls] == ["constant"] * TINY["candidates"] + ["cosine"]
    assert calls[-1][1] == 5
    assert all(c[1] in HPARAM_LISTS["batch_size"] for c in candidates)
    # The installed path keeps the hyperparameters the search chose.
    assert result.system.path(name).hparams["batch_size"] in HPARAM_LISTS["batch_size"]
    assert result.scores["config"]["final_batch_size"] == 5
    with pytest.raises(SearchError, match=r"`final_batch_size` must be a positive int or None\. "
                                          r"Received: final_batch_size=0"):
        evolve(first.system, [name], data, final_epochs=1, final_batch_size=0, **TINY)


def test_the_final_training_starts_from_the_root_not_from_the_lineage(evolved):
    data, _, first, _ = evolved
    system, task = first.system, data.tasks[2]
    clone = system.next_block_id(2)
    path = TaskPath([0, 0, clone], 3, [0, 4, 0], dict(DEFAULT_HPARAMS))
    own = {block_name(2, clone): system.weights[block_name(2, 0)],
           adapter_name(1, task.key): None, f"head_{task.key}": None}
    one_task = data.select_tasks([task.name])
    # Two lineages: the same path trained from other seeds, so other weights.
    lineages = [train_candidate(system, task, path, own, one_task, 1, None, s, s + 1)[1]
                for s in (1, 2)]
    assert any(not np.array_equal(a, b) for n in own
               for a, b in zip(lineages[0][n], lineages[1][n]))
    start = final_start_weights(system, lineages[0], "root")
    assert start.keys() == own.keys() and start[adapter_name(1, task.key)] is None
    assert start[f"head_{task.key}"] is None
    assert all(np.array_equal(a, b) for a, b in zip(start[block_name(2, clone)],
                                                    system.weights[block_name(2, 0)]))
    assert final_start_weights(system, lineages[0], "inherited") == lineages[0]
    # From the root, the final training ends where the path takes it, whichever lineage found it.
    finals = [train_candidate(system, task, path, final_start_weights(system, w, start_at),
                              one_task, 2, None, 7, 8, schedule="cosine")
              for start_at in ("root", "inherited") for w in lineages]
    assert finals[0][0] == finals[1][0]
    for n in own:
        for a, b in zip(finals[0][1][n], finals[1][1][n]):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for n in own
               for a, b in zip(finals[2][1][n], finals[3][1][n]))
    with pytest.raises(ValueError, match=r"`final_start` must be one of \['inherited', 'root'\]\. "
                                         r"Received: final_start='parent'"):
        final_start_weights(system, lineages[0], "parent")


@pytest.mark.slow  # two evolutions; where "root" starts is tested in the test above
def test_evolve_records_where_the_final_training_started(evolved):
    data, _, first, _ = evolved
    name = data.task_names[2]
    runs = {start: evolve(first.system, [name], data, final_epochs=2, final_start=start, **TINY)
            for start in ("root", "inherited")}
    histories = {k: r.scores["history"] for k, r in runs.items()}
    # The search is the same; only the final training's start differs.
    assert _without_seconds([r for r in histories["root"] if "final" not in r]) == \
        _without_seconds([r for r in histories["inherited"] if "final" not in r])
    assert [r["start"] for r in histories["root"] if "final" in r] == ["root"]
    assert [r["start"] for r in histories["inherited"] if "final" in r] == ["inherited"]
    assert runs["root"].scores["config"]["final_start"] == "root"
    # muNet's way is the default: "root" measured no better on Omniglot-5 (docs/evolution.md).
    assert inspect.signature(evolve).parameters["final_start"].default == "inherited"
    with pytest.raises(SearchError, match=r"`final_start` must be one of \['inherited', 'root'\]\. "
                                          r"Received: final_start='parent'"):
        evolve(first.system, [name], data, final_start="parent", **TINY)


def test_equal_candidate_start_trains_a_child_from_what_its_parent_started_from(evolved):
    data, _, first, _ = evolved
    system, task = first.system, data.tasks[2]
    state = SearchState(None, {"scale": 0.5}, system, lambda _: None)
    root_entry = state.population((0, 0), task)[0]
    # A kept candidate of this visit: it cloned stage 3 of the root and put an adapter at stage 1.
    parent_path = TaskPath.root(3)
    parent_path.route[2], parent_path.adapters[0] = -1, 8
    began = child_weights(system, task, root_entry, parent_path, state)
    clone = block_name(2, parent_path.route[2])
    assert parent_path.route[2] > 0 and began[clone] == system.weights[block_name(2, 0)]
    assert began[adapter_name(0, task.key)] is None and began[f"head_{task.key}"] is None
    trained = {clone: [w + 1 for w in began[clone]],
               adapter_name(0, task.key): [np.full((2, 2), 3.0)], f"head_{task.key}": [np.ones(4)]}
    entry = {"id": "p0c0", "path": parent_path.to_dict(), "score": 0.5, "children": 0,
             "trained": True}
    state.record((0, 0), {"candidate": 0}, entry, trained, began)
    # A child without mutation: muNet's start continues the parent's training,
    # the equal start begins where the parent began (fresh layers fresh again).
    starts = {}
    for rule in ("inherited", "equal"):
        path = TaskPath.from_dict(parent_path.to_dict())
        starts[rule] = child_weights(system, task, entry, path, state, rule)
        assert path.route == parent_path.route  # keeps training the parent's clone id
    assert starts["inherited"] == trained
    assert starts["equal"] == began
    with pytest.raises(ValueError, match=r"`candidate_start` must be one of \['inherited', 'equal'\]\. "
                                         r"Received: candidate_start='root'"):
        child_weights(system, task, entry, TaskPath.from_dict(parent_path.to_dict()), state, "root")


def test_evolve_ranks_candidates_at_equal_training_on_request(evolved):
    data, _, first, _ = evolved
    name = data.task_names[2]
    result = evolve(first.system, [name], data, candidate_start="equal", **TINY)
    assert result.scores["config"]["candidate_start"] == "equal"
    assert name in result.system.task_names
    assert inspect.signature(evolve).parameters["candidate_start"].default == "inherited"
    assert result.scores["config"]["adapters"] == "between"  # the default
    # No installed path has an adapter before its head.
    assert all(path.adapters[path.depth - 1] == 0
               for path in map(result.system.path, result.system.task_names))
    with pytest.raises(SearchError, match=r"`candidate_start` must be one of \['inherited', 'equal'\]\. "
                                          r"Received: candidate_start='fresh'"):
        evolve(first.system, [name], data, candidate_start="fresh", **TINY)


@pytest.mark.slow  # two evolutions of 6 candidates (tests/test_evolution_rules.py: the held hparams)
def test_final_candidate_hparams_train_every_candidate_at_the_final_rate_and_batch(
        evolved, monkeypatch):
    """`candidate_hparams="final"`: candidates train at the final rate and batch; they never move."""
    from keras_branch.search.evolution import loop

    data, _, first, _ = evolved
    name = data.task_names[2]
    calls = []
    real = loop.train_candidate

    def spy(system, task, path, owned, data, epochs, *args, schedule="constant"):
        calls.append((schedule, path.hparams["learning_rate"], path.hparams["batch_size"]))
        return real(system, task, path, owned, data, epochs, *args, schedule=schedule)

    monkeypatch.setattr(loop, "train_candidate", spy)
    # Every mutation drawn: under "own" a third of the children would move one of the two.
    settings = {**TINY, "candidates": 6, "mutation_prob": 1.0}
    result = evolve(first.system, [name], data, final_epochs=1, final_learning_rate=0.02,
                    final_batch_size=5, candidate_hparams="final", **settings)
    # 0.02 and 5 are on no mutation list: only the fixed values reach them.
    assert calls == [("constant", 0.02, 5)] * 6 + [("cosine", 0.02, 5)]
    scored = [r for r in result.scores["history"] if "final" not in r]
    assert [(r["path"]["hparams"]["learning_rate"], r["path"]["hparams"]["batch_size"])
            for r in scored] == [(0.02, 5)] * 6
    assert not any(m.startswith(("learning_rate(", "batch_size(")) for r in scored
                   for m in r["mutations"])
    assert result.scores["config"]["candidate_hparams"] == "final"
    # Under "own" (the default) candidates train at their paths' own rates, on
    # the mutation list; "own" is not written into the config, so older state
    # folders resume.
    calls.clear()
    own = evolve(first.system, [name], data, final_epochs=1, final_learning_rate=0.02,
                 **settings)
    assert "candidate_hparams" not in own.scores["config"]
    assert inspect.signature(evolve).parameters["candidate_hparams"].default == "own"
    assert all(lr in HPARAM_LISTS["learning_rate"] for _, lr, _ in calls[:-1])
    with pytest.raises(SearchError, match=r"`candidate_hparams` must be one of \['own', 'final'\]\. "
                                          r"Received: candidate_hparams='best'"):
        evolve(first.system, [name], data, candidate_hparams="best", **TINY)


# === Seeds and global state ===


def _without_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def _assert_same_system(a, b):
    assert a.spec == b.spec and a.scores == b.scores
    assert sorted(a.weights) == sorted(b.weights)
    for name, weights in a.weights.items():
        for w, v in zip(weights, b.weights[name]):
            np.testing.assert_array_equal(w, v)


@pytest.mark.slow  # about a minute on 2 cores: the default run stays under 15 min
def test_evolve_repeats_with_its_seed_and_leaves_global_random_state_alone(evolved):
    data, root, first, _ = evolved
    random.random(), np.random.random()  # wherever the caller's streams stand
    before = (random.getstate(), np.random.get_state())
    again = evolve(root, data.task_names[:2], data, scale=0.5, **TINY)
    after = (random.getstate(), np.random.get_state())
    assert after[0] == before[0], "Python's global random state changed"
    assert after[1][0] == before[1][0] and after[1][2:] == before[1][2:]
    np.testing.assert_array_equal(after[1][1], before[1][1])
    # The fixture ran the same search earlier in this process: same candidates,
    # same system, bit-identical outputs, and the same layer names (no session
    # is cleared, and no name clashes or drifts).
    assert _without_seconds(again.history) == _without_seconds(first.history)
    _assert_same_system(again.system, first.system)
    assert [layer.name for layer in again.model.layers] == [layer.name for layer in first.model.layers]
    x = data.split("test").x[:16]
    want, got = first.model.predict(x, verbose=0), again.model.predict(x, verbose=0)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    other = evolve(root, data.task_names[:2], data, scale=0.5, seed=1, **TINY)
    assert _without_seconds(other.history) != _without_seconds(first.history)


@pytest.mark.slow  # three evolutions at mutation_prob 1 (tests/test_evolution_rules.py: the rule)
def test_depth_moves_keep_the_head_input_size_unless_any(evolved):
    data = evolved[0]
    keras.utils.set_random_seed(0)
    # Stage 2's features are narrower than stage 3's: with "shape" a depth
    # move from 3 (down to 2, reflected up past the last stage) is dropped.
    bb = backbones.mlp(data.input_shape[0], widths=(16, 8, 16))
    root = fit_spec(TreeSpec.shared(data.task_names[:1], 3), bb, data, epochs=1, verbose=0,
                    log=None).model
    runs = {rule: evolve(root, data.task_names[:1], data, mutation_prob=1.0, depth_moves=rule,
                         **TINY) for rule in ("shape", "any")}
    depths = {rule: [e["path"]["depth"] for e in result.history if "candidate" in e]
              for rule, result in runs.items()}
    assert depths["shape"] == [3, 3, 3]
    # muNet's move: every child of the root (depth 3) steps down to 2.
    assert depths["any"][0] == 2 and all(d in (1, 2, 3) for d in depths["any"])
    assert [e for e in runs["shape"].history[0]["mutations"] if e.startswith("depth")] == []


def test_budget_bounds_the_system_and_draws_again_over_it(evolved):
    data, root, _, _ = evolved
    tasks = data.task_names[:3]
    bb = EvolvedSystem.from_root(root).backbone
    shared = shared_params(bb, [t for t in data.tasks if t.name in tasks])
    # Room for one stage-3 clone (32 * 32 + 32 = 1,056) per task beyond the shared model.
    lines = []
    result = evolve(root, tasks, data, scale=1.0, passes=1, candidates=4, candidate_epochs=1,
                    mutation_prob=0.5, budget=shared + 3300, log=lines.append)
    assert result.scores["config"]["budget"] == shared + 3300
    system = result.system
    # The budget counts what the system holds: the model plus the root's
    # blocks no task uses (kept so that later tasks can start from the root).
    paths = [system.path(t) for t in tasks]
    unused = sum(bb.stage_params(d) for d in range(3)
                 if not any(p.depth > d and p.route[d] == 0 for p in paths))
    assert shared <= system.params() == result.model.count_params() + unused <= shared + 3300
    for task in system.tasks:
        assert system.params_with(task, system.path(task.name)) == system.params()
    # The first visit may add its head (33 parameters) and a third of what
    # the budget leaves beyond the shared model (the three heads and the root).
    allowed = {m[1]: int(m[2].replace(",", "")) for m in
               (re.match(r"\[pass 1/1\] task (\S+): .*at most ([\d,]+) parameters added", line)
                for line in lines) if m}
    assert allowed[tasks[0]] == 33 + 3300 // 3 and sorted(allowed) == sorted(tasks)
    # A child over its visit's part is drawn again, never trained; a slot
    # whose every draw is over is recorded once, with the draws before it.
    redrawn = [(r["task"], d) for r in result.history for d in r.get("redrawn", [])]
    assert redrawn and all(d["added"] > allowed[task] for task, d in redrawn)
    # A trained slot keeps the draws refused before its child too.
    assert any(r.get("redrawn") and r["quality"] is not None for r in result.history)
    skipped = [r for r in result.history if "over_budget" in r]
    assert all(r["over_budget"]["added"] > r["over_budget"]["allowed"] == allowed[r["task"]]
               and r["score"] is None and len(r["redrawn"]) == DRAWS_PER_SLOT - 1
               for r in skipped)
    for name in tasks:  # four slots, and the root path where all four were over
        visit = [r for r in result.history if r["task"] == name and "final" not in r]
        over = sum("over_budget" in r for r in visit)
        assert [r["candidate"] for r in visit] == list(range(4 + (over == 4)))
        assert all((r["quality"] is None) == ("over_budget" in r) for r in visit)
    # A multiple of the shared model, as the affinity search's budgets.
    loose = evolve(root, tasks[:1], data, passes=1, candidates=1, candidate_epochs=1,
                   budget="3x", log=None)
    assert loose.scores["config"]["budget"] == 3 * shared_params(bb, data.tasks[:1])
    with pytest.raises(SearchError, match=r"`budget`=100 \(100 parameters\)"):
        evolve(root, tasks, data, budget=100, log=None)
    # Growing a system: the budget must hold what the system has and the new heads.
    grown = EvolvedSystem.load(evolved[3])
    held = grown.params() + 33  # one more head (planted tasks: 32 features + bias, 1 unit)
    assert held == grown.params_with(data.tasks[3], TaskPath.root(3))
    with pytest.raises(SearchError, match=rf"below what the system already holds with a head "
                                          rf"for each new task \({held:,}\)"):
        evolve(grown, [data.task_names[3]], data, budget=held - 1, log=None)
    # A task added later gets its part of the budget, as it does visited
    # first among all three: its head and a third of what the budget leaves
    # beyond the root and the three heads, not all that the two placed
    # tasks left.
    budget = grown.params() + 33 + 20000
    part = 33 + (budget - grown.root_params - 3 * 33) // 3
    assert part < 20033  # the placed tasks leave more than the part
    parts = {}
    for start, new in ((grown, [data.task_names[3]]), (root, [data.task_names[3]] + grown.task_names)):
        lines = []
        evolve(start, new, data, passes=1, candidates=1, candidate_epochs=1, budget=budget,
               log=lines.append)
        parts[len(new)] = [line for line in lines if data.task_names[3] in line][0]
    assert parts[1].endswith(f"1 candidates, at most {part:,} parameters added")
    assert parts[3].endswith(f"1 candidates, at most {part:,} parameters added")
    # Only the head fits and every candidate clones a stage: the task gets
    # the root path (the shared model), trained as one more candidate.
    lines = []
    tight = evolve(root, tasks[:1], data, passes=1, candidates=2, candidate_epochs=1,
                   mutation_prob=1.0, budget=shared_params(bb, data.tasks[:1]), log=lines.append)
    over = [r for r in tight.history if "over_budget" in r]
    assert [r["candidate"] for r in over] == [0, 1]
    assert [len(r["redrawn"]) for r in over] == [DRAWS_PER_SLOT - 1] * 2
    fallback = [r for r in tight.history if r.get("quality") is not None and "final" not in r]
    assert [(r["candidate"], r["mutations"], r["accepted"]) for r in fallback] == [(2, [], True)]
    assert tight.system.path(tasks[0]).route == [0, 0, 0]
    assert tight.model.count_params() == shared_params(bb, data.tasks[:1])
    assert any("every candidate over the 33 parameters allowed; training the root path" in line
               for line in lines)


# === Kill and resume (the CLI) ===


def _cli(*args):
    return [sys.executable, "-m", "keras_branch.cli", *map(str, args)]


def test_killed_evolution_resumes_and_keeps_scored_candidates(evolved, tmp_path):
    data, root, _, _ = evolved
    root_file = tmp_path / "root.keras"
    root.save(root_file)
    out, state = tmp_path / "system", tmp_path / "system.state"
    command = _cli("evolve", "--root", root_file, "--data", DATA, "--tasks",
                   ",".join(data.task_names[:2]), "--passes", 1, "--candidates", 4,
                   "--candidate-epochs", 1, "--scale", 0.8, "--out", out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    state_file = state / "state.json"
    deadline = time.time() + 240
    scored = []
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists():
            scored = json.loads(state_file.read_text())["history"]
            if len(scored) >= 5:  # mid-way through the second task's visit
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    scored = json.loads(state_file.read_text())["history"]
    assert 5 <= len(scored) < 8 and not out.exists()
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(scored)} candidate(s) already scored" in rerun.stdout
    trained = [line for line in rerun.stdout.splitlines() if "/4: parent" in line]
    assert len(trained) == 8 - len(scored)  # only the remaining candidates were trained
    history = json.loads((out / "evolution.json").read_text())
    assert len(history) == 8
    assert history[: len(scored)] == scored
    assert not state.exists()  # removed once the system folder is complete
    # The killed and resumed run made exactly the search an uninterrupted one makes.
    straight = evolve(root, data.task_names[:2], data, scale=0.8, passes=1, candidates=4,
                      candidate_epochs=1, log=None)
    assert _without_seconds(history) == _without_seconds(straight.history)
    _assert_same_system(EvolvedSystem.load(out), straight.system)


def test_cli_add_task_and_errors(evolved, tmp_path, capsys):
    data, _, _, system_dir = evolved
    out = tmp_path / "grown"
    assert main(["evolve", "--system", str(system_dir), "--add-task", data.task_names[3],
                 "--data", DATA, "--candidates", "2", "--candidate-epochs", "1",
                 "--candidate-hparams", "final", "--final-batch-size", "7",
                 "--out", str(out)]) == 0
    assert EvolvedSystem.load(out).task_names == data.task_names[:2] + [data.task_names[3]]
    # The flag reaches the search: both candidates trained at batch 7 (on no mutation list).
    history = json.loads((out / "evolution.json").read_text())
    assert [r["path"]["hparams"]["batch_size"] for r in history] == [7, 7]
    assert "parameters per task" in capsys.readouterr().out
    mine = tmp_path / "mine"  # a user's folder given as --state is refused, never removed
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for args, message in [
        (("--system", system_dir, "--data", DATA, "--out", tmp_path / "x"), "--add-task"),
        (("--system", system_dir, "--add-task", data.task_names[0], "--data", DATA,
          "--out", tmp_path / "x"), "already in the system"),
        (("--system", tmp_path, "--add-task", "t", "--data", DATA, "--out", tmp_path / "x"),
         "not an evolved system folder"),
        (("--root", tmp_path / "none.keras", "--data", DATA, "--out", tmp_path / "x"),
         "does not exist"),
        (("--system", system_dir, "--add-task", "t", "--data", DATA, "--out", out),
         "--out exists"),
        (("--system", system_dir, "--add-task", data.task_names[3], "--data", DATA,
          "--state", mine, "--out", tmp_path / "y"), "did not create"),
        (("--system", system_dir, "--add-task", data.task_names[3], "--data", DATA,
          "--passes", "0", "--out", tmp_path / "y"), "argument --passes: must be an int >= 1. Received: '0'"),
    ]:
        assert main(["evolve", *map(str, args)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("keras-branch evolve: error: ")
        assert message in err
    assert os.listdir(mine) == ["notes.txt"] and not (tmp_path / "y").exists()


def test_cli_bad_tasks_roots_and_scales_end_with_one_line(evolved, tmp_path, capsys):
    _, _, _, system_dir = evolved
    inputs = keras.Input((8,))
    plain = tmp_path / "plain.keras"
    keras.Model(inputs, keras.layers.Dense(4, name="d1")(inputs)).save(plain)
    for args, message in [
        (("--system", system_dir, "--add-task", "Klingon", "--data", DATA),
         "unknown: ['Klingon']"),
        (("--root", plain, "--stages", "d1,nope", "--data", DATA), "names layer 'nope'"),
        # The root's stages take 8 inputs; the data has 100.
        (("--root", plain, "--stages", "d1", "--data", DATA), "input shape"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--scale", "0"),
         "--scale: must be a number in (0, 1]. Received: '0'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--scale", "1.01"),
         "Received: '1.01'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--depth-moves", "all"),
         "argument --depth-moves: invalid choice: 'all'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--adapters", "last"),
         "argument --adapters: invalid choice: 'last'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--final-start", "parent"),
         "argument --final-start: invalid choice: 'parent'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA,
          "--candidate-hparams", "best"), "argument --candidate-hparams: invalid choice: 'best'"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--budget", "10"),
         "No tree fits `budget`=10 (10 parameters)"),
        (("--system", system_dir, "--add-task", "g1_t1", "--data", DATA, "--budget", "lots"),
         "`budget` must be a parameter count or a multiple like '2x'. Received: 'lots'"),
    ]:
        out = tmp_path / "out"
        assert main(["evolve", *map(str, args), "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("keras-branch evolve: error: "), err
        assert message in err, err
        assert not out.exists() and not (tmp_path / "out.state").exists()


def test_a_plain_keras_model_cut_into_stages_is_a_root():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="s1")(inputs)
    x = keras.layers.Dense(4, activation="relu", name="s2")(x)
    net = keras.Model(inputs, keras.layers.Dense(2, name="top")(x))
    system = EvolvedSystem.from_root(backbones.from_keras_model(net, ["s1", "s2"]))
    assert system.root_params == 6 * 8 + 8 + 8 * 4 + 4
    np.testing.assert_array_equal(system.weights["stage1_block0"][0], net.get_layer("s1").kernel)
    np.testing.assert_array_equal(system.weights["stage2_block0"][1], net.get_layer("s2").bias)


def test_pool_tasks_offsets_classes_and_drops_other_samples():
    from keras_branch.data import MultiTaskData, merge_tasks, pool_tasks

    tasks = [Task("a", "multiclass", classes=3), Task("b", "multiclass", classes=2),
             Task("c", "multiclass", classes=4)]
    x = np.arange(6, dtype="float32").reshape(6, 1)
    split = merge_tasks(tasks, {"a": (x[:2], [0, 2]), "b": (x[2:4], [1, 0]), "c": (x[4:], [3, 1])})
    pooled = pool_tasks(MultiTaskData(tasks, {"train": split}), ["a", "b"])
    assert pooled.tasks == [Task("pooled", "multiclass", classes=5)]
    np.testing.assert_array_equal(pooled.split("train").y["pooled"], [0, 2, 4, 3])
    np.testing.assert_array_equal(pooled.split("train").x[:, 0], [0, 1, 2, 3])


def test_a_second_pass_starts_from_the_tasks_own_path(evolved):
    data, root, _, _ = evolved
    result = evolve(root, data.task_names[:1], data, scale=0.9, passes=2, candidates=2,
                    candidate_epochs=1, log=None)
    history = result.history
    assert [r["pass"] for r in history] == [0, 0, 1, 1]
    assert {r["parent"] for r in history[2:]} <= {"root", f"task:{data.task_names[0]}",
                                                   "p1c0"}
    # Pass 2 starts from the installed path, scored as before (no other task
    # shares its blocks); the installed path is the best of it and the kept children.
    first_best = max(r["score"] for r in history[:2] if r["accepted"])
    kept = [r["score"] for r in history[2:] if r["accepted"]]
    assert result.system.scores[data.task_names[0]]["score"] == max([first_best, *kept])
