"""Zoo entries: one folder per name holding `entry.json`, `results.json` and a card.

An entry is a complete, reproducible definition of a multi-task model:

* `name`, `description`, `method` (how the sharing was found) and
  `reproduce` (the exact command that measures it, `keras-branch zoo measure ...`);
* `data`: the data set's name (`"planted"`, `"omniglot"`, `"celeba"`);
  `data_default`: the `--data` source used when none is given (only for data
  that is built in, like planted groups); `image_size` for image data;
* `input_shape`: one input sample's shape (the model builds without data);
* `backbone`: `{"name": ..., "args": {...}}`, a built-in backbone of
  `keras_branch.backbones.get`;
* `kind`: `"tree"` (a `TreeSpec` in `spec`), `"evolved"` (an evolved
  `TreeSpec` in `spec`, trained by pretraining a root and evolving it with
  `pretrain_and_evolve`) or `"soft-ordering"` (settings in `model_args`);
  further kinds register with `register_kind`;
* `tasks`: task configs (`Task.get_config()`);
* `recipe`: every training hyperparameter, passed as keyword arguments to the
  kind's fit function (`fit_spec` for trees); unknown keys are refused.

Entries live in `zoo/<name>/entry.json`, next to this module (installed with
the package as `keras_branch.zoo`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keras_branch import backbones
from keras_branch.build import build_model
from keras_branch.callbacks import EpochLogger
from keras_branch.errors import KerasBranchError
from keras_branch.results import TrainResult
from keras_branch.search.evolution import evolve, pretrain_and_evolve
from keras_branch.soft_ordering_model import build_soft_ordering_model, fit_soft_ordering
from keras_branch.spec import TreeSpec
from keras_branch.tasks import Task
from keras_branch.training import fit_spec, train

ZOO_DIR = os.path.dirname(os.path.abspath(__file__))
ENTRY_FILE = "entry.json"
RESULTS_FILE = "results.json"
CARD_FILE = "README.md"

REQUIRED_FIELDS = ("name", "description", "data", "input_shape", "backbone", "kind", "tasks",
                   "recipe", "method", "reproduce")
OPTIONAL_FIELDS = ("data_default", "image_size", "spec", "model_args", "notes")


class ZooError(KerasBranchError):
    """A zoo entry is unknown or malformed, or a recipe has keys its fit function lacks."""


# === Kinds: how an entry's model is built and trained ===


@dataclasses.dataclass(frozen=True)
class Kind:
    """How the models of one `kind` are built and trained.

    Attributes:
        name: the `kind` field's value.
        build: `build(entry, input_shape, tasks) -> keras.Model` (not compiled).
        fit: `fit(entry, data, seed, log, **recipe) -> TrainResult`; `log`
            takes progress lines (one per epoch), or is None for silence.
        fit_function: the library function whose keyword arguments a recipe
            may set (checked before training); one that forwards `**kwargs`
            to `keras_branch.training.train` also takes `train`'s.
        fixed: arguments of `fit_function` the zoo passes itself (never in a
            recipe).
        forwards_to: where `fit_function`'s `**kwargs` go, whose keyword
            arguments a recipe may set too (`keras_branch.training.train`).
    """

    name: str
    build: Callable[..., Any]
    fit: Callable[..., Any]
    fit_function: Callable[..., Any]
    fixed: tuple[str, ...]
    forwards_to: Callable[..., Any] = train

    def recipe_keys(self) -> list[str]:
        """Keyword arguments a recipe may set, as `fit_function` declares them."""
        params = dict(inspect.signature(self.fit_function).parameters)
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            params = {**inspect.signature(self.forwards_to).parameters, **params}
        return [n for n, p in params.items()
                if n not in self.fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Makes `kind.name` usable in entries' `kind` field (e.g. `"evolved"`).

    Args:
        kind: the `Kind` (build and fit functions).

    Returns:
        The same `Kind`.

    Example (not run as a doctest: it registers a kind for the whole process;
    the zoo's own kinds are registered this way):
    >>> register_kind(Kind("evolved", build_evolved, fit_evolved, fit_evolved_spec,
    ...                    fixed=("spec", "data", "seed")))  # doctest: +SKIP
    """
    KINDS[kind.name] = kind
    return kind


# What the zoo sets itself when it trains (never in a recipe).
_RUN_FIXED = ("model", "data", "seed", "verbose", "callbacks", "strategy", "checkpoint_dir",
              "log", "eval_splits")
_TREE_FIXED = ("spec", "backbone", *_RUN_FIXED)
_SOFT_FIXED = ("ordering", "depth", "width", *_RUN_FIXED)


def _build_tree(entry: ZooEntry, input_shape, tasks):
    return build_model(entry.make_spec(), entry.make_backbone(input_shape), tasks,
                       name=_model_name(entry.name))


def _epoch_lines(data, log: Callable[[str], None] | None) -> list:
    """One progress line per epoch through `log` (none when `log` is None)."""
    return [EpochLogger(data.tasks, log)] if log else []


