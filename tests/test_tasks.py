import pytest

from keras_branch import Task, TaskError
from keras_branch.tasks import as_tasks, safe_key


def test_kinds_bring_heads_losses_metrics():
    mc = Task("Korean", "multiclass", classes=40)
    assert (mc.units, mc.activation, mc.primary_metric) == (40, "softmax", "accuracy")
    assert [m.name for m in mc.make_metrics()] == ["accuracy"]
    binary = Task("smiling", "binary")
    assert (binary.units, binary.activation, binary.classes) == (1, "sigmoid", 2)
    assert [m.name for m in binary.make_metrics()] == ["accuracy", "auc"]
    reg = Task("age", "regression")
    assert (reg.units, reg.activation) == (1, "linear")
    assert [m.name for m in reg.make_metrics()] == ["mse", "mae"]
    assert mc.make_loss().kind == "multiclass"


def test_free_text_names_get_safe_keys():
    task = Task("Japanese_(katakana)", "multiclass", classes=47)
    assert task.name == "Japanese_(katakana)"
    assert task.key == "Japanese__katakana_"
    assert safe_key("Latin") == "Latin"
    assert safe_key("a/b>c d") == "a_b_c_d"


def test_config_round_trip():
    for task in (Task("a", "multiclass", 3, loss_weight=0.5), Task("b", "binary"), Task("c", "regression")):
        assert Task.from_config(task.get_config()) == task


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": ""}, "Received: name=''"),
        ({"name": 3}, "Received: name=3"),
        ({"name": "a", "kind": "multi"}, "Received: kind='multi'"),
        ({"name": "a", "kind": "multiclass"}, "Received: classes=None"),
        ({"name": "a", "kind": "multiclass", "classes": 1}, "Received: classes=1"),
        ({"name": "a", "kind": "multiclass", "classes": True}, "Received: classes=True"),
        ({"name": "a", "kind": "binary", "classes": 3}, "Received: classes=3"),
        ({"name": "a", "kind": "regression", "classes": 2}, "takes no `classes`"),
        ({"name": "a", "kind": "regression", "loss_weight": -1}, "Received: loss_weight=-1"),
    ],
)
def test_bad_tasks(kwargs, fragment):
    with pytest.raises(TaskError) as err:
        Task(**kwargs)
    assert fragment in str(err.value)


def test_task_lists():
    with pytest.raises(TaskError, match="at least one task"):
        as_tasks([])
    with pytest.raises(TaskError, match="Duplicate task name 'a'"):
        as_tasks([Task("a", "binary"), Task("a", "binary")])
    with pytest.raises(TaskError, match="both map to the output key 'a_b'"):
        as_tasks([Task("a b", "binary"), Task("a_b", "binary")])
    with pytest.raises(TaskError, match=r"Unknown task field\(s\) \['colour'\]"):
        as_tasks([{"name": "a", "kind": "binary", "colour": "red"}])
    assert as_tasks([{"name": "a", "kind": "binary"}]) == [Task("a", "binary")]


def test_a_name_utf8_cannot_encode_is_refused_at_construction():
    with pytest.raises(TaskError) as err:
        Task("a\udc80", "binary")
    assert str(err.value) == ("`name` must be text UTF-8 can encode (no lone surrogates). "
                              "Received: name='a\\udc80'")
    with pytest.raises(TaskError, match="no lone surrogates"):
        Task.from_config({"name": "\ud800", "kind": "regression"})
    assert Task("Ελληνικά", "binary").name == "Ελληνικά"  # any text UTF-8 can encode is fine
