import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_branch import SpecError, Task, TreeSpec, backbones

EXAMPLE = {
    "tasks": ["a", "b", "c", "d"],
    "routes": {"a": [0, 0, 0], "b": [0, 0, 1], "c": [0, 1, 2], "d": [0, 1, 3]},
}


def test_canonical_json_round_trip():
    spec = TreeSpec.from_dict(EXAMPLE)
    assert json.loads(spec.to_json()) == EXAMPLE
    assert TreeSpec.from_json(spec.to_json(indent=2)).to_dict() == EXAMPLE
    assert spec.num_stages == 3 and spec.num_tasks == 4
    assert spec.blocks_per_stage() == [1, 2, 4]


def test_from_partitions_matches_routes():
    spec = TreeSpec.from_partitions(
        [[["a", "b", "c", "d"]], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c"], ["d"]]]
    )
    assert spec.routes == EXAMPLE["routes"]
    assert spec.partition(1) == [["a", "b"], ["c", "d"]]
    assert spec.partitions()[2] == [["a"], ["b"], ["c"], ["d"]]


def test_is_tree():
    assert TreeSpec.from_dict(EXAMPLE).is_tree
    # c and d share block 0 at stage 2 but came from different stage-1 blocks.
    general = TreeSpec(["a", "b", "c"], {"a": [0, 0], "b": [0, 1], "c": [1, 1]})
    assert not general.is_tree
    assert "not a tree" in str(general)


def test_equality_ignores_block_labels_and_task_order():
    a = TreeSpec.from_dict(EXAMPLE)
    relabelled = TreeSpec(
        ["d", "c", "b", "a"], {"a": [5, 9, 0], "b": [5, 9, 7], "c": [5, 2, 3], "d": [5, 2, 1]}
    )
    assert a == relabelled and hash(a) == hash(relabelled)
    other = TreeSpec(["a", "b", "c", "d"], {"a": [0, 0, 0], "b": [0, 1, 1], "c": [0, 0, 2], "d": [0, 1, 3]})
    assert a != other
    assert a.canonical().routes == a.routes


def test_str_is_readable():
    text = str(TreeSpec.from_dict(EXAMPLE))
    assert text.splitlines() == [
        "TreeSpec: 4 tasks, 3 stages, tree",
        "  stage 1: {a, b, c, d}",
        "  stage 2: {a, b}  {c, d}",
        "  stage 3: {a}  {b}  {c}  {d}",
    ]


def test_shared_and_independent():
    shared = TreeSpec.shared(["x", "y"], 2)
    assert shared.routes == {"x": [0, 0], "y": [0, 0]}
    assert TreeSpec.independent(["x", "y"], 2).blocks_per_stage() == [2, 2]


def test_param_accounting_formula():
    bb = backbones.mlp(10, widths=(8, 6, 4))
    tasks = [Task(n, "regression") for n in "abcd"]
    spec = TreeSpec.from_dict(EXAMPLE)
    parts = spec.param_breakdown(bb, tasks)
    assert parts == {
        "stem": 0,
        "stage_1": 1 * (10 * 8 + 8),
        "stage_2": 2 * (8 * 6 + 6),
        "stage_3": 4 * (6 * 4 + 4),
        "heads": 4 * (4 + 1),
    }
    assert spec.count_params(bb, tasks) == sum(parts.values())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"tasks": ["a"]}', "missing the field `routes`"),
        ('{"tasks": ["a"], "routes": {"a": [0]}, "extra": 1}', "Unknown field(s) ['extra']"),
        ('{"tasks": [], "routes": {}}', "at least one task"),
        ('{"tasks": ["a", "a"], "routes": {"a": [0]}}', "Duplicate task name in `tasks`: 'a'"),
        ('{"tasks": ["a"], "routes": {"a": [0], "b": [0]}}', "task(s) ['b'] that are not in `tasks`"),
        ('{"tasks": ["a", "b"], "routes": {"a": [0]}}', "no route for task(s) ['b']"),
        ('{"tasks": ["a", "b"], "routes": {"a": [0, 0], "b": [0]}}', "`routes['b']` has 1 stage(s)"),
        ('{"tasks": ["a"], "routes": {"a": [0, -1]}}', "`routes['a'][1]` must be a non-negative integer block id. Received: -1"),
        ('{"tasks": ["a"], "routes": {"a": [0, 1.5]}}', "Received: 1.5"),
        ('{"tasks": ["a"], "routes": {"a": [0, 2.0]}}', "Received: 2.0"),
        ('{"tasks": ["a"], "routes": {"a": [true]}}', "Received: True"),
        ('{"tasks": ["a"], "routes": {"a": ["0"]}}', "Received: '0'"),
        ('{"tasks": ["a"], "routes": {"a": []}}', "`routes['a']` is empty"),
        ('{"tasks": [""], "routes": {"": [0]}}', "non-empty string"),
        ('{"tasks": "a", "routes": {"a": [0]}}', "must be a list of task names"),
    ],
)
def test_bad_specs_name_field_and_value(text, fragment):
    with pytest.raises(SpecError) as err:
        TreeSpec.from_json(text)
    assert fragment in str(err.value)