def _fit_tree(entry: ZooEntry, data, seed: int, log=None, **recipe):
    return fit_spec(entry.make_spec(), entry.make_backbone(data.input_shape), data, seed=seed,
                    verbose=0, log=log, callbacks=_epoch_lines(data, log), **recipe)


def _soft_args(entry: ZooEntry) -> dict[str, Any]:
    args = dict(entry.model_args or {})
    unknown = sorted(set(args) - {"ordering", "depth", "width"})
    if unknown:
        raise ZooError(f"Entry {entry.name!r}: unknown `model_args` key(s) {unknown}; "
                       f"allowed: ['depth', 'ordering', 'width'].")
    return args


def _build_soft(entry: ZooEntry, input_shape, tasks):
    return build_soft_ordering_model(tasks, input_shape, seed=0, name=_model_name(entry.name),
                                     **_soft_args(entry))


def _fit_soft(entry: ZooEntry, data, seed: int, log=None, **recipe):
    return fit_soft_ordering(data, seed=seed, verbose=0, log=log,
                             callbacks=_epoch_lines(data, log), **_soft_args(entry), **recipe)


def _fit_evolved(entry: ZooEntry, data, seed: int, log=None, **recipe):
    """Pretrains the root and evolves it (the spec in the entry is seed 0's result)."""
    backbone = entry.make_backbone(data.input_shape)
    result = pretrain_and_evolve(data, backbone, seed=seed, log=log, **recipe)
    history = {"candidates": result.history, "root": result.root_metrics}
    return TrainResult(result.model, history, result.metrics)


_EVOLVED_FIXED = ("data", "backbone", "seed", "state_dir", "log", "root", "tasks", "root_task",
                  "out_dir", "overwrite")

register_kind(Kind("tree", _build_tree, _fit_tree, fit_spec, _TREE_FIXED))
# An evolved spec builds with the tree builder; training it means evolving it again.
register_kind(Kind("evolved", _build_tree, _fit_evolved, pretrain_and_evolve,
                   _EVOLVED_FIXED, forwards_to=evolve))
register_kind(Kind("soft-ordering", _build_soft, _fit_soft, fit_soft_ordering,
                   _SOFT_FIXED))


def _model_name(name: str) -> str:
    return "zoo_" + "".join(c if c.isalnum() or c in "_." else "_" for c in name)


# === Entries ===


