"""TreeSpec: which block every task uses at every stage of a backbone.

A spec is plain data. Its canonical JSON form is

    {"tasks": ["a", "b", "c", "d"],
     "routes": {"a": [0, 0, 0], "b": [0, 0, 1], "c": [0, 1, 2], "d": [0, 1, 3]}}

Block ids are non-negative integers local to a stage. Tasks whose routes agree
on stages 1..d share the computation of those stages. A spec is a *tree* when
tasks that share a block at stage d also share a block at every earlier
stage; other specs (weight sharing across different inputs, as evolution
produces) are valid too and build the same way.

Evolved systems (`keras_branch.search.evolve`) add four optional fields, so
every tree stays a valid spec:

    "depths":   {"e": 3}                 # task e reads features after stage 3
    "adapters": {"e": [0, 0, 16, 0]}     # a residual adapter of width 16 after stage 3
    "norms":    {"e": [1, 1, 1, 0]}      # e owns the batch norms of its blocks of stages 1-3
    "hparams":  {"e": {"learning_rate": 0.003}}   # the task's training recipe

A task's *used route* is its route up to its depth; blocks past a task's
depth are neither built nor counted for it. Adapters are owned by their task,
and so are a task's norms: the block's other weights stay shared.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from keras_branch.checks import MAX_ADAPTER_WIDTH, check_int, check_utf8
from keras_branch.errors import SpecError
from keras_branch.files import atomic_write_text

if TYPE_CHECKING:
    from keras_branch.backbones import Backbone
    from keras_branch.tasks import Task


class TreeSpec:
    """Per-task routes through the blocks of a staged backbone.

    Args:
        tasks: task names, in output order (non-empty, unique strings).
        routes: for every task, one block id per stage (non-negative ints).
            Every route has the same length, the number of stages (>= 1).

        depths: optional task -> number of stages the task uses (1 to the
            number of stages; default all). Its head reads the output of its
            last used stage.
        adapters: optional task -> one int per stage: the width of a
            zero-initialised residual adapter (`keras_branch.layers.Adapter`)
            after that stage, 0 for none, at most `MAX_ADAPTER_WIDTH`
            (2**16). Adapters belong to their task.
        hparams: optional task -> dict of JSON scalars (the per-task recipe
            evolution found; numbers finite, as strict JSON has no NaN or
            infinity). Not used by the builder.
        norms: optional task -> one 0 or 1 per stage: 1 where the task owns
            the batch normalizations of its block of that stage (its own
            scale, offset and statistics; the block's other layers stay
            shared). Needs stages that are `keras.Sequential`s holding
            `BatchNormalization` layers (`Backbone.stage_norm_positions`).

    Raises:
        SpecError: naming the field and the value received, for anything
            malformed.

    Example:
    >>> spec = TreeSpec(["a", "b", "c"], {"a": [0, 0], "b": [0, 0], "c": [0, 1]})
    >>> spec.is_tree, spec.num_stages, spec.blocks_per_stage()
    (True, 2, [1, 2])
    """

    def __init__(
        self,
        tasks: Sequence[str],
        routes: Mapping[str, Sequence[int]],
        depths: Mapping[str, int] | None = None,
        adapters: Mapping[str, Sequence[int]] | None = None,
        hparams: Mapping[str, Mapping[str, Any]] | None = None,
        norms: Mapping[str, Sequence[int]] | None = None,
    ):
        self._tasks = _validate_tasks(tasks)
        self._routes = _validate_routes(routes, self._tasks)
        num_stages = len(next(iter(self._routes.values())))
        self._depths = _validate_depths(depths, self._tasks, num_stages)
        self._adapters = _validate_adapters(adapters, self._tasks, num_stages)
        self._hparams = _validate_hparams(hparams, self._tasks)
        self._norms = _validate_norms(norms, self._tasks, num_stages)

    # === Constructors ===

    @classmethod
    def from_partitions(
        cls,
        partitions: Sequence[Sequence[Sequence[str]]],
        tasks: Sequence[str] | None = None,
    ) -> TreeSpec:
        """A spec from one partition of the tasks per stage.

        Args:
            partitions: `partitions[d]` is a list of groups (lists of task
                names); every task appears in exactly one group per stage.
                Group `g` of stage `d` becomes block id `g`.
            tasks: output order of the tasks; defaults to order of first
                appearance in `partitions[0]`.

        Example:
        >>> TreeSpec.from_partitions([[["a", "b", "c"]], [["a", "b"], ["c"]]]).routes
        {'a': [0, 0], 'b': [0, 0], 'c': [0, 1]}
        """
        if isinstance(partitions, (str, bytes, Mapping)) or not isinstance(
            partitions, Sequence
        ):
            raise SpecError(
                f"`partitions` must be a list with one list of groups per stage. "
                f"Received: partitions={partitions!r}"
            )
        if not partitions:
            raise SpecError("`partitions` must hold at least one stage. Received: []")
        if tasks is None:
            first = partitions[0]
            if not isinstance(first, Sequence) or isinstance(first, (str, bytes)):
                raise SpecError(
                    f"`partitions[0]` must be a list of groups. Received: {first!r}"
                )
            # Unique names in order; a task placed twice is reported per stage below.
            tasks = list(dict.fromkeys(n for group in first for n in _as_group(group, 0)))
        tasks = _validate_tasks(tasks)
        routes: dict[str, list[int]] = {name: [] for name in tasks}
        for d, stage in enumerate(partitions):
            if not isinstance(stage, Sequence) or isinstance(stage, (str, bytes)):
                raise SpecError(
                    f"`partitions[{d}]` must be a list of groups. Received: {stage!r}"
                )
            seen: set[str] = set()
            for block, group in enumerate(stage):
                for name in _as_group(group, d):
                    if name not in routes:
                        raise SpecError(
                            f"`partitions[{d}]` names unknown task {name!r}; "
                            f"tasks are {list(tasks)}."
                        )
                    if name in seen:
                        raise SpecError(
                            f"`partitions[{d}]` puts task {name!r} in more than one group."
                        )
                    seen.add(name)
                    routes[name].append(block)
            missing = [name for name in tasks if name not in seen]
            if missing:
                raise SpecError(
                    f"`partitions[{d}]` leaves out task(s) {missing}; every stage "
                    f"must place every task."
                )
        return cls(tasks, routes)

    @classmethod
    def shared(cls, tasks: Sequence[str], num_stages: int) -> TreeSpec:
        """Every task uses block 0 at every stage: one shared trunk."""
        _check_num_stages(num_stages)
        return cls(tasks, {t: [0] * num_stages for t in _validate_tasks(tasks)})

    @classmethod
    def independent(cls, tasks: Sequence[str], num_stages: int) -> TreeSpec:
        """Every task has its own block at every stage: separate networks."""
        _check_num_stages(num_stages)
        names = _validate_tasks(tasks)
        return cls(names, {t: [i] * num_stages for i, t in enumerate(names)})

    @classmethod
    def from_dict(cls, data: Any) -> TreeSpec:
        """A spec from its JSON object (`{"tasks": [...], "routes": {...}}`)."""
        if not isinstance(data, Mapping):
            raise SpecError(
                f"A tree spec must be a JSON object with `tasks` and `routes`. "
                f"Received: {_short(data)}"
            )
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise SpecError(
                f"Unknown field(s) {unknown} in tree spec; expected `tasks` and "
                f"`routes`, optionally `depths`, `adapters`, `hparams` and `norms`."
            )
        for field in ("tasks", "routes"):
            if field not in data:
                raise SpecError(f"Tree spec is missing the field `{field}`.")
        return cls(
            data["tasks"], data["routes"], depths=data.get("depths"),
            adapters=data.get("adapters"), hparams=data.get("hparams"), norms=data.get("norms"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> TreeSpec:
        """A spec from JSON text."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as err:
            raise SpecError(f"Tree spec is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TreeSpec:
        """Reads a spec from a JSON file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SpecError(f"Tree spec file does not exist: {os.fspath(path)!r}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SpecError(f"Cannot read tree spec {os.fspath(path)!r}: {err}") from None
        try:
            return cls.from_json(text)
        except SpecError as err:
            raise SpecError(f"{os.fspath(path)}: {err}") from None

    # === Views ===

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    @property
    def routes(self) -> dict[str, list[int]]:
        return {t: list(r) for t, r in self._routes.items()}

    @property
    def num_stages(self) -> int:
        return len(next(iter(self._routes.values())))

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    def route(self, task: str) -> list[int]:
        if task not in self._routes:
            raise SpecError(f"Unknown task {task!r}; tasks are {self._tasks}.")
        return list(self._routes[task])

    def depth(self, task: str) -> int:
        """How many stages `task` uses (all unless `depths` says otherwise)."""
        self.route(task)
        return self._depths.get(task, self.num_stages)

    def used_route(self, task: str) -> list[int]:
        """The task's block ids up to its depth."""
        return self.route(task)[: self.depth(task)]

    def adapter_dims(self, task: str) -> list[int]:
        """Adapter width after each stage for `task` (0: none)."""
        self.route(task)
        return list(self._adapters.get(task, [0] * self.num_stages))

    def norm_flags(self, task: str) -> list[int]:
        """1 where `task` owns the batch norms of its block of the stage, else 0."""
        self.route(task)
        return list(self._norms.get(task, [0] * self.num_stages))

    def task_hparams(self, task: str) -> dict[str, Any]:
        """The task's recipe from `hparams` (empty when none)."""
        self.route(task)
        return dict(self._hparams.get(task, {}))

    @property
    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    @property
    def adapters(self) -> dict[str, list[int]]:
        return {t: list(a) for t, a in self._adapters.items()}

    @property
    def hparams(self) -> dict[str, dict[str, Any]]:
        return {t: dict(h) for t, h in self._hparams.items()}

    @property
    def norms(self) -> dict[str, list[int]]:
        return {t: list(n) for t, n in self._norms.items()}

    def owner(self, task: str, stage: int) -> tuple[str | None, str | None]:
        """Who owns `task`'s adapter and norms at `stage`: `(task or None, task or None)`."""
        return (task if self.adapter_dims(task)[stage] else None,
                task if self.norm_flags(task)[stage] else None)

    @property
    def is_plain(self) -> bool:
        """True without depths, adapters, hparams or norms (a spec of plain routes)."""
        return not (self._depths or self._adapters or self._hparams or self._norms)

    def blocks(self, stage: int) -> list[int]:
        """The distinct block ids used at `stage` (0-based), sorted.

        A task past its depth does not use the stage.
        """
        return sorted({r[stage] for t, r in self._routes.items() if self.depth(t) > stage})

    def blocks_per_stage(self) -> list[int]:
        return [len(self.blocks(d)) for d in range(self.num_stages)]

    def partition(self, stage: int) -> list[list[str]]:
        """Groups of tasks sharing a block at `stage`, in block-id order.

        Tasks that stop before `stage` are left out.
        """
        groups: dict[int, list[str]] = {}
        for task in self._tasks:
            if self.depth(task) > stage:
                groups.setdefault(self._routes[task][stage], []).append(task)
        return [groups[b] for b in sorted(groups)]

    def partitions(self) -> list[list[list[str]]]:
        return [self.partition(d) for d in range(self.num_stages)]

    @property
    def is_tree(self) -> bool:
        """True when tasks sharing a block also share everything before it.

        An adapter or a task's own norms change what later blocks of its task
        see, so a block used after them by one task and by another task is
        not a tree.
        """
        for d in range(1, self.num_stages):
            parent: dict[int, tuple] = {}
            for task, route in self._routes.items():
                if self.depth(task) <= d:
                    continue
                before = (route[d - 1], self.owner(task, d - 1))
                if parent.setdefault(route[d], before) != before:
                    return False
        return True

    def canonical(self) -> TreeSpec:
        """Same sharing, block ids renumbered 0, 1, ... by first use per stage."""
        routes: dict[str, list[int]] = {t: [] for t in self._tasks}
        for d in range(self.num_stages):
            relabel: dict[int, int] = {}
            for task in self._tasks:
                block = self._routes[task][d]
                routes[task].append(relabel.setdefault(block, len(relabel)))
        return self._with(self._tasks, routes)

    def subset(self, tasks: Iterable[str]) -> TreeSpec:
        """The spec restricted to some of its tasks (block ids kept)."""
        names = _validate_tasks(list(tasks))
        unknown = [t for t in names if t not in self._routes]
        if unknown:
            raise SpecError(f"Unknown task(s) {unknown}; tasks are {self._tasks}.")
        return self._with(names, {t: self._routes[t] for t in names})

    def _with(self, tasks: Sequence[str], routes: Mapping[str, Sequence[int]]) -> TreeSpec:
        # Same optional fields, restricted to `tasks`.
        def keep(field: dict) -> dict:
            return {t: v for t, v in field.items() if t in tasks}

        return TreeSpec(tasks, routes, keep(self._depths), keep(self._adapters),
                        keep(self._hparams), keep(self._norms))

    # === Parameter accounting ===

    def count_params(self, backbone: Backbone, tasks: Sequence[Task]) -> int:
        """Parameters of the model this spec builds (== `model.count_params()`).

        stem + sum over stages of (distinct blocks at the stage) x (params of
        one block of the stage) + every task's head.
        """
        return sum(self.param_breakdown(backbone, tasks).values())

    def param_breakdown(self, backbone: Backbone, tasks: Sequence[Task]) -> dict[str, int]:
        """Parameters per part: `stem`, `stage_1`..`stage_D`, `adapters`, `norms`, `heads`."""
        from keras_branch.tasks import as_tasks

        from keras_branch.layers.adapter import adapter_params

        task_list = as_tasks(tasks)
        self.check_compatible(backbone, task_list)
        parts = {"stem": backbone.stem_params()}
        for d, count in enumerate(self.blocks_per_stage()):
            parts[f"stage_{d + 1}"] = count * backbone.stage_params(d)
        if self._adapters:
            parts["adapters"] = sum(
                adapter_params(backbone.stage_output_shape(d)[-1], dim)
                for task in self._adapters
                for d, dim in enumerate(self.adapter_dims(task)[: self.depth(task)])
                if dim
            )
        if self._norms:
            parts["norms"] = sum(
                backbone.stage_norm_params(d)
                for task in self._norms
                for d, flag in enumerate(self.norm_flags(task)[: self.depth(task)])
                if flag
            )
        parts["heads"] = sum(
            (backbone.feature_size(self.depth(t.name)) + 1) * t.units for t in task_list
        )
        return parts

    def check_compatible(self, backbone: Backbone, tasks: Sequence[Task]) -> None:
        """Raises SpecError unless the spec fits this backbone and task list."""
        if self.num_stages != backbone.num_stages:
            raise SpecError(
                f"Routes have {self.num_stages} stage(s) but backbone "
                f"{backbone.name!r} has {backbone.num_stages}."
            )
        names = [t.name for t in tasks]
        unknown = [t for t in self._tasks if t not in names]
        if unknown:
            raise SpecError(
                f"Spec names task(s) {unknown} that the task list lacks; "
                f"tasks are {names}."
            )
        missing = [t for t in names if t not in self._routes]
        if missing:
            raise SpecError(f"Task(s) {missing} have no route in the spec.")

    # === Serialization ===

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tasks": self.tasks, "routes": self.routes}
        for field, value in (("depths", self.depths), ("adapters", self.adapters),
                             ("hparams", self.hparams), ("norms", self.norms)):
            if value:
                data[field] = value
        return data

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON; with `indent`, one route per line."""
        if indent is None:
            return json.dumps(self.to_dict())
        pad = " " * indent
        fields = [f"{pad}\"tasks\": {json.dumps(self._tasks)}"]
        for field, value in self.to_dict().items():
            if field == "tasks":
                continue
            lines = f",\n{pad}{pad}".join(
                f"{json.dumps(t)}: {json.dumps(v)}" for t, v in value.items()
            )
            fields.append(f"{pad}{json.dumps(field)}: {{\n{pad}{pad}{lines}\n{pad}}}")
        return "{\n" + ",\n".join(fields) + "\n}"

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON form atomically (temporary file, then rename)."""
        atomic_write_text(path, self.to_json(indent=2) + "\n")

    # === Comparison and display ===

    def _key(self) -> tuple:
        # Relabel blocks by first use over the tasks in sorted order: the
        # result depends only on which tasks share which blocks. Stages past
        # a task's depth do not count.
        order = sorted(self._tasks)
        routes: dict[str, list[int]] = {t: [] for t in order}
        for d in range(self.num_stages):
            relabel: dict[int, int] = {}
            for task in order:
                if self.depth(task) > d:
                    block = self._routes[task][d]
                    routes[task].append(relabel.setdefault(block, len(relabel)))
        return tuple(
            (t, tuple(routes[t]), tuple(self.adapter_dims(t)),
             tuple(sorted(self.task_hparams(t).items())), tuple(self.norm_flags(t)))
            for t in order
        )

    def __eq__(self, other: object) -> bool:
        """Equal when both describe the same sharing of the same tasks.

        Block labels and the order of tasks do not matter: `[0, 1]` and
        `[3, 7]` as the only two blocks of a stage build the same network.
        Depths, adapters, hparams and norms must agree.
        """
        if not isinstance(other, TreeSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"TreeSpec.from_json({self.to_json()!r})"

    def __str__(self) -> str:
        kind = "tree" if self.is_tree else "not a tree (blocks shared across different inputs)"
        lines = [f"TreeSpec: {self.num_tasks} tasks, {self.num_stages} stages, {kind}"]
        width = len(str(self.num_stages))
        for d in range(self.num_stages):
            groups = "  ".join("{" + ", ".join(g) + "}" for g in self.partition(d)) or "(unused)"
            lines.append(f"  stage {d + 1:>{width}}: {groups}")
        for task in self._tasks:
            extras = []
            if self.depth(task) < self.num_stages:
                extras.append(f"depth {self.depth(task)}")
            extras += [f"adapter({dim}) after stage {d + 1}"
                       for d, dim in enumerate(self.adapter_dims(task)) if dim]
            owned = [str(d + 1) for d, flag in enumerate(self.norm_flags(task)) if flag]
            if owned:
                extras.append(f"own norms at stage(s) {', '.join(owned)}")
            if self.task_hparams(task):
                extras.append(json.dumps(self.task_hparams(task), sort_keys=True))
            if extras:
                lines.append(f"  {task}: " + ", ".join(extras))
        return "\n".join(lines)


_FIELDS = ("tasks", "routes", "depths", "adapters", "hparams", "norms")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_num_stages(num_stages: Any) -> None:
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise SpecError(f"`num_stages` must be an integer >= 1. Received: {num_stages!r}")


def _as_group(group: Any, stage: int) -> list[str]:
    if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
        raise SpecError(
            f"Each group of `partitions[{stage}]` must be a non-empty list of task "
            f"names. Received: {_short(group)}"
        )
    return list(group)


def _validate_tasks(tasks: Any) -> list[str]:
    if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, (Sequence, list)):
        raise SpecError(f"`tasks` must be a list of task names. Received: tasks={_short(tasks)}")
    if not tasks:
        raise SpecError("`tasks` must name at least one task. Received: tasks=[]")
    seen: set[str] = set()
    for name in tasks:
        if not isinstance(name, str) or not name:
            raise SpecError(
                f"Every entry of `tasks` must be a non-empty string. Received: {_short(name)}"
            )
        check_utf8(name, "tasks", error=SpecError)
        if name in seen:
            raise SpecError(f"Duplicate task name in `tasks`: {name!r}")
        seen.add(name)
    return list(tasks)


def _validate_routes(routes: Any, tasks: list[str]) -> dict[str, list[int]]:
    if not isinstance(routes, Mapping):
        raise SpecError(
            f"`routes` must map every task name to a list of block ids. "
            f"Received: routes={_short(routes)}"
        )
    unknown = [k for k in routes if k not in tasks]
    if unknown:
        raise SpecError(
            f"`routes` has task(s) {_short(unknown)} that are not in `tasks` {_short(tasks)}."
        )
    missing = [t for t in tasks if t not in routes]
    if missing:
        raise SpecError(f"`routes` has no route for task(s) {_short(missing)}.")
    result: dict[str, list[int]] = {}
    length = None
    for task in tasks:
        route = routes[task]
        if isinstance(route, (str, bytes, Mapping)) or not isinstance(route, Sequence):
            raise SpecError(
                f"`routes[{task!r}]` must be a list of block ids. Received: {_short(route)}"
            )
        if not route:
            raise SpecError(f"`routes[{task!r}]` is empty; a route needs at least one stage.")
        for d, block in enumerate(route):
            if isinstance(block, bool) or not isinstance(block, int) or block < 0:
                raise SpecError(
                    f"`routes[{task!r}][{d}]` must be a non-negative integer block id. "
                    f"Received: {_short(block)}"
                )
        if length is None:
            length = len(route)
        elif len(route) != length:
            raise SpecError(
                f"`routes[{task!r}]` has {len(route)} stage(s) but "
                f"`routes[{tasks[0]!r}]` has {length}; all routes need the same length."
            )
        result[task] = [int(b) for b in route]
    return result


def _task_mapping(value: Any, field: str, tasks: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"`{field}` must map task names to values. Received: {field}={_short(value)}"
        )
    unknown = [k for k in value if k not in tasks]
    if unknown:
        raise SpecError(f"`{field}` names task(s) {_short(unknown)} that are not in `tasks`.")
    return dict(value)


def _validate_depths(depths: Any, tasks: list[str], num_stages: int) -> dict[str, int]:
    result = {}
    for task, depth in _task_mapping(depths, "depths", tasks).items():
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_stages:
            raise SpecError(
                f"`depths[{task!r}]` must be an integer from 1 to {num_stages} (the "
                f"number of stages). Received: {_short(depth)}"
            )
        if depth < num_stages:  # the default is not stored: equal specs, equal JSON
            result[task] = int(depth)
    return result


def _validate_adapters(adapters: Any, tasks: list[str], num_stages: int) -> dict[str, list[int]]:
    # 0: no adapter; the bound keeps a typo (or 10**18) from allocating the machine away.
    return _per_stage(adapters, "adapters", tasks, num_stages, MAX_ADAPTER_WIDTH,
                      "one adapter width per stage ({n}), 0 for none")


def _per_stage(values: Any, field: str, tasks: list[str], num_stages: int, maximum: int,
               rule: str) -> dict[str, list[int]]:
    """`field`: task -> one int in [0, maximum] per stage; tasks with all zeros are not stored."""
    result = {}
    for task, items in _task_mapping(values, field, tasks).items():
        if (isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence)
                or len(items) != num_stages):
            raise SpecError(
                f"`{field}[{task!r}]` must list {rule.format(n=num_stages)}. Received: {_short(items)}"
            )
        for d, item in enumerate(items):
            check_int(item, f"{field}[{task!r}][{d}]", minimum=0, maximum=maximum, error=SpecError)
        if any(items):
            result[task] = [int(x) for x in items]
    return result


def _validate_hparams(hparams: Any, tasks: list[str]) -> dict[str, dict[str, Any]]:
    result = {}
    for task, values in _task_mapping(hparams, "hparams", tasks).items():
        if not isinstance(values, Mapping):
            raise SpecError(
                f"`hparams[{task!r}]` must be an object of name: value. Received: {_short(values)}"
            )
        for name, value in values.items():
            if not isinstance(name, str) or not (
                value is None or isinstance(value, (bool, int, float, str))
            ):
                raise SpecError(
                    f"`hparams[{task!r}]` values must be JSON scalars. "
                    f"Received: {_short(name)}: {_short(value)}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise SpecError(
                    f"`hparams[{task!r}][{name!r}]` must be a finite number (JSON has no NaN "
                    f"or infinity). Received: hparams[{task!r}][{name!r}]={value!r}"
                )
        if values:
            result[task] = dict(values)
    return result


def _validate_norms(norms: Any, tasks: list[str], num_stages: int) -> dict[str, list[int]]:
    return _per_stage(norms, "norms", tasks, num_stages, 1,
                      "one flag per stage ({n}): 1 where the task owns the stage's batch norms, "
                      "0 where not")