def test_bad_partitions():
    with pytest.raises(SpecError, match="puts task 'a' in more than one group"):
        TreeSpec.from_partitions([[["a", "b"], ["a"]]])
    with pytest.raises(SpecError, match=r"leaves out task\(s\) \['b'\]"):
        TreeSpec.from_partitions([[["a", "b"]], [["a"]]])
    with pytest.raises(SpecError, match="unknown task 'z'"):
        TreeSpec.from_partitions([[["a", "b"]], [["a"], ["z"]]])


def test_load_reports_path(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        TreeSpec.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": ["a"], "routes": {"a": [-2]}}')
    with pytest.raises(SpecError, match=r"bad.json: .*Received: -2"):
        TreeSpec.load(bad)


def test_save_is_atomic_and_round_trips(tmp_path):
    spec = TreeSpec.from_dict(EXAMPLE)
    spec.save(tmp_path / "spec.json")
    assert TreeSpec.load(tmp_path / "spec.json").to_dict() == EXAMPLE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_incompatible_with_backbone_or_tasks():
    spec = TreeSpec.from_dict(EXAMPLE)
    tasks = [Task(n, "regression") for n in "abcd"]
    with pytest.raises(SpecError, match="Routes have 3 stage"):
        spec.count_params(backbones.mlp(4, widths=(4, 4)), tasks)
    with pytest.raises(SpecError, match=r"task\(s\) \['d'\] that the task list lacks"):
        spec.count_params(backbones.mlp(4), tasks[:3])


# === Property-based: the loader accepts or raises SpecError, nothing else ===

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["a", "b", "c", "", "Japanese_(katakana)"])
near_specs = st.fixed_dictionaries(
    {
        "tasks": st.lists(names, max_size=4) | json_values,
        "routes": st.dictionaries(
            names, st.lists(st.integers(-1, 3) | json_values, max_size=4) | json_values, max_size=4
        )
        | json_values,
    }
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_specs, st.text(max_size=20)))
def test_loader_accepts_or_raises_spec_error(value):
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        spec = TreeSpec.from_json(text)
    except SpecError:
        return
    # Whatever is accepted is a coherent spec that survives its own JSON.
    assert TreeSpec.from_json(spec.to_json()).to_dict() == spec.to_dict()
    assert all(len(r) == spec.num_stages for r in spec.routes.values())


@pytest.mark.parametrize("width", [10**18, 2**16 + 1, -1, 1.5, True])
def test_adapter_widths_are_bounded(width):
    with pytest.raises(SpecError) as err:
        TreeSpec(["e"], {"e": [0, 0]}, adapters={"e": [0, width]})
    assert str(err.value) == (f"`adapters['e'][1]` must be an int from 0 to 65536. "
                              f"Received: adapters['e'][1]={width!r}")
    assert TreeSpec(["e"], {"e": [0, 0]}, adapters={"e": [0, 2**16]}).adapter_dims("e") == [0, 2**16]


def test_adapter_layer_width_is_bounded():
    from keras_branch.layers import Adapter

    with pytest.raises(ValueError, match=r"`dim` must be an int from 1 to 65536. Received: dim=10"):
        Adapter(10**18)


@pytest.mark.parametrize("text", [
    '{"tasks": ["a"], "routes": {"a": [0]}, "hparams": {"a": {"learning_rate": NaN}}}',
    '{"tasks": ["a"], "routes": {"a": [0]}, "hparams": {"a": {"learning_rate": -Infinity}}}',
])
def test_hparams_must_be_finite(text):
    # Python's json reads the non-standard NaN and Infinity tokens; a spec refuses them.
    with pytest.raises(SpecError, match=r"`hparams\['a'\]\['learning_rate'\]` must be a finite "
                                        r"number \(JSON has no NaN or infinity\)"):
        TreeSpec.from_json(text)


def test_task_names_utf8_cannot_encode_are_refused():
    with pytest.raises(SpecError, match="no lone surrogates"):
        TreeSpec.from_json('{"tasks": ["a\\udc80"], "routes": {"a\\udc80": [0]}}')
