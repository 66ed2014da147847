"""muNet evolution: grow a trained root into a multi-task system, task by task.

Every task gets a *path* through the system: per stage a block id (shared
and frozen, or a task-owned trainable clone), residual adapters, a depth, its
own head and its own hyperparameters. The system is an evolved `TreeSpec`
(routes + `depths`, `adapters`, `hparams`) plus one weight per component, so
it builds with the same builder as any tree.

Per task visit (round robin over the tasks, `passes` times):

1. The population is the root path, every other task's path and the task's
   own current path (on a later pass).
2. A parent is drawn: sorted by score, each accepted with probability
   `0.5 ** children`; when none is, a random one.
3. The child applies each mutation with probability `mutation_prob`: clone
   a block (a trainable copy of a frozen one), insert a zero-initialised
   adapter, change the depth by one, move one hyperparameter one step
   along its list.
4. The child trains its own components (clones, adapters, head) for
   `candidate_epochs` on the task's data; frozen blocks never change.
   It is scored `quality * scale ** (accounted_params / root_params)`
   and joins the population when it beats its parent.
5. At the end of the visit the best path is installed. Components already
   in the system are never modified, so old tasks never change (their
   outputs stay bit-identical).

The search writes its whole state after every candidate (`state_dir`); a
rerun with the same arguments resumes where it stopped, keeping every scored
candidate.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.build import BranchedModel, adapter_name, block_name
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.files import atomic_path, atomic_write_json, claim_folder
from keras_branch.layers.adapter import adapter_params
from keras_branch.spec import TreeSpec
from keras_branch.tasks import REGRESSION, Task

#: Per-task hyperparameters and the lists a mutation moves them along.
HPARAM_LISTS: dict[str, tuple] = {
    "learning_rate": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adapter_dim": (4, 8, 16, 32, 64),
    "batch_size": (16, 32, 64),
}
DEFAULT_HPARAMS: dict[str, Any] = {"learning_rate": 1e-3, "adapter_dim": 16, "batch_size": 32}
MUTATIONS = ("clone", "adapter", "depth", "hparam")
STATE_FILE = "state.json"
SYSTEM_FILES = ("model.keras", "spec.json", "system.json", "system.npz", "metrics.json",
                "evolution.json")


# === The system: spec + weights per component ===


@dataclasses.dataclass
class EvolvedSystem:
    """A multi-task system that evolution grows.

    Attributes:
        backbone: the stage templates (block weights live in `weights`).
        tasks: the tasks evolved so far, in output order.
        spec: an evolved `TreeSpec` over `tasks` (None before the first task).
        weights: layer name -> weights: `stem`, `stage{d}_block{b}`
            (block 0 of every stage is the frozen root), `adapter{d}_{key}`,
            `head_{key}`.
        root_params: parameters of the root (stem and one block per stage),
            the unit of the score's size term.
        scores: task name -> the record of its installed path (quality,
            accounted parameters, score).
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
        stem = root.make_stem()
        if stem is not None:
            weights["stem"] = [np.array(w) for w in stem.get_weights()]
        for d in range(root.num_stages):
            weights[block_name(d, 0)] = [np.array(w) for w in root.make_stage(d).get_weights()]
        template = Backbone.from_config(root.get_config())
        return cls(template, [], None, weights, _root_params(template))

    @classmethod
    def _from_branched(cls, model: BranchedModel, root_task: str | None) -> EvolvedSystem:
        spec = model.spec
        name = root_task if root_task is not None else spec.tasks[0]
        if name not in spec.tasks:
            raise SearchError(
                f"`root_task` {name!r} is not a task of the root model; its tasks are {spec.tasks}."
            )
        if spec.depth(name) != spec.num_stages or any(spec.adapter_dims(name)):
            raise SearchError(
                f"The root path of task {name!r} must use every stage without adapters."
            )
        by_name = {layer.name: layer for layer in model.layers}
        weights: dict[str, list[np.ndarray]] = {}
        if "stem" in by_name:
            weights["stem"] = [np.array(w) for w in by_name["stem"].get_weights()]
        for d, b in enumerate(spec.route(name)):
            weights[block_name(d, 0)] = [np.array(w) for w in by_name[block_name(d, b)].get_weights()]
        backbone = Backbone.from_config(model.backbone.get_config())
        return cls(backbone, [], None, weights, _root_params(backbone))

    # --- views ---

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def path(self, task: str) -> Path:
        assert self.spec is not None
        return Path(
            route=self.spec.route(task), depth=self.spec.depth(task),
            adapters=self.spec.adapter_dims(task),
            hparams={**DEFAULT_HPARAMS, **self.spec.task_hparams(task)},
        )

    def build(self) -> BranchedModel:
        """The system as one Keras model, with its weights."""
        if self.spec is None:
            raise SearchError("The system has no task yet; evolve one first.")
        model = BranchedModel(self.spec, self.backbone, self.tasks, name="evolved_system")
        _set_weights(model, self.weights)
        return model

    def install(self, task: Task, path: Path, owned: Mapping[str, list[np.ndarray]],
                record: dict[str, Any]) -> None:
        """Adds or replaces `task`'s path; existing components are never modified."""
        for name in owned:
            if name in self.weights and not _owned_by(name, task):
                raise SearchError(f"Refusing to overwrite system component {name!r}.")
        tasks = [t for t in self.tasks if t.name != task.name] + [task]
        routes = {t.name: self.spec.route(t.name) for t in self.tasks if t.name != task.name} \
            if self.spec is not None else {}
        depths = self.spec.depths if self.spec is not None else {}
        adapters = self.spec.adapters if self.spec is not None else {}
        hparams = self.spec.hparams if self.spec is not None else {}
        routes[task.name] = list(path.route)
        depths[task.name] = path.depth
        adapters[task.name] = list(path.adapters)
        hparams[task.name] = dict(path.hparams)
        self.tasks = tasks
        self.spec = TreeSpec([t.name for t in tasks], routes, depths, adapters, hparams)
        for name in list(self.weights):
            if _owned_by(name, task):  # the task's previous adapters and head
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
        ids = {int(n.rsplit("block", 1)[1]) for n in self.weights if n.startswith(f"stage{stage + 1}_block")}
        return max(ids | set(taken) | {0}) + 1

    def block_users(self, stage: int, block: int, exclude: str | None = None) -> int:
        if self.spec is None:
            return 0
        return sum(
            1 for t in self.spec.tasks
            if t != exclude and self.spec.depth(t) > stage and self.spec.route(t)[stage] == block
        )

    def accounted_params(self, task: Task, path: Path) -> float:
        """Parameters charged to `task` on `path`: shared parts divided by their users."""
        bb = self.backbone
        others = [t for t in self.task_names if t != task.name]
        total = bb.stem_params() / (len(others) + 1)
        for d, b in enumerate(path.route[: path.depth]):
            total += bb.stage_params(d) / (self.block_users(d, b, exclude=task.name) + 1)
        for d, dim in enumerate(path.adapters[: path.depth]):
            if dim:
                total += adapter_params(bb.stage_output_shape(d)[-1], dim)
        total += (bb.feature_size(path.depth) + 1) * task.units
        return float(total)

    # --- files ---

    def save(self, out_dir: str | os.PathLike, metrics: Mapping | None = None,
             history: Sequence | None = None, config: Mapping | None = None,
             overwrite: bool = False) -> str:
        """Writes the system folder atomically.

        `model.keras` (the system as one model), `spec.json`, `system.npz`
        (every component's weights, the root's included, so the system can
        grow later), `system.json`, `metrics.json`, `evolution.json`.
        """
        model = self.build()
        with atomic_path(out_dir, overwrite=overwrite) as tmp:
            os.makedirs(tmp)
            model.save(os.path.join(tmp, "model.keras"))
            self.spec.save(os.path.join(tmp, "spec.json"))
            _save_npz(os.path.join(tmp, "system.npz"), self.weights)
            atomic_write_json(os.path.join(tmp, "system.json"), self.describe(config))
            atomic_write_json(os.path.join(tmp, "metrics.json"), dict(metrics or {}))
            atomic_write_json(os.path.join(tmp, "evolution.json"), list(history or []))
        return os.fspath(out_dir)

    def describe(self, config: Mapping | None = None) -> dict[str, Any]:
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
        """Reads a system folder written by `save` (or `evolve(out_dir=...)`)."""
        directory = os.fspath(directory)
        meta_path = os.path.join(directory, "system.json")
        if not os.path.isfile(meta_path):
            raise SearchError(
                f"--system {directory!r} is not an evolved system folder (no system.json)."
            )
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return cls._from_meta(meta, _load_npz(os.path.join(directory, "system.npz")))

    @classmethod
    def _from_meta(cls, meta: Mapping, weights: dict[str, list[np.ndarray]]) -> EvolvedSystem:
        tasks = [Task.from_config(c) for c in meta["tasks"]]
        spec = TreeSpec.from_dict(meta["spec"]) if meta["spec"] is not None else None
        return cls(Backbone.from_config(meta["backbone"]), tasks, spec, weights,
                   int(meta["root_params"]), dict(meta.get("scores", {})))


