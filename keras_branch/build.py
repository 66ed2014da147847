"""TreeSpec + Backbone + tasks -> a functional Keras model.

The builder walks the routes stage by stage and keys every intermediate
tensor by the route prefix that produced it, so tasks whose routes agree on
stages 1..d reuse one tensor: every shared prefix is computed once. Block
(d, b) is one layer object; in a tree it is called exactly once, in a non-tree
spec it is called once per distinct input (weights shared, inputs not).

An evolved spec's adapters are part of the prefix: after task t's adapter at
stage d, t's path is its own. A task with a smaller depth reads the output of
its last used stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from keras_branch.backbones import Backbone
from keras_branch.errors import SpecError
from keras_branch.layers.adapter import Adapter
from keras_branch.spec import TreeSpec
from keras_branch.task_model import TaskModel
from keras_branch.tasks import Task


#: Names of the layers a BranchedModel builds (task outputs must not take them).
RESERVED_NAMES = r"inputs|stem|stage\d+_block\d+|adapter\d+_.*|features_.*|head_.*"


def block_name(stage: int, block: int) -> str:
    """Layer name of block `block` of `stage` (both 0-based)."""
    return f"stage{stage + 1}_block{block}"


def adapter_name(stage: int, task_key: str) -> str:
    """Layer name of a task's adapter after `stage` (0-based)."""
    return f"adapter{stage + 1}_{task_key}"


def _prefix_label(prefix: tuple) -> str:
    return "_".join(str(b) if owner is None else f"{b}a{owner}" for b, owner in prefix)


@keras.saving.register_keras_serializable(package="keras_branch")
class BranchedModel(TaskModel):
    """A multi-task network whose sharing is given by a TreeSpec.

    A functional model with one input and a dict of outputs, one per task,
    keyed by `Task.key` (the task name, with characters Keras refuses in
    names replaced by `_`). Heads output probabilities (softmax or sigmoid)
    for classification tasks and a value for regression tasks.

    Args:
        spec: the `TreeSpec` (or its dict form) routing tasks through blocks.
        backbone: the `Backbone` (or its config) whose stages are routed.
        tasks: the `Task`s (or their configs); must match `spec.tasks`.
            Outputs follow the order of `spec.tasks`.

    Example:
    >>> spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    >>> tasks = [Task("a", "regression"), Task("b", "binary")]
    >>> model = BranchedModel(spec, backbones.mlp(10, widths=(8, 8)), tasks)
    >>> sorted(model.output_names)
    ['a', 'b']

    Reference:
        Vandenhende et al., "Branched Multi-Task Networks: Deciding What
        Layers To Share", BMVC 2020.
    """

    def __init__(
        self,
        spec: TreeSpec | Mapping[str, Any],
        backbone: Backbone | Mapping[str, Any],
        tasks: Sequence[Task | Mapping[str, Any]],
        **kwargs: Any,
    ):
        spec = spec if isinstance(spec, TreeSpec) else TreeSpec.from_dict(spec)
        backbone = backbone if isinstance(backbone, Backbone) else Backbone.from_config(backbone)
        task_list = self.prepare_tasks(tasks, RESERVED_NAMES, "a BranchedModel")
        spec.check_compatible(backbone, task_list)
        by_name = {t.name: t for t in task_list}
        ordered = [by_name[name] for name in spec.tasks]

        # === Layers ===
        stem = backbone.make_stem()
        blocks: dict[tuple[int, int], keras.layers.Layer] = {}
        for d in range(spec.num_stages):
            for b in spec.blocks(d):
                blocks[(d, b)] = backbone.make_stage(d, name=block_name(d, b))
        adapters: dict[tuple[int, str], keras.layers.Layer] = {}
        for task in ordered:
            for d, dim in enumerate(spec.adapter_dims(task.name)[: spec.depth(task.name)]):
                if dim:
                    adapters[(d, task.key)] = Adapter(dim, name=adapter_name(d, task.key))

        # === Functional Model ===
        # A prefix is ((block, adapter owner or None), ...) up to a stage.
        inputs = keras.Input(shape=backbone.input_shape, name="inputs")
        x = stem(inputs) if stem is not None else inputs
        by_prefix: dict[tuple, Any] = {(): x}
        paths = {task.name: self._path(spec, task) for task in ordered}
        for d in range(spec.num_stages):
            for task in ordered:
                prefix = paths[task.name][: d + 1]
                if len(prefix) <= d or prefix in by_prefix:
                    continue
                (block, owner), parent = prefix[-1], prefix[:-1]
                y = blocks[(d, block)](by_prefix[parent])
                if owner is not None:
                    y = adapters[(d, owner)](y)
                by_prefix[prefix] = y
        features: dict[tuple, Any] = {}
        outputs = {}
        for task in ordered:
            path = paths[task.name]
            if path not in features:
                features[path] = backbone.make_pooling(
                    name=f"features_{_prefix_label(path)}", depth=len(path)
                )(by_prefix[path])
            outputs[task.key] = self.task_output(task, features[path])
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.spec = spec
        self.backbone = backbone
        self.tasks = ordered

    @staticmethod
    def _path(spec: TreeSpec, task: Task) -> tuple:
        dims = spec.adapter_dims(task.name)
        return tuple(
            (b, task.key if dims[d] else None) for d, b in enumerate(spec.used_route(task.name))
        )

    def model_config(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "backbone": self.backbone.get_config()}


def build_model(
    spec: TreeSpec,
    backbone: Backbone,
    tasks: Sequence[Task | Mapping[str, Any]],
    name: str = "branched_model",
) -> BranchedModel:
    """Builds the functional multi-task model a spec describes.

    Args:
        spec: which block every task uses at every stage.
        backbone: the stem and stage templates.
        tasks: one `Task` per name in `spec.tasks`.
        name: model name.

    Returns:
        A `BranchedModel` with outputs `{task.key: tensor}`; its
        `count_params()` equals `spec.count_params(backbone, tasks)`.

    Example:
    >>> spec = TreeSpec.shared(["x", "y"], num_stages=3)
    >>> model = build_model(spec, backbones.mlp(4), [Task("x", "regression"),
    ...                                              Task("y", "regression")])
    """
    if not isinstance(spec, TreeSpec):
        raise SpecError(f"`spec` must be a TreeSpec. Received: {type(spec).__name__}")
    return BranchedModel(spec, backbone, tasks, name=name)
