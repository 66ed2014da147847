"""keras_branch.zoo: named, reproducible model entries with measured cards.

Installed as `keras_branch.zoo` (see setup.cfg), never as a bare `zoo`.
Each entry is a folder `zoo/<name>/` with `entry.json` (data, backbone,
sharing, tasks, training recipe, how the sharing was found, the command that
measures it), `results.json` (measured: per-seed and per-task test metric,
parameters, FLOPs, TFLite sizes, LiteRT latency, the machine) and
`README.md`, the card generated from both.

Example (one training epoch instead of the recipe's 20):
>>> from keras_branch import zoo
>>> "planted-affinity" in zoo.list()
True
>>> model = zoo.get("planted-affinity")                  # fresh weights
>>> run = zoo.train("planted-affinity", seed=0, out="run", recipe={"epochs": 1}, log=None)
>>> model = zoo.get("planted-affinity", weights="run/model.keras")
>>> zoo.evaluate("planted-affinity", "run/model.keras")["metric"]
'mse'
"""

from keras_branch.zoo.api import entry, evaluate, format_list, get, list_entries, train
from keras_branch.zoo.cards import headline, render_card
from keras_branch.zoo.measure import count_flops, measure
from keras_branch.zoo.registry import Kind, ZooEntry, ZooError, register_kind

#: `zoo.list()`: every entry's name (named after the issue's API; shadows the builtin here only).
list = list_entries  # noqa: A001

__all__ = [
    "Kind",
    "ZooEntry",
    "ZooError",
    "count_flops",
    "entry",
    "evaluate",
    "format_list",
    "get",
    "headline",
    "list",
    "list_entries",
    "measure",
    "register_kind",
    "render_card",
    "train",
]