@dataclasses.dataclass
class ZooEntry:
    """One zoo entry, as `entry.json` defines it (see the module docstring).

    Use `keras_branch.zoo.entry(name)` to load one; `build()` makes its
    model, `fit(data, seed)` trains it with the recipe.
    """

    name: str
    description: str
    data: str
    input_shape: list[int]
    backbone: dict[str, Any]
    kind: str
    tasks: list[dict[str, Any]]
    recipe: dict[str, Any]
    method: str
    reproduce: str
    data_default: str | None = None
    image_size: int | None = None
    spec: dict[str, Any] | None = None
    model_args: dict[str, Any] | None = None
    notes: str | None = None
    path: str | None = None

    # --- loading and checking ---

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | None = None) -> ZooEntry:
        """An entry from its JSON dict; `ZooError` naming a missing or unknown field."""
        where = f"zoo entry {path or data.get('name', '?')!r}"
        if not isinstance(data, Mapping):
            raise ZooError(f"{where} must be a JSON object. Received: {type(data).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing:
            raise ZooError(f"{where}: missing field(s) {missing}.")
        unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ZooError(f"{where}: unknown field(s) {unknown}; fields are "
                           f"{sorted(REQUIRED_FIELDS + OPTIONAL_FIELDS)}.")
        entry = cls(**copy.deepcopy(dict(data)), path=path)
        entry.validate()
        return entry

    def validate(self) -> None:
        """Checks the fields' types and that the recipe fits the kind."""
        if self.kind not in KINDS:
            raise ZooError(f"Entry {self.name!r}: unknown `kind` {self.kind!r}; "
                           f"kinds are {sorted(KINDS)}.")
        if self.kind in ("tree", "evolved") and not isinstance(self.spec, Mapping):
            raise ZooError(f"Entry {self.name!r}: kind {self.kind!r} needs a `spec` (a TreeSpec dict). "
                           f"Received: spec={self.spec!r}")
        if not isinstance(self.backbone, Mapping) or "name" not in self.backbone:
            raise ZooError(f"Entry {self.name!r}: `backbone` must be {{'name': ..., 'args': {{...}}}}. "
                           f"Received: backbone={self.backbone!r}")
        if not isinstance(self.recipe, Mapping):
            raise ZooError(f"Entry {self.name!r}: `recipe` must be a JSON object. "
                           f"Received: recipe={self.recipe!r}")
        self.check_recipe(self.recipe)

    def check_recipe(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """Refuses recipe keys the kind's fit function does not take.

        Args:
            recipe: hyperparameters (e.g. `{"epochs": 20, "batch_size": 64}`).

        Returns:
            The recipe as a dict.

        Raises:
            ZooError: naming the unknown keys and listing the allowed ones.
        """
        allowed = KINDS[self.kind].recipe_keys()
        unknown = sorted(k for k in recipe if k not in allowed)
        if unknown:
            raise ZooError(f"Entry {self.name!r}: unknown recipe key(s) {unknown}; "
                           f"allowed: {sorted(allowed)}.")
        return dict(recipe)

    def to_dict(self) -> dict[str, Any]:
        """The `entry.json` dict (fields left at None are omitted)."""
        result = {}
        for field in REQUIRED_FIELDS[:3] + ("data_default", "image_size") + REQUIRED_FIELDS[3:] + (
                "spec", "model_args", "notes"):
            value = getattr(self, field)
            if value is not None:
                result[field] = copy.deepcopy(value)
        return result

    # --- parts ---

    def make_tasks(self):
        """The entry's `Task` objects."""
        return [Task.from_config(t) for t in self.tasks]

    def make_spec(self):
        """The entry's `TreeSpec` (kind `tree` only)."""
        if self.spec is None:
            raise ZooError(f"Entry {self.name!r} of kind {self.kind!r} has no `spec`.")
        return TreeSpec.from_dict(self.spec)

    def resolve_input_shape(self, input_shape: Sequence[int] | None = None,
                            image_size: int | None = None) -> tuple[int, ...]:
        """The model's input shape: `input_shape`, else the entry's with `image_size` applied."""
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if len(shape) != len(self.input_shape):
                raise ZooError(f"Entry {self.name!r} takes inputs of rank {len(self.input_shape)} "
                               f"({tuple(self.input_shape)}). Received: input_shape={shape}")
            return shape
        shape = tuple(int(s) for s in self.input_shape)
        if image_size is not None:
            if len(shape) != 3:
                raise ZooError(f"Entry {self.name!r} has no images; `image_size` does not apply. "
                               f"Received: image_size={image_size!r}")
            shape = (int(image_size), int(image_size), shape[2])
        return shape

    def make_backbone(self, input_shape: Sequence[int] | None = None):
        """The entry's backbone for `input_shape` (default: the entry's)."""
        shape = self.resolve_input_shape(input_shape)
        return backbones.get(self.backbone["name"], shape, **dict(self.backbone.get("args") or {}))

    def build(self, input_shape: Sequence[int] | None = None):
        """The entry's model (fresh weights, not compiled)."""
        return KINDS[self.kind].build(self, self.resolve_input_shape(input_shape), self.make_tasks())

    def fit(self, data, seed: int = 0, recipe: Mapping[str, Any] | None = None,
            log: Callable[[str], None] | None = None):
        """Trains a fresh model on `data` with the recipe (updated by `recipe`).

        Args:
            data: a `MultiTaskData`.
            seed: initialisation and shuffling seed.
            recipe: overrides of recipe keys.
            log: progress lines (one per epoch; None for silence).

        Returns:
            `keras_branch.results.TrainResult`.
        """
        full = {**self.recipe, **self.check_recipe(recipe or {})}
        return KINDS[self.kind].fit(self, data, seed, log, **full)

    def count_params(self, input_shape: Sequence[int] | None = None) -> int:
        """Parameters of the entry's model, counted without building it (trees)."""
        if self.kind == "tree":
            return self.make_spec().count_params(self.make_backbone(input_shape), self.make_tasks())
        return int(self.build(input_shape).count_params())

    # --- files ---

    def results(self) -> dict[str, Any] | None:
        """The measured `results.json`, or None when the entry is not measured."""
        if self.path is None:
            return None
        path = os.path.join(self.path, RESULTS_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def card(self) -> str | None:
        """The committed card (`README.md`), or None."""
        if self.path is None:
            return None
        path = os.path.join(self.path, CARD_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return f.read()


def entry_dirs(root: str = ZOO_DIR) -> dict[str, str]:
    """Entry name -> folder, for every folder of `root` holding an `entry.json`."""
    result = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, ENTRY_FILE)):
            result[name] = folder
    return result


def names(root: str = ZOO_DIR) -> list[str]:
    """Every entry name, sorted."""
    return list(entry_dirs(root))


def load_entry(name: str, root: str = ZOO_DIR) -> ZooEntry:
    """The entry called `name`.

    Args:
        name: an entry name (see `names()`).
        root: the folder holding entry folders (this package by default).

    Returns:
        The `ZooEntry`.

    Raises:
        ZooError: for an unknown name (listing the known ones) or a malformed entry.
    """
    dirs = entry_dirs(root)
    if not isinstance(name, str) or name not in dirs:
        raise ZooError(f"Unknown zoo entry {name!r}; entries are {sorted(dirs)}.")
    path = os.path.join(dirs[name], ENTRY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ZooError(f"Zoo entry file {path!r} is not valid JSON: {err}") from None
    entry = ZooEntry.from_dict(data, path=dirs[name])
    if entry.name != name:
        raise ZooError(f"Zoo entry folder {name!r} holds an entry named {entry.name!r}; "
                       f"the `name` field must match its folder.")
    return entry
