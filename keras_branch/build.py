"""TreeSpec + Backbone + tasks -> a functional Keras model.

The builder walks the routes stage by stage and keys every intermediate
tensor by the route prefix that produced it, so tasks whose routes agree on
stages 1..d reuse one tensor: every shared prefix is computed once. Block
(d, b) is one layer object; in a tree it is called exactly once, in a non-tree
spec it is called once per distinct input (weights shared, inputs not).

An evolved spec's adapters and norms are part of the prefix: after task t's
adapter at stage d, or through its own norms there, t's path is its own. A
task owning the norms of block (d, b) runs the block's other layers (the same
layer objects, so their weights stay shared) around its own copies of the
block's `BatchNormalization` layers. A task with a smaller depth reads the
output of its last used stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from keras_branch.backbones import Backbone, norm_positions
from keras_branch.errors import SpecError
from keras_branch.layers.adapter import Adapter
from keras_branch.spec import TreeSpec
from keras_branch.task_model import TaskModel
from keras_branch.tasks import Task


#: Names of the layers a BranchedModel builds (task outputs must not take them).
RESERVED_NAMES = r"inputs|stem|stage\d+_block\d+(_.*)?|adapter\d+_.*|norm\d+_\d+_.*|features_.*|head_.*"


def block_name(stage: int, block: int) -> str:
    """Layer name of block `block` of `stage` (both 0-based)."""
    return f"stage{stage + 1}_block{block}"


def adapter_name(stage: int, task_key: str) -> str:
    """Layer name of a task's adapter after `stage` (0-based)."""
    return f"adapter{stage + 1}_{task_key}"


def norm_name(stage: int, position: int, task_key: str) -> str:
    """Layer name of a task's own copy of the batch norm at `position` of its
    block of `stage` (both 0-based; `position` indexes the block's layers)."""
    return f"norm{stage + 1}_{position}_{task_key}"


def _prefix_label(prefix: tuple) -> str:
    return "_".join(
        str(b) + ("" if norms is None else f"n{norms}") + ("" if adapter is None else f"a{adapter}")
        for b, (adapter, norms) in prefix
    )


def _own_norms(block: keras.layers.Layer, stage: int, task: Task, backbone: Backbone,
               ) -> dict[int, keras.layers.Layer]:
    """Fresh copies (same config) of the block's batch norms, named for `task`."""
    positions = norm_positions(block)
    if not positions:
        raise SpecError(
            f"`norms[{task.name!r}][{stage}]` is 1, but stage {stage + 1} of backbone "
            f"{backbone.name!r} is a {type(block).__name__} with no BatchNormalization among "
            f"its layers; a task can own the norms only of a keras.Sequential stage holding them."
        )
    own = {}
    shape = (None, *backbone.stage_input_shape(stage))
    for i, layer in enumerate(block.layers):
        if i in positions:
            # Starts as the block's norm (a pretrained backbone's statistics, say).
            own[i] = type(layer).from_config({**layer.get_config(), "name": norm_name(stage, i, task.key)})
            own[i].build(shape)
            own[i].set_weights(layer.get_weights())
        shape = layer.compute_output_shape(shape)
    return own


class NormedBlock(keras.layers.Layer):
    """A shared block run with one task's own copies of its batch norms.

    Holds the shared block itself (so its weights, all of them, stay part of
    the model, shared, whoever else uses it) and calls its layers in order,
    each `BatchNormalization` replaced by the task's copy. Built only by
    `BranchedModel` (its config is the model's spec), hence not registered.
    """

    def __init__(self, block: keras.layers.Layer, norms: Mapping[int, keras.layers.Layer],
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.block = block
        self.positions = sorted(norms)
        self.norms = [norms[i] for i in self.positions]

    def call(self, inputs):
        x = inputs
        own = dict(zip(self.positions, self.norms))
        for i, layer in enumerate(self.block.layers):
            x = own[i](x) if i in own else layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return self.block.compute_output_shape(input_shape)


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
        normed: dict[tuple[int, str], keras.layers.Layer] = {}
        for task in ordered:
            for d, dim in enumerate(spec.adapter_dims(task.name)[: spec.depth(task.name)]):
                if dim:
                    adapters[(d, task.key)] = Adapter(dim, name=adapter_name(d, task.key))
            for d, flag in enumerate(spec.norm_flags(task.name)[: spec.depth(task.name)]):
                if not flag:
                    continue
                key = (d, spec.route(task.name)[d])
                if not blocks[key].built:
                    # Built whole: its own norms exist (and count) even when
                    # every task using it runs its own copies of them.
                    blocks[key].build((None, *backbone.stage_input_shape(d)))
                normed[(d, task.key)] = NormedBlock(
                    blocks[key], _own_norms(blocks[key], d, task, backbone),
                    name=f"{block_name(*key)}_{task.key}",
                )

        # === Functional Model ===
        # A prefix is ((block, (adapter owner or None, norms owner or None)), ...)
        # up to a stage.
        inputs = keras.Input(shape=backbone.input_shape, name="inputs")
        x = stem(inputs) if stem is not None else inputs
        by_prefix: dict[tuple, Any] = {(): x}
        paths = {task.name: self._path(spec, task) for task in ordered}
        for d in range(spec.num_stages):
            for task in ordered:
                prefix = paths[task.name][: d + 1]
                if len(prefix) <= d or prefix in by_prefix:
                    continue
                (block, (owner, norms_owner)), parent = prefix[-1], prefix[:-1]
                layer = blocks[(d, block)] if norms_owner is None else normed[(d, norms_owner)]
                y = layer(by_prefix[parent])
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
        def key(owner: str | None) -> str | None:
            return None if owner is None else task.key

        return tuple(
            (b, tuple(key(o) for o in spec.owner(task.name, d)))
            for d, b in enumerate(spec.used_route(task.name))
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
