"""The evolved system (a spec plus one weight per component) and a task's path through it.

`EvolvedSystem` is what evolution grows: an evolved `TreeSpec` (routes,
`depths`, `adapters`, `hparams`) over the tasks evolved so far, plus the
weights of every component, so it builds with the same builder as any tree.
`TaskPath` is one task's way through it (what a candidate is): a block id
per stage, a depth, adapter sizes and hyperparameters.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.build import BranchedModel, block_name
from keras_branch.errors import SearchError
from keras_branch.files import atomic_path, atomic_write_json
from keras_branch.layers.adapter import adapter_params
from keras_branch.search.evolution.weights import load_weights, save_weights, set_weights
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec
from keras_branch.tasks import Task

__all__ = ["DEFAULT_HPARAMS", "SYSTEM_FILES", "EvolvedSystem", "TaskPath", "owned_by",
           "root_params"]

#: A new path's hyperparameters (mutations move them along `HPARAM_LISTS`). The
#: learning rate is the common Omniglot recipe's peak: on a convnet4 root with
#: three stages frozen, 40 cosine epochs at 1e-3 ended 0.5 points behind 3e-3.
DEFAULT_HPARAMS: dict[str, Any] = {"learning_rate": 3e-3, "adapter_dim": 16, "batch_size": 32}
#: The files of a system folder (`EvolvedSystem.save`).
SYSTEM_FILES = ("model.keras", "spec.json", "system.json", "system.npz", "metrics.json",
                "evolution.json")


@dataclasses.dataclass
class TaskPath:
    """One task's way through the system (what a candidate is).

    Attributes:
        route: a block id per stage (0 is the root's block); during mutation
            a negative entry `-1 - b` marks a fresh clone of block `b`.
        depth: how many stages the task uses (its head reads stage `depth`).
        adapters: an adapter size per stage (0: no adapter).
        hparams: the task's hyperparameters (`learning_rate`, `adapter_dim`,
            `batch_size`).
        norms: 1 per stage where the task owns the batch norms of a block it
            shares (`evolve(norms="task")`); empty or zeros: none.

    Example:
    >>> TaskPath.root(3).route, TaskPath.root(3).depth
    ([0, 0, 0], 3)
    """

    route: list[int]
    depth: int
    adapters: list[int]
    hparams: dict[str, Any]
    norms: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.norms:
            self.norms = [0] * len(self.route)

    def to_dict(self) -> dict[str, Any]:
        """The path as a JSON-ready dict (`from_dict` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskPath:
        """A path from a dict written by `to_dict`."""
        # Paths written before task-owned norms existed have no "norms".
        return cls(list(data["route"]), int(data["depth"]), list(data["adapters"]),
                   dict(data["hparams"]), list(data.get("norms") or []))

    @classmethod
    def root(cls, num_stages: int) -> TaskPath:
        """The root's path: block 0 of every stage, no adapter, default hyperparameters."""
        return cls([0] * num_stages, num_stages, [0] * num_stages, dict(DEFAULT_HPARAMS))


@dataclasses.dataclass
class EvolvedSystem:
    """A multi-task system that evolution grows.

    Attributes:
        backbone: the stage templates (block weights live in `weights`).
        tasks: the tasks evolved so far, in output order.
        spec: an evolved `TreeSpec` over `tasks` (None before the first task).
        weights: layer name -> weights: `stem`, `stage{d}_block{b}`
            (block 0 of every stage is the frozen root), `adapter{d}_{key}`,
            `norm{d}_{i}_{key}` (a task's own batch norms), `head_{key}`.
        root_params: parameters of the root (stem and one block per stage),
            the unit of the score's size term.
        scores: task name -> the record of its installed path (quality,
            accounted parameters, score).

    Example (not run as a doctest: it needs a trained root and evolves for minutes):
    >>> system = EvolvedSystem.from_root(trained_model)  # doctest: +SKIP
    >>> system = evolve(system, ["Latin"], data).system  # doctest: +SKIP
    >>> system.save("system_dir")  # doctest: +SKIP

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """

    backbone: Backbone
    tasks: list[Task]
    spec: TreeSpec | None
    weights: dict[str, list[np.ndarray]]
    root_params: int
    scores: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_root(cls, root: Backbone | keras.Model, root_task: str | None = None) -> EvolvedSystem:
        """A system holding only the root: a backbone with weights or a BranchedModel.

        Args:
            root: a `Backbone` whose stages carry weights (e.g. from
                `backbones.from_keras_model` or `keras_application(...,
                weights=PATH)`), or a trained `BranchedModel`, whose
                `root_task` path (default its first task) is the root.
            root_task: which task's path of a BranchedModel root to use.

        Returns:
            A system with no task yet.

        Example (not run as a doctest: `net` is a Keras model with layers "s1" and "s2"):
        >>> EvolvedSystem.from_root(backbones.from_keras_model(net, ["s1", "s2"]))  # doctest: +SKIP
        """
        if isinstance(root, BranchedModel):
            return cls._from_branched(root, root_task)
        if not isinstance(root, Backbone):
            raise SearchError(
                f"`root` must be a keras_branch Backbone with weights or a BranchedModel. "
                f"Received: {type(root).__name__}"
            )
        if root.stage_weights is None or any(w is None for w in root.stage_weights):
            raise SearchError(
                f"The root backbone {root.name!r} carries no trained weights; evolution "
                f"starts from a trained root (cut one from a model with "
                f"backbones.from_keras_model, or pass a trained BranchedModel)."
            )
        weights: dict[str, list[np.ndarray]] = {}
        # The stages carry their weights; the seed only keeps the caller's
        # Python `random` untouched by the layers' construction.
        with seeded_layers(0):
            stem = root.make_stem()
            if stem is not None:
                weights["stem"] = [np.array(w) for w in stem.get_weights()]
            for d in range(root.num_stages):
                weights[block_name(d, 0)] = [np.array(w) for w in root.make_stage(d).get_weights()]
        template = Backbone.from_config(root.get_config())
        return cls(template, [], None, weights, root_params(template))

    @classmethod
    def _from_branched(cls, model: BranchedModel, root_task: str | None) -> EvolvedSystem:
        spec = model.spec
        name = root_task if root_task is not None else spec.tasks[0]
        if name not in spec.tasks:
            raise SearchError(
                f"`root_task` {name!r} is not a task of the root model; its tasks are {spec.tasks}."
            )
        if (spec.depth(name) != spec.num_stages or any(spec.adapter_dims(name))
                or any(spec.norm_flags(name))):
            raise SearchError(
                f"The root path of task {name!r} must use every stage without adapters or "
                f"norms of its own."
            )
        by_name = {layer.name: layer for layer in model.layers}
        weights: dict[str, list[np.ndarray]] = {}
        if "stem" in by_name:
            weights["stem"] = [np.array(w) for w in by_name["stem"].get_weights()]
        for d, b in enumerate(spec.route(name)):
            weights[block_name(d, 0)] = [np.array(w) for w in by_name[block_name(d, b)].get_weights()]
        backbone = Backbone.from_config(model.backbone.get_config())
        return cls(backbone, [], None, weights, root_params(backbone))

    # --- views ---

    @property
    def task_names(self) -> list[str]:
        """The names of the tasks evolved so far, in output order."""
        return [t.name for t in self.tasks]

    def path(self, task: str) -> TaskPath:
        """The installed path of `task` (a task of the system)."""
        assert self.spec is not None
        return TaskPath(
            route=self.spec.route(task), depth=self.spec.depth(task),
            adapters=self.spec.adapter_dims(task),
            hparams={**DEFAULT_HPARAMS, **self.spec.task_hparams(task)},
            norms=self.spec.norm_flags(task),
        )

    def build(self) -> BranchedModel:
        """The system as one Keras model, with its weights.

        Returns:
            A `BranchedModel` over every task of the system.

        Example (not run as a doctest: needs an evolved system):
        >>> model = system.build()  # doctest: +SKIP
        """
        if self.spec is None:
            raise SearchError("The system has no task yet; evolve one first.")
        # Every component's weights are set below; the seed only keeps the
        # caller's Python `random` untouched by the layers' construction.
        with seeded_layers(0):
            model = BranchedModel(self.spec, self.backbone, self.tasks, name="evolved_system")
        set_weights(model, self.weights)
        return model

    def install(self, task: Task, path: TaskPath, owned: Mapping[str, list[np.ndarray]],
                record: dict[str, Any]) -> None:
        """Adds or replaces `task`'s path; existing components are never modified.

        Args:
            task: the task.
            path: its path (new clones already carry their block ids).
            owned: the weights of the task's own components (clones,
                adapters, norms, head).
            record: what the path scored (quality, params, score).
        """
        for name in owned:
            if name in self.weights and not owned_by(name, task):
                raise SearchError(f"Refusing to overwrite system component {name!r}.")
        tasks = [t for t in self.tasks if t.name != task.name] + [task]
        routes = {t.name: self.spec.route(t.name) for t in self.tasks if t.name != task.name} \
            if self.spec is not None else {}
        depths = self.spec.depths if self.spec is not None else {}
        adapters = self.spec.adapters if self.spec is not None else {}
        hparams = self.spec.hparams if self.spec is not None else {}
        norms = self.spec.norms if self.spec is not None else {}
        routes[task.name] = list(path.route)
        depths[task.name] = path.depth
        adapters[task.name] = list(path.adapters)
        hparams[task.name] = dict(path.hparams)
        norms[task.name] = list(path.norms)
        self.tasks = tasks
        self.spec = TreeSpec([t.name for t in tasks], routes, depths, adapters, hparams, norms)
        for name in list(self.weights):
            if owned_by(name, task):  # the task's previous adapters, norms and head
                del self.weights[name]
        self.weights.update({k: [np.array(w) for w in v] for k, v in owned.items()})
        self.scores[task.name] = dict(record)
        self._drop_unused_blocks()

    def _drop_unused_blocks(self) -> None:
        used = {block_name(d, 0) for d in range(self.backbone.num_stages)}  # the root stays
        for d in range(self.backbone.num_stages):
            used.update(block_name(d, b) for b in self.spec.blocks(d))
        for name in list(self.weights):
            if name.startswith("stage") and name not in used:
                del self.weights[name]

    def next_block_id(self, stage: int, taken: set[int] = frozenset()) -> int:
        """A block id of `stage` that neither the system nor `taken` uses."""
        ids = {int(n.rsplit("block", 1)[1]) for n in self.weights if n.startswith(f"stage{stage + 1}_block")}
        return max(ids | set(taken) | {0}) + 1

    def block_users(self, stage: int, block: int, exclude: str | None = None) -> int:
        """How many tasks (other than `exclude`) use block `block` of `stage`."""
        if self.spec is None:
            return 0
        return sum(
            1 for t in self.spec.tasks
            if t != exclude and self.spec.depth(t) > stage and self.spec.route(t)[stage] == block
        )

    def accounted_params(self, task: Task, path: TaskPath) -> float:
        """Parameters charged to `task` on `path`: shared parts divided by their users.

        The root counts as one more user of its own blocks (the stem and
        block 0 of every stage): the system keeps them whoever uses them,
        so later tasks can start from the root. Without that, the first task
        visited pays the whole root alone, cloning it costs that task
        nothing, and the scale factor cannot hold the first paths back (on
        Omniglot-5 the first alphabet then cloned every stage).

        Args:
            task: the task (it does not count as a user of its own blocks twice).
            path: its path.

        Returns:
            The stem divided by the number of tasks plus one (the root), each
            used block divided by its users (the task included, and the root
            for a root block), plus the path's adapters, own norms and head.

        Example (not run as a doctest: needs an evolved system):
        >>> system.accounted_params(task, TaskPath.root(system.backbone.num_stages))  # doctest: +SKIP
        """
        bb = self.backbone
        others = [t for t in self.task_names if t != task.name]
        total = bb.stem_params() / (len(others) + 2)
        for d, b in enumerate(path.route[: path.depth]):
            root = 1 if b == 0 else 0
            total += bb.stage_params(d) / (self.block_users(d, b, exclude=task.name) + 1 + root)
        for d, dim in enumerate(path.adapters[: path.depth]):
            if dim:
                total += adapter_params(bb.stage_output_shape(d)[-1], dim)
        total += sum(bb.stage_norm_params(d) for d, flag in enumerate(path.norms[: path.depth]) if flag)
        total += self.head_params(task, path.depth)
        return float(total)

    def head_params(self, task: Task, depth: int | None = None) -> int:
        """Parameters of `task`'s head on the features of stage `depth` (default: the last)."""
        return (self.backbone.feature_size(depth) + 1) * task.units

    def params(self) -> int:
        """Parameters the system holds now (`params_with` changing no task)."""
        return self.params_with(None, None)

    def params_with(self, task: Task | None, path: TaskPath | None) -> int:
        """Parameters the system holds with `task` on `path` (None: without `task`).

        Every block some task uses, the root's blocks (the system keeps
        them whoever uses them), every adapter, own norm and head; a clone marked in
        `path` (negative route entry) counts as a new block. With every task
        on a path, this is `spec.count_params` plus the root blocks no task
        uses.

        Args:
            task: the task whose path is replaced (or added, or left out);
                None: every task as it is (`path` must be None too).
            path: its path, or None for the system without it.

        Returns:
            The parameter count.
        """
        bb = self.backbone
        others = [t for t in self.tasks if task is None or t.name != task.name]
        routes = {t.name: self.spec.route(t.name) for t in others} if self.spec else {}
        depths = {t.name: self.spec.depth(t.name) for t in others} if self.spec else {}
        adapters = {t.name: self.spec.adapter_dims(t.name) for t in others} if self.spec else {}
        norms = {t.name: self.spec.norm_flags(t.name) for t in others} if self.spec else {}
        if path is not None:
            others = others + [task]
            route = list(path.route)
            for d, b in enumerate(route):
                if b < 0:  # a fresh clone: a block no task uses yet
                    used = [r[d] for r in routes.values()] + [0]
                    route[d] = max(used) + 1
            routes[task.name], depths[task.name] = route, path.depth
            adapters[task.name] = list(path.adapters)
            norms[task.name] = list(path.norms)
        if not others:
            return self.root_params
        spec = TreeSpec([t.name for t in others], routes, depths, adapters, norms=norms)
        unused_root = sum(bb.stage_params(d) for d in range(bb.num_stages)
                          if 0 not in spec.blocks(d))
        return spec.count_params(bb, others) + unused_root

    # --- files ---

    def save(self, out_dir: str | os.PathLike, metrics: Mapping | None = None,
             history: Sequence | None = None, config: Mapping | None = None,
             overwrite: bool = False) -> str:
        """Writes the system folder atomically.

        Args:
            out_dir: the folder (`SYSTEM_FILES`): `model.keras` (the system
                as one model), `spec.json`, `system.npz` (every component's
                weights, the root's included, so the system can grow later),
                `system.json`, `metrics.json`, `evolution.json`.
            metrics, history, config: what `evolve` measured, its candidate
                log and its arguments.
            overwrite: replace `out_dir` if it exists.

        Returns:
            `out_dir` as a string.

        Example (not run as a doctest: needs an evolved system):
        >>> system.save("system_dir")  # doctest: +SKIP
        """
        model = self.build()
        with atomic_path(out_dir, overwrite=overwrite) as tmp:
            os.makedirs(tmp)
            model.save(os.path.join(tmp, "model.keras"))
            self.spec.save(os.path.join(tmp, "spec.json"))
            save_weights(os.path.join(tmp, "system.npz"), self.weights)
            atomic_write_json(os.path.join(tmp, "system.json"), self.describe(config))
            atomic_write_json(os.path.join(tmp, "metrics.json"), dict(metrics or {}))
            atomic_write_json(os.path.join(tmp, "evolution.json"), list(history or []))
        return os.fspath(out_dir)

    def describe(self, config: Mapping | None = None) -> dict[str, Any]:
        """The system without its weights, as a JSON-ready dict (`system.json`)."""
        return {
            "backbone": self.backbone.get_config(),
            "tasks": [t.get_config() for t in self.tasks],
            "spec": None if self.spec is None else self.spec.to_dict(),
            "root_params": self.root_params,
            "scores": self.scores,
            "params_per_task": {
                t.name: self.accounted_params(t, self.path(t.name)) for t in self.tasks
            } if self.spec is not None else {},
            "config": dict(config or {}),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EvolvedSystem:
        """Reads a system folder written by `save` (or `evolve(out_dir=...)`).

        Args:
            directory: the system folder.

        Returns:
            The system, ready to grow (`evolve(system, [new task], data)`).

        Example (not run as a doctest: needs a folder `EvolvedSystem.save` wrote):
        >>> system = EvolvedSystem.load("system_dir")  # doctest: +SKIP
        """
        directory = os.fspath(directory)
        meta_path = os.path.join(directory, "system.json")
        if not os.path.isfile(meta_path):
            raise SearchError(
                f"--system {directory!r} is not an evolved system folder (no system.json)."
            )
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return cls.from_meta(meta, load_weights(os.path.join(directory, "system.npz")))

    @classmethod
    def from_meta(cls, meta: Mapping, weights: dict[str, list[np.ndarray]]) -> EvolvedSystem:
        """A system from `describe()`'s dict and its weights."""
        tasks = [Task.from_config(c) for c in meta["tasks"]]
        spec = TreeSpec.from_dict(meta["spec"]) if meta["spec"] is not None else None
        return cls(Backbone.from_config(meta["backbone"]), tasks, spec, weights,
                   int(meta["root_params"]), dict(meta.get("scores", {})))


def root_params(backbone: Backbone) -> int:
    """Parameters of the root: the stem and one block per stage."""
    return backbone.stem_params() + sum(backbone.stage_params(d) for d in range(backbone.num_stages))


def owned_by(layer: str, task: Task) -> bool:
    """Whether `layer` is one of `task`'s own adapters, norms or its head."""
    return layer == f"head_{task.key}" or (
        layer.startswith("adapter") and layer.split("_", 1)[1] == task.key
    ) or (layer.startswith("norm") and layer.split("_", 2)[2:] == [task.key])