@dataclasses.dataclass
class Path:
    """One task's way through the system (what a candidate is)."""

    route: list[int]
    depth: int
    adapters: list[int]
    hparams: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Path:
        return cls(list(data["route"]), int(data["depth"]), list(data["adapters"]),
                   dict(data["hparams"]))

    @classmethod
    def root(cls, num_stages: int) -> Path:
        return cls([0] * num_stages, num_stages, [0] * num_stages, dict(DEFAULT_HPARAMS))


def _root_params(backbone: Backbone) -> int:
    return backbone.stem_params() + sum(backbone.stage_params(d) for d in range(backbone.num_stages))


def _owned_by(layer: str, task: Task) -> bool:
    return layer == f"head_{task.key}" or (
        layer.startswith("adapter") and layer.split("_", 1)[1] == task.key
    )


def _set_weights(model: keras.Model, weights: Mapping[str, list[np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])


def _save_npz(path: str, weights: Mapping[str, list[np.ndarray]]) -> None:
    flat = {f"{name}/{i}": w for name, ws in weights.items() for i, w in enumerate(ws)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)


def _load_npz(path: str) -> dict[str, list[np.ndarray]]:
    if not os.path.isfile(path):
        raise SearchError(f"Missing weights file {path!r}.")
    result: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, _, index = key.rpartition("/")
            result.setdefault(name, {})[int(index)] = data[key]
    return {name: [ws[i] for i in sorted(ws)] for name, ws in result.items()}


# === Candidates ===


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def mutate(path: Path, num_stages: int, rng: np.random.Generator, prob: float) -> tuple[Path, list[str]]:
    """A child path: each mutation applied with probability `prob`.

    Returns the child and a description of the mutations (empty: the child
    continues training its parent's components).

    Example:
    >>> child, done = mutate(Path.root(4), 4, np.random.default_rng(0), prob=1.0)
    """
    child = copy.deepcopy(path)
    done: list[str] = []
    for d in range(child.depth):
        if rng.random() < prob:
            done.append(f"clone(stage {d + 1})")
            child.route[d] = -1 - child.route[d] if child.route[d] >= 0 else child.route[d]
    for d in range(child.depth):
        if rng.random() < prob and not child.adapters[d]:
            child.adapters[d] = int(child.hparams["adapter_dim"])
            done.append(f"adapter(stage {d + 1}, {child.adapters[d]})")
    if rng.random() < prob:
        step = int(rng.choice([-1, 1]))
        if not 1 <= child.depth + step <= num_stages:
            step = -step
        if 1 <= child.depth + step <= num_stages:
            old = child.depth
            child.depth += step
            for d in range(child.depth, num_stages):
                child.route[d], child.adapters[d] = 0, 0  # past the depth: back to the root
            done.append(f"depth({old}->{child.depth})")
    if rng.random() < prob:
        name = str(rng.choice(sorted(HPARAM_LISTS)))
        values = HPARAM_LISTS[name]
        i = values.index(child.hparams[name]) if child.hparams[name] in values else 0
        j = i + int(rng.choice([-1, 1]))
        j = j if 0 <= j < len(values) else i - (j - i)
        child.hparams[name] = values[j]
        done.append(f"{name}({values[i]}->{values[j]})")
    return child, done


def _quality(task: Task, metrics: Mapping[str, float]) -> float:
    if task.kind == REGRESSION:
        return 1.0 / (1.0 + float(metrics["mse"]))
    return float(metrics["accuracy"])


def _select_parent(population: list[dict], rng: np.random.Generator) -> dict:
    # Best score first; entries not scored on this task yet last, in random order.
    shuffled = [population[i] for i in rng.permutation(len(population))]
    ranked = sorted(shuffled, key=lambda e: -math.inf if e["score"] is None else e["score"],
                    reverse=True)
    for entry in ranked:
        if rng.random() < 0.5 ** entry["children"]:
            return entry
    return ranked[int(rng.integers(len(ranked)))]


# === The search ===


@dataclasses.dataclass
class EvolveResult:
    """What `evolve` returns: the system, its test metrics and every candidate."""

    system: EvolvedSystem
    metrics: dict[str, dict[str, dict[str, float]]]
    history: list[dict[str, Any]]
    model: keras.Model
    root_metrics: dict[str, Any] | None = None


def evolve(
    root: Backbone | keras.Model | EvolvedSystem,
    tasks: Sequence[str] | None,
    data: MultiTaskData,
    scale: float = 0.9,
    passes: int = 2,
    candidates: int = 16,
    candidate_epochs: int = 3,
    mutation_prob: float = 0.2,
    seed: int = 0,
    augment: Mapping[str, float] | None = None,
    root_task: str | None = None,
    state_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> EvolveResult:
    """Evolves a path per task from a trained root (muNet).

    Args:
        root: a `Backbone` with trained weights, a trained `BranchedModel`
            (its `root_task` path is the root), or an `EvolvedSystem` to
            grow (its tasks keep their paths and weights).
        tasks: names of the tasks to evolve, in visiting order (default: the
            data's tasks the system lacks, or all of them).
        data: the multi-task data (train, validation and test splits);
            candidates train on `train` and are judged on `validation`.
        scale: the scale-control factor s in (0, 1]: a candidate's score is
            `quality * s ** (accounted_params / root_params)`; smaller s
            favours fewer parameters per task.
        passes: rounds over the tasks.
        candidates: candidates trained per task visit.
        candidate_epochs: training epochs of one candidate (its budget).
        mutation_prob: probability of each mutation.
        seed: everything random derives from it (a resumed run makes the
            same candidates).
        augment: image augmentation of candidates' training batches (a
            `keras_branch.augment` config such as `{"shift": 0.1,
            "rotation": 10, "zoom": 0.1}`).
        root_task: see `root`.
        state_dir: where the search state is written after every candidate;
            rerunning with the same arguments resumes from it.
        out_dir: when given, the final system folder (`EvolvedSystem.save`).
        overwrite: replace `out_dir` if it exists.
        log: progress lines (None for silence).

    Returns:
        `EvolveResult`: the system, test metrics per task, the candidate log.

    Example:
    >>> result = evolve(root_model, ["Latin"], data, scale=0.9, candidates=8)
    >>> result.system.spec.to_json()

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """
    from keras_branch.augment import make_augment
    from keras_branch.training import compile_model, evaluate

    _check_args(scale, passes, candidates, candidate_epochs, mutation_prob)
    say = log or (lambda _: None)
    system = root if isinstance(root, EvolvedSystem) else EvolvedSystem.from_root(root, root_task)
    system = copy.deepcopy(system)
    by_name = {t.name: t for t in data.tasks}
    if tasks is None:
        tasks = [n for n in data.task_names if n not in system.task_names] or data.task_names
    tasks = list(tasks)
    unknown = [n for n in tasks if n not in by_name]
    if unknown or not tasks:
        raise SearchError(
            f"`tasks` must name tasks of the data; unknown: {unknown or tasks}. "
            f"Data tasks: {data.task_names}."
        )
    missing = [split for split in ("train", "validation") if split not in data.splits]
    if missing:
        raise SearchError(
            f"Evolution trains candidates on `train` and judges them on `validation`; "
            f"data {data.name!r} lacks {missing} (splits: {sorted(data.splits)})."
        )
    if tuple(data.input_shape) != tuple(system.backbone.input_shape):
        raise SearchError(
            f"The data's input shape {data.input_shape} differs from the root's "
            f"{system.backbone.input_shape}."
        )
    config = {"tasks": tasks, "scale": scale, "passes": passes, "candidates": candidates,
              "candidate_epochs": candidate_epochs, "mutation_prob": mutation_prob,
              "seed": seed, "augment": dict(augment) if augment else None,
              "data": data.name, "start_tasks": system.task_names}
    state = _State(state_dir, config, system, say)
    system = state.system
    splits = {name: data.select_tasks([name]) for name in tasks}

    for p in range(passes):
        for i, name in enumerate(tasks):
            visit = (p, i)
            if state.finished(visit):
                continue
            task = by_name[name]
            population = state.population(visit, task)
            if state.done_in_visit(visit) == 0:
                say(f"[pass {p + 1}/{passes}] task {name}: {len(population)} parent(s), "
                    f"{candidates} candidates")
            for c in range(state.done_in_visit(visit), candidates):
                start = time.perf_counter()
                rng = _rng(seed, p, name, c)
                parent = _select_parent(population, rng)
                path, mutations = mutate(Path.from_dict(parent["path"]),
                                         system.backbone.num_stages, rng, mutation_prob)
                owned = _child_weights(system, task, parent, path, state)
                keras.utils.set_random_seed(int(rng.integers(2**31)))
                model, path = _candidate_model(system, task, path, owned)
                compile_model(model, learning_rate=float(path.hparams["learning_rate"]))
                task_data = splits[name]
                order_seed = int(rng.integers(2**31))
                model.fit(
                    task_data.epoch_dataset("train", int(path.hparams["batch_size"]), order_seed,
                                            0, candidate_epochs,
                                            make_augment(augment, seed=order_seed)),
                    epochs=candidate_epochs,
                    steps_per_epoch=task_data.steps("train", int(path.hparams["batch_size"])),
                    verbose=0, shuffle=False,
                )
                quality = _quality(task, evaluate(model, task_data, "validation")[name])
                params = system.accounted_params(task, path)
                score = quality * scale ** (params / system.root_params)
                parent["children"] += 1
                better = parent["score"] is None or score > parent["score"]
                record = {
                    "pass": p, "task": name, "candidate": c, "parent": parent["id"],
                    "mutations": mutations, "path": path.to_dict(), "quality": quality,
                    "params": params, "score": score, "accepted": better,
                    "seconds": round(time.perf_counter() - start, 2),
                }
                entry = {"id": f"p{p}c{c}", "path": path.to_dict(), "score": score,
                         "quality": quality, "params": params, "children": 0,
                         "trained": True}
                weights = {layer.name: [np.array(w) for w in layer.get_weights()]
                           for layer in model.layers if layer.name in owned}
                if better:
                    population.append(entry)
                state.record(visit, record, entry if better else None, weights if better else None)
                say(f"  {name} {c + 1}/{candidates}: parent {parent['id']}, "
                    f"{', '.join(mutations) or 'no mutation'} -> quality {quality:.4f}, "
                    f"params/task {params:,.0f}, score {score:.4f}"
                    f"{' (kept)' if better else ''}")
                keras.backend.clear_session()
            best = max((e for e in population if e["score"] is not None),
                       key=lambda e: e["score"], default=None)
            if best is None:
                raise SearchError(f"No candidate of task {name!r} was trained; candidates={candidates}.")
            path = Path.from_dict(best["path"])
            owned = state.load_weights(best["id"], visit)
            system.install(task, path, owned, {k: best[k] for k in ("quality", "params", "score")})
            state.finish(visit, system)
            say(f"  {name}: installed {best['id']} (quality {best['quality']:.4f}, "
                f"params/task {best['params']:,.0f}, score {best['score']:.4f})")

    model = system.build()
    compile_model(model)
    system_data = data.select_tasks(system.task_names)
    metrics = {
        split: evaluate(model, system_data, split)
        for split in ("validation", "test") if split in data.splits
    }
    history = state.history
    if out_dir is not None:
        system.save(out_dir, metrics, history, config, overwrite=overwrite)
    return EvolveResult(system, metrics, history, model)


def pretrain_and_evolve(
    data: MultiTaskData,
    backbone: Backbone,
    root_tasks: Sequence[str] | None = None,
    root_epochs: int = 30,
    root_learning_rate: float = 1e-3,
    root_schedule: str = "constant",
    batch_size: int = 32,
    scale: float = 0.9,
    passes: int = 2,
    candidates: int = 16,
    candidate_epochs: int = 3,
    mutation_prob: float = 0.2,
    seed: int = 0,
    augment: Mapping[str, float] | None = None,
    state_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
) -> EvolveResult:
    """The whole recipe from scratch: a root trained on some tasks pooled, then evolution.

    Args:
        data: multi-task data with multiclass `root_tasks`.
        backbone: the root's architecture (fresh weights; the root trains them).
        root_tasks: tasks pooled into the root's one classification task
            (default: all but the last task).
        root_epochs, root_learning_rate, root_schedule, batch_size: the
            root's training (`schedule` as in `fit_spec`).
        scale, passes, candidates, candidate_epochs, mutation_prob, seed,
            augment, state_dir, log: as in `evolve`, which then grows the
            root to every task of `data` (`augment` serves the root too).

    Returns:
        `EvolveResult` of the evolution; `root_metrics` holds the root's.

    Example:
    >>> result = pretrain_and_evolve(omniglot, backbones.convnet4((28, 28, 1)), scale=0.5)
    """
    from keras_branch.data.multitask import pool_tasks
    from keras_branch.training import fit_spec

    root_tasks = list(root_tasks) if root_tasks is not None else data.task_names[:-1]
    if not root_tasks:
        raise SearchError("`root_tasks` must name at least one task to pretrain the root on.")
    pooled = pool_tasks(data, root_tasks)
    root = fit_spec(TreeSpec.shared(["pooled"], backbone.num_stages), backbone, pooled,
                    epochs=root_epochs, batch_size=batch_size, learning_rate=root_learning_rate,
                    schedule=root_schedule, augment=augment, seed=seed, verbose=0, log=None)
    if log:
        log(f"root on {root_tasks} pooled: test error {root.metrics['test']['pooled']['error']:.4f}")
    result = evolve(root.model, data.task_names, data, scale=scale, passes=passes,
                    candidates=candidates, candidate_epochs=candidate_epochs,
                    mutation_prob=mutation_prob, seed=seed, augment=augment,
                    state_dir=state_dir, log=log)
    result.root_metrics = root.metrics
    return result


def _check_args(scale, passes, candidates, candidate_epochs, mutation_prob) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise SearchError(f"`scale` must be in (0, 1]. Received: scale={scale!r}")
    for field, value in (("passes", passes), ("candidates", candidates),
                         ("candidate_epochs", candidate_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SearchError(f"`{field}` must be a positive int. Received: {field}={value!r}")
    if not 0 <= mutation_prob <= 1:
        raise SearchError(f"`mutation_prob` must be in [0, 1]. Received: mutation_prob={mutation_prob!r}")


def _child_weights(system: EvolvedSystem, task: Task, parent: dict, path: Path,
                   state: _State) -> dict[str, list[np.ndarray]]:
    """The child's own components and their starting weights.

    Negative route entries mark fresh clones (`-1 - source block`); they
    get new block ids here, copied from their source.
    """
    inherited = state.load_weights(parent["id"], state.current) if parent.get("trained") else {}
    parent_path = Path.from_dict(parent["path"])
    owned: dict[str, list[np.ndarray]] = {}
    for d in range(path.depth):
        block = path.route[d]
        if block < 0 and block_name(d, -1 - block) in inherited:
            # Cloning what the lineage already trains: keep training it.
            block = path.route[d] = -1 - block
        if block < 0:
            source = block_name(d, -1 - block)
            weights = system.weights[source]
            # One block per stage: the ids other candidates of this visit took
            # are all a new clone must avoid.
            new_id = system.next_block_id(d, state.taken_ids(d))
            path.route[d] = new_id
            owned[block_name(d, new_id)] = weights
        elif block_name(d, block) in inherited:  # a clone the parent trained
            owned[block_name(d, block)] = inherited[block_name(d, block)]
    for d, dim in enumerate(path.adapters[: path.depth]):
        if dim:
            name = adapter_name(d, task.key)
            same = parent_path.adapters[d] == dim and name in inherited
            owned[name] = inherited[name] if same else None
    head = f"head_{task.key}"
    owned[head] = inherited.get(head) if parent_path.depth == path.depth else None
    state.claim_ids(path)
    return owned


def _candidate_model(system: EvolvedSystem, task: Task, path: Path,
                     owned: dict[str, list[np.ndarray] | None]):
    spec = TreeSpec([task.name], {task.name: path.route}, {task.name: path.depth},
                    {task.name: path.adapters}, {task.name: path.hparams})
    model = BranchedModel(spec, system.backbone, [task], name="candidate")
    for layer in model.layers:
        if layer.name in owned:
            if owned[layer.name] is not None:
                layer.set_weights(owned[layer.name])
            layer.trainable = True
        elif layer.name in system.weights:
            layer.set_weights(system.weights[layer.name])
            layer.trainable = False  # frozen: shared with the system
    return model, path


class _State:
    """The search state on disk: one JSON file plus a weights file per kept candidate."""

    def __init__(self, directory, config, system: EvolvedSystem, say):
        self.dir = None if directory is None else os.fspath(directory)
        self.config = config
        self.say = say
        self.system = system
        self.visits: dict[str, dict] = {}
        self.history: list[dict] = []
        self.current: tuple[int, int] | None = None
        self._memory: dict[str, dict] = {}
        if self.dir is not None and os.path.isfile(os.path.join(self.dir, STATE_FILE)):
            self._resume()
        elif self.dir is not None:
            claim_folder(self.dir, "evolution state folder")
            _save_npz(os.path.join(self.dir, "system.npz"), system.weights)
            self._write()

    # --- persistence ---

    def _resume(self) -> None:
        with open(os.path.join(self.dir, STATE_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        if saved["config"] != json.loads(json.dumps(self.config)):
            raise SearchError(
                f"State folder {self.dir!r} belongs to another search "
                f"({saved['config']}); use another --state folder or remove it."
            )
        self.visits = saved["visits"]
        self.history = saved["history"]
        self.system = EvolvedSystem._from_meta(
            saved["system"], _load_npz(os.path.join(self.dir, "system.npz"))
        )
        done = len(self.history)
        self.say(f"resuming from {self.dir}: {done} candidate(s) already scored")

    def _write(self) -> None:
        if self.dir is None:
            return
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_json(os.path.join(self.dir, STATE_FILE), {
            "config": self.config, "visits": self.visits, "history": self.history,
            "system": self.system.describe(),
        })

    # --- visits ---

    @staticmethod
    def _key(visit) -> str:
        return f"{visit[0]}:{visit[1]}"

    def finished(self, visit) -> bool:
        return self.visits.get(self._key(visit), {}).get("finished", False)

    def done_in_visit(self, visit) -> int:
        return self.visits.get(self._key(visit), {}).get("done", 0)

    def population(self, visit, task: Task) -> list[dict]:
        self.current = visit
        key = self._key(visit)
        if key not in self.visits:
            system = self.system
            seeds = [{"id": "root", "path": Path.root(system.backbone.num_stages).to_dict(),
                      "score": None, "children": 0, "trained": False}]
            for other in system.task_names:
                own = other == task.name
                entry = {"id": f"task:{other}", "path": system.path(other).to_dict(),
                         "score": None, "children": 0, "trained": own}
                if own:
                    # Its adapters and head carry over; its quality stands, its
                    # size term is recomputed as other tasks may share its blocks now.
                    self._memory[f"{key}/{entry['id']}"] = {
                        n: w for n, w in system.weights.items() if _owned_by(n, task)
                    }
                    quality = system.scores[other]["quality"]
                    params = system.accounted_params(task, system.path(other))
                    entry.update(quality=quality, params=params,
                                 score=quality * self.config["scale"] ** (params / system.root_params))
                seeds.append(entry)
            self.visits[key] = {"population": seeds, "done": 0, "finished": False, "ids": {}}
            if self.dir is not None:
                for entry in seeds:
                    if entry["trained"]:
                        _save_npz(self._weights_path(key, entry["id"]),
                                  self._memory[f"{key}/{entry['id']}"])
        return self.visits[key]["population"]

    def taken_ids(self, stage: int) -> set[int]:
        ids = self.visits[self._key(self.current)]["ids"]
        return set(ids.get(str(stage), []))

    def claim_ids(self, path: Path) -> None:
        ids = self.visits[self._key(self.current)]["ids"]
        for d, b in enumerate(path.route[: path.depth]):
            ids.setdefault(str(d), [])
            if b not in ids[str(d)]:
                ids[str(d)].append(b)

    def _weights_path(self, key: str, entry_id: str) -> str:
        return os.path.join(self.dir, "candidates", f"{key.replace(':', '_')}_{entry_id.replace(':', '_')}.npz")

    def load_weights(self, entry_id: str, visit) -> dict[str, list[np.ndarray]]:
        key = self._key(visit)
        memory = self._memory.get(f"{key}/{entry_id}")
        if memory is not None:
            return memory
        if self.dir is None:
            return {}
        path = self._weights_path(key, entry_id)
        return _load_npz(path) if os.path.isfile(path) else {}

    def record(self, visit, record: dict, entry: dict | None, weights: dict | None) -> None:
        key = self._key(visit)
        if entry is not None:
            self._memory[f"{key}/{entry['id']}"] = weights
            if self.dir is not None:
                # Weights first, then the state that refers to them.
                _save_npz(self._weights_path(key, entry["id"]), weights)
        self.visits[key]["done"] += 1
        self.history.append(record)
        self._write()

    def finish(self, visit, system: EvolvedSystem) -> None:
        self.system = system
        self.visits[self._key(visit)]["finished"] = True
        if self.dir is not None:
            _save_npz(os.path.join(self.dir, "system.npz"), system.weights)
        self._write()
