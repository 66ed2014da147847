"""Task-subset export: a model holding only what some tasks need.

`subset_model(model, ["a", "b"])` builds a new `BranchedModel` from
`model.spec.subset(["a", "b"])` with the same backbone and those tasks, and
copies weights layer by layer by name. Block layers are named after their
stage and block id (`stage{d}_block{b}`), which `TreeSpec.subset` keeps, so
each block of the subset model finds its trained twin; blocks on no chosen
task's route are never built, so they are absent from the exported
artifact, not merely unused.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras

from keras_branch.build import BranchedModel
from keras_branch.errors import ExportError


def resolve_tasks(model: BranchedModel, tasks: Iterable[str] | str) -> list[str]:
    """Task names for a user's task list; each entry a task name or its key.

    Args:
        model: the full model.
        tasks: task names or output keys (a comma-separated string is split).

    Returns:
        Task names in the order given, without duplicates.

    Raises:
        ExportError: naming unknown tasks and listing the model's tasks.

    Example:
    >>> model = build_model(TreeSpec.shared(["Japanese_(katakana)", "c"], num_stages=1),
    ...                     backbones.mlp(4, (4,)),
    ...                     [Task("Japanese_(katakana)", "regression"), Task("c", "regression")])
    >>> resolve_tasks(model, "Japanese__katakana_,c")
    ['Japanese_(katakana)', 'c']
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    requested = list(tasks)
    if not requested:
        raise ExportError(
            f"`tasks` must name at least one task; tasks are {[t.name for t in model.tasks]}. "
            f"Received: tasks={requested!r}"
        )
    by_name = {t.name: t.name for t in model.tasks}
    by_key = {t.key: t.name for t in model.tasks}
    unknown = [t for t in requested if t not in by_name and t not in by_key]
    if unknown:
        raise ExportError(
            f"Unknown task(s) {unknown} in `tasks`; the model's tasks are "
            f"{[t.name for t in model.tasks]}."
        )
    names = [by_name.get(t) or by_key[t] for t in requested]
    return list(dict.fromkeys(names))


def subset_model(model: BranchedModel, tasks: Iterable[str] | str) -> BranchedModel:
    """A model with only the blocks and heads that `tasks` use, same weights.

    Args:
        model: a `BranchedModel` (trained).
        tasks: the tasks to keep, by name or output key.

    Returns:
        A new `BranchedModel` for `model.spec.subset(tasks)`, whose outputs
        equal `model`'s outputs for those tasks.

    Example:
    >>> spec = TreeSpec.from_partitions([[["a", "b", "c"]], [["a", "b"], ["c"]]])
    >>> model = build_model(spec, backbones.mlp(4, (4, 4)),
    ...                     [Task(name, "regression") for name in ("a", "b", "c")])
    >>> small = subset_model(model, ["a", "b"])
    >>> sorted(small.output_names)
    ['a', 'b']
    """
    if not isinstance(model, BranchedModel):
        raise ExportError(
            f"Task-subset export needs a keras_branch BranchedModel. "
            f"Received: {type(model).__name__}"
        )
    names = resolve_tasks(model, tasks)
    by_name = {t.name: t for t in model.tasks}
    spec = model.spec.subset(names)
    small = BranchedModel(
        spec, model.backbone.get_config(), [by_name[n] for n in names],
        name=f"{model.name}_subset",
    )
    for layer in small.layers:
        if not layer.weights:
            continue
        try:
            source = model.get_layer(layer.name)
        except ValueError:
            raise ExportError(
                f"Layer {layer.name!r} of the subset model has no twin in model "
                f"{model.name!r}; was the model built by keras_branch?"
            ) from None
        # Non-trainable state too (batch-norm moving statistics).
        layer.set_weights(source.get_weights())
    return small


def block_layer_names(model: keras.Model) -> list[str]:
    """Names of the stage blocks a model holds (`stage{d}_block{b}`), sorted."""
    return sorted(layer.name for layer in model.layers if layer.name.startswith("stage"))
