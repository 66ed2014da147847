"""Soft layer ordering as a multi-task model: encoders, a shared pool, decoders.

Every task has its own encoder E_t (input -> the pool's shape) and decoder
D_t (features -> the task's head); between them a `SoftOrdering` layer
mixes one shared pool of D layers per task and depth. The orderings:

* `"soft"`: learned per-task mixing (Meyerson & Miikkulainen's method);
* `"parallel"`: F_1..F_D in order for every task (ordinary hard sharing);
* `"permuted"`: a fixed random order per task;
* `"single_task"`: every task has its own pool, applied in order (separate
  networks; the single-task baseline).

The model's outputs are a dict keyed by `Task.key`, like `BranchedModel`,
so `keras_branch.training` compiles, fits and scores it unchanged. Learned
mixing weights can be read (`mixing_weights`), printed
(`format_mixing_weights`) and drawn (`keras_branch.plots.plot_mixing_weights`).

Reference:
    Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask
    Learning through Soft Layer Ordering", ICLR 2018, arXiv:1711.00108.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.checks import check_choice, check_int
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import KerasBranchError
from keras_branch.layers.conv_block import ConvBlock
from keras_branch.layers.soft_ordering import ORDERINGS, SoftOrdering
from keras_branch.masked import label_mask
from keras_branch.results import TrainResult
from keras_branch.task_model import TaskModel
from keras_branch.tasks import Task
from keras_branch.training import fit_model

SINGLE_TASK = "single_task"
#: Names of the layers a SoftOrderingModel builds (task outputs must not take them).
RESERVED_NAMES = r"inputs|stem|soft_ordering|single_task_.*|encoder_.*|features_.*|head_.*"
MODEL_ORDERINGS = (*ORDERINGS, SINGLE_TASK)
POOLINGS = ("flatten", "avg", "max", "none")
# Spellings of the command line (`--model soft-ordering`) and of prose.
_ALIASES = {"soft-ordering": "soft", "soft_ordering": "soft", "single-task": SINGLE_TASK}


def normalize_ordering(ordering: str) -> str:
    """Canonical ordering name; accepts `soft-ordering` and `single-task` too.

    Example:
    >>> normalize_ordering("soft-ordering"), normalize_ordering("parallel")
    ('soft', 'parallel')
    """
    name = _ALIASES.get(ordering, ordering) if isinstance(ordering, str) else ordering
    if name not in MODEL_ORDERINGS:
        raise KerasBranchError(
            f"`ordering` must be one of {list(MODEL_ORDERINGS)} (or 'soft-ordering', "
            f"'single-task'). Received: ordering={ordering!r}"
        )
    return name


def _serialize(source: Any, what: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if isinstance(source, keras.layers.Layer):
        return keras.saving.serialize_keras_object(source)
    raise KerasBranchError(
        f"{what} must be a Keras layer (used as a template) or a serialized layer "
        f"config. Received: {source!r}"
    )


def _fresh(config: Mapping[str, Any], name: str) -> keras.layers.Layer:
    config = copy.deepcopy(dict(config))
    config.setdefault("config", {})["name"] = name
    return keras.saving.deserialize_keras_object(config)


@keras.saving.register_keras_serializable(package="keras_branch")
class SoftOrderingModel(TaskModel):
    """Task encoders, a soft-ordered shared pool, and task decoders.

    For every task t: `E_t(x)` -> the t-th output of a `SoftOrdering` over
    the pool -> pooling -> the task's head. With ordering `"single_task"`
    every task gets its own copy of the pool instead (one-task
    `SoftOrdering` layers in parallel order).

    Args:
        tasks: the `Task`s (or their configs).
        input_shape: shape of one input sample.
        pool: the D shared layers, as templates (Keras layers, never called
            themselves) or serialized configs; the entries used at one
            depth must agree on the output shape.
        stem: a shared layer (template/config) before the encoders and the
            pool, or None.
        logit_scale: multiplier of the mixing logits (see `SoftOrdering`).
        mixing_dropout: drop-path on the soft mixture in training (see
            `SoftOrdering`; soft ordering only).
        encoder: per-task encoder template/config (each task gets a fresh
            copy), or None for none (the pool then reads the input).
        ordering: `"soft"`, `"parallel"`, `"permuted"` or `"single_task"`.
        pooling: how decoders read the pool's output: `"flatten"`,
            `"avg"`/`"max"` (global pooling) or `"none"`.
        seed: seed of the permuted orders.
        route_training: in `fit` and `evaluate`, when every sample of a batch
            is labelled for at most one task (Omniglot: one alphabet per
            image), run each sample through its own task's path only: the
            same losses and metrics at 1/T of the cost. Exact for layers
            that treat samples independently (the default vector parts, and
            every layer at inference); in training, a batch norm normalises
            over the routed batch instead of over every task's copy of it.
            Batches with a sample labelled for several tasks run every path.
            `predict` and plain calls always compute every task.
        **kwargs: `keras.Model` arguments (`name`).

    Example:
    >>> tasks = [Task("a", "regression"), Task("b", "multiclass", classes=3)]
    >>> model = SoftOrderingModel(
    ...     tasks, (10,), pool=[keras.layers.Dense(8, activation="relu")] * 3,
    ...     encoder=keras.layers.Dense(8, activation="relu"))
    >>> sorted(model.output_names)
    ['a', 'b']

    Reference:
        Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask
        Learning through Soft Layer Ordering", ICLR 2018, arXiv:1711.00108.
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        input_shape: Sequence[int],
        pool: Sequence[keras.layers.Layer | Mapping[str, Any]],
        encoder: keras.layers.Layer | Mapping[str, Any] | None = None,
        ordering: str = "soft",
        pooling: str = "flatten",
        seed: int = 0,
        route_training: bool = True,
        stem: keras.layers.Layer | Mapping[str, Any] | None = None,
        logit_scale: float = 1.0,
        mixing_dropout: float = 0.0,
        **kwargs: Any,
    ):
        task_list = self.prepare_tasks(tasks, RESERVED_NAMES, "a SoftOrderingModel")
        if not isinstance(route_training, bool):
            raise KerasBranchError(
                f"`route_training` must be a bool. Received: route_training={route_training!r}"
            )
        ordering = normalize_ordering(ordering)
        check_choice(pooling, "pooling", POOLINGS, error=KerasBranchError)
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            shape = ()
        if not shape or any(s < 1 for s in shape):
            raise KerasBranchError(
                f"`input_shape` must be a tuple of positive ints. Received: {input_shape!r}"
            )
        if isinstance(pool, (str, bytes, Mapping)) or not isinstance(pool, Sequence) or not pool:
            raise KerasBranchError(
                f"`pool` must be a non-empty list of layers or layer configs. Received: {pool!r}"
            )
        pool_configs = [_serialize(p, f"`pool[{i}]`") for i, p in enumerate(pool)]
        encoder_config = None if encoder is None else _serialize(encoder, "`encoder`")
        stem_config = None if stem is None else _serialize(stem, "`stem`")

        # === Layers ===
        encoders = (
            {t.key: _fresh(encoder_config, f"encoder_{t.key}") for t in task_list}
            if encoder_config is not None
            else None
        )

        def make_pool(prefix: str) -> list[keras.layers.Layer]:
            return [_fresh(c, f"{prefix}{j}") for j, c in enumerate(pool_configs)]

        if ordering == SINGLE_TASK:
            mixers = {
                t.key: SoftOrdering(
                    make_pool(f"pool_{t.key}_"), num_tasks=1, ordering="parallel",
                    name=f"single_task_{t.key}",
                )
                for t in task_list
            }
        else:
            shared = SoftOrdering(
                make_pool("pool"), num_tasks=len(task_list), ordering=ordering, seed=seed,
                logit_scale=logit_scale, mixing_dropout=mixing_dropout, name="soft_ordering",
            )

        # === Functional Model ===
        inputs = keras.Input(shape=shape, name="inputs")
        x = inputs if stem_config is None else _fresh(stem_config, "stem")(inputs)
        if encoders is not None:
            starts = [encoders[t.key](x) for t in task_list]
        else:
            starts = [x] * len(task_list)
        if ordering == SINGLE_TASK:
            features = [mixers[t.key]([s])[0] for t, s in zip(task_list, starts)]
        else:
            features = shared(starts if encoders is not None else x)
        outputs = {}
        for task, feature in zip(task_list, features):
            if pooling != "none" and len(feature.shape) > 2:
                feature = _pooling_layer(pooling, len(feature.shape) - 2, f"features_{task.key}")(
                    feature
                )
            outputs[task.key] = self.task_output(task, feature)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.tasks = task_list
        # `input_shape` is taken: Keras models report it with the batch axis.
        self.sample_shape = shape
        self.pool_configs = pool_configs
        self.encoder_config = encoder_config
        self.stem_config = stem_config
        self.logit_scale = float(logit_scale)
        self.mixing_dropout = float(mixing_dropout)
        self.ordering = ordering
        self.pooling = pooling
        self.seed = int(seed)
        self.route_training = route_training
        # The routing of the batch being traced. Thread-local: a
        # MirroredStrategy traces its replicas' steps in parallel threads.
        self._route = threading.local()

    @property
    def depth(self) -> int:
        return len(self.pool_configs)

    def shared_params(self) -> int:
        """Parameters of the pool layer(s) and mixing logits (not encoders or heads)."""
        return sum(
            layer.count_params() for layer in self.layers if isinstance(layer, SoftOrdering)
        )

    def mixing_weights(self) -> dict[str, np.ndarray]:
        """Task name -> scales [D, D] (depth, pool layer); each row sums to 1."""
        if self.ordering == SINGLE_TASK:
            eye = np.eye(self.depth, dtype="float32")
            return {t.name: eye.copy() for t in self.tasks}
        layer = self.get_layer("soft_ordering")
        weights = layer.mixing_weights()
        return {t.name: weights[i] for i, t in enumerate(self.tasks)}

    # === Routed training: each sample through its own task's path ===

    def routing(self, y: Mapping[str, Any]) -> Any:
        """[batch, T] 0/1: which tasks label each sample of a `(x, y)` batch."""
        return keras.ops.stack(
            [label_mask(y[t.key], t.kind) for t in self.tasks], axis=1
        )

    def routed_call(self, x: Any, routing: Any, training: bool | None = None) -> dict[str, Any]:
        """The outputs where sample i runs the path of the task `routing[i]` names.

        Every head reads every sample (heads are cheap), so output t is
        exact for the samples of task t and meaningless for the others,
        whose labels are missing. Needs a soft, parallel or permuted model.
        """
        if self.ordering == SINGLE_TASK:
            raise KerasBranchError("routed_call needs a shared pool; single_task has none.")
        if self.stem_config is not None:
            x = self.get_layer("stem")(x, training=training)
        if self.encoder_config is not None:
            starts = [self.get_layer(f"encoder_{t.key}")(x, training=training) for t in self.tasks]
        else:
            starts = x
        feature = self.get_layer("soft_ordering")(starts, training=training, routing=routing)
        outputs = {}
        for task in self.tasks:
            out = feature
            if self.pooling != "none" and len(out.shape) > 2:
                out = self.get_layer(f"features_{task.key}")(out)
            out = self.get_layer(f"head_{task.key}")(out, training=training)
            outputs[task.key] = self.get_layer(task.key)(out)
        return outputs

    def call(self, inputs, training=None, mask=None):
        routing = getattr(self._route, "value", None)
        if routing is None:
            return super().call(inputs, training=training, mask=mask)

        def routed():
            return self.routed_call(inputs, routing, training)

        def full():
            return super(SoftOrderingModel, self).call(inputs, training=training, mask=mask)

        # Exact only where no sample needs two paths.
        one_each = keras.ops.all(keras.ops.sum(routing, axis=1) <= 1.0)
        return keras.ops.cond(one_each, routed, full)

    def _step(self, step, data):
        if not self.route_training or self.ordering == SINGLE_TASK:
            return step(data)
        _, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(y, Mapping):
            return step(data)
        self._route.value = self.routing(y)
        try:
            return step(data)
        finally:
            self._route.value = None

    def train_step(self, data):
        return self._step(super().train_step, data)

    def test_step(self, data):
        return self._step(super().test_step, data)

    def model_config(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.sample_shape),
            "pool": copy.deepcopy(self.pool_configs),
            "encoder": copy.deepcopy(self.encoder_config),
            "stem": copy.deepcopy(self.stem_config),
            "logit_scale": self.logit_scale,
            "mixing_dropout": self.mixing_dropout,
            "ordering": self.ordering,
            "pooling": self.pooling,
            "seed": self.seed,
            "route_training": self.route_training,
        }


def _pooling_layer(pooling: str, spatial_rank: int, name: str) -> keras.layers.Layer:
    if pooling == "flatten":
        return keras.layers.Flatten(name=name)
    table = {
        1: (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalMaxPooling1D),
        2: (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D),
        3: (keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling3D),
    }
    if spatial_rank not in table:
        return keras.layers.Flatten(name=name)
    avg, mx = table[spatial_rank]
    return (avg if pooling == "avg" else mx)(name=name)


def default_depth(input_shape: Sequence[int]) -> int:
    """D when none is given: 3 conv blocks for images, 4 layers for vectors.

    Images get one more block as the shared stem, so a path has four
    blocks, like convnet4.
    """
    return 3 if len(tuple(input_shape)) == 3 else 4


def default_parts(
    input_shape: Sequence[int],
    depth: int | None = None,
    width: int | None = None,
    ordering: str = "soft",
    task_scales: int = 0,
) -> dict[str, Any]:
    """The encoder, pool and pooling used when none are given.

    Vectors (rank 1): a per-task encoder `Dense(width, relu)` and a pool
    of `depth` x `Dense(width, relu)` (He initialisation, made for ReLU
    layers: averaging D layers at every depth shrank the signal with
    Glorot's), width 64 by default. Images (rank 3): convnet4 cut in two.
    A shared stem `ConvBlock` (1 channel -> width filters, half the
    resolution) and a pool of `depth` (default 3) `ConvBlock`s of `width`
    filters, each able to serve at every depth with its own batch
    normalisation per depth; every depth halves the resolution again, and
    the decoders flatten the last features into the heads, as the convnet4
    trees do. Width 64 by default, convnet4's. Under parallel ordering a
    block serves one depth, so it keeps one normalisation: the model is
    then convnet4 itself, parameter for parameter. `task_scales=T` gives
    every pool block a scale and shift per task (and depth) after its
    normalisation (`ConvBlock(tasks=T)`).

    Returns:
        `{"encoder": layer or None, "stem": layer or None, "pool": [layers],
        "pooling": str}`.
    """
    rank = len(tuple(input_shape))
    depth = default_depth(input_shape) if depth is None else depth
    check_int(depth, "depth", minimum=1, error=KerasBranchError)
    if width is not None:
        check_int(width, "width", minimum=1, error=KerasBranchError)
    if rank == 1:
        width = width or 64
        return {
            "encoder": keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal"),
            "stem": None,
            "pool": [
                keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal")
                for _ in range(depth)
            ],
            "pooling": "none",
        }
    if rank == 3:
        width = width or 64
        smallest = min(int(s) for s in tuple(input_shape)[:2])
        if smallest < 2 ** (depth + 1):
            raise KerasBranchError(
                f"The default image parts halve the resolution {depth + 1} times (stem and "
                f"depth={depth} pool blocks); an input of shape {tuple(input_shape)} is too "
                f"small for that. Use depth <= {max(0, smallest.bit_length() - 2)} or larger "
                f"images."
            )
        return {
            "encoder": None,
            "stem": ConvBlock(width, name="stem"),
            "pool": [
                ConvBlock(
                    width, depths=1 if normalize_ordering(ordering) == "parallel" else depth,
                    tasks=task_scales,
                )
                for _ in range(depth)
            ],
            "pooling": "flatten",
        }
    raise KerasBranchError(
        f"No default soft-ordering parts for inputs of rank {rank} (shape "
        f"{tuple(input_shape)}); pass `pool` and `encoder`."
    )


def build_soft_ordering_model(
    tasks: Sequence[Task | Mapping[str, Any]],
    input_shape: Sequence[int],
    ordering: str = "soft",
    depth: int | None = None,
    width: int | None = None,
    pool: Sequence[keras.layers.Layer | Mapping[str, Any]] | None = None,
    encoder: keras.layers.Layer | Mapping[str, Any] | None = None,
    pooling: str | None = None,
    seed: int = 0,
    name: str = "soft_ordering_model",
    stem: keras.layers.Layer | Mapping[str, Any] | None = None,
    logit_scale: float = 1.0,
    task_scales: bool = False,
    mixing_dropout: float = 0.0,
) -> SoftOrderingModel:
    """A soft-ordering (or ablation) model with default parts for vectors and images.

    Args:
        tasks: the tasks.
        input_shape: shape of one input sample.
        ordering: `"soft"`, `"parallel"`, `"permuted"`, `"single_task"`
            (`"soft-ordering"` and `"single-task"` are accepted too).
        depth: D, the number of pool layers (when `pool` is None; default
            3 for images, 4 for vectors).
        width: units or filters of the default parts.
        pool: explicit pool layers (override `depth`/`width`; the default
            stem and encoder are then not used).
        encoder: explicit per-task encoder template.
        pooling: how decoders read features (default by input rank).
        seed: seed of the permuted orders.
        name: model name.
        stem: explicit shared layer before the encoders and the pool.
        logit_scale: multiplier of the mixing logits (their effective
            learning rate under Adam; see `SoftOrdering`).
        task_scales: the default image pool's blocks get a scale and shift
            per task and depth after their normalisation (`ConvBlock(tasks=T)`).
        mixing_dropout: drop-path on the soft mixture in training (see
            `SoftOrdering`; ignored by the fixed orderings).

    Returns:
        A `SoftOrderingModel`, not compiled.

    Example:
    >>> tasks = [Task("Greek", "multiclass", classes=24), Task("Latin", "multiclass", classes=26)]
    >>> model = build_soft_ordering_model(tasks, (28, 28, 1), "soft")
    >>> sorted(model.output_names)
    ['Greek', 'Latin']
    """
    num_tasks = len(tasks) if task_scales else 0
    parts = default_parts(input_shape, depth, width, ordering, num_tasks) if pool is None else {}
    return SoftOrderingModel(
        tasks,
        input_shape,
        pool=pool if pool is not None else parts["pool"],
        encoder=encoder if encoder is not None else parts.get("encoder"),
        stem=stem if stem is not None else parts.get("stem"),
        ordering=ordering,
        pooling=pooling or parts.get("pooling", "flatten"),
        seed=seed,
        name=name,
        logit_scale=logit_scale,
        mixing_dropout=mixing_dropout if normalize_ordering(ordering) == "soft" else 0.0,
    )


def fit_soft_ordering(
    data: MultiTaskData,
    ordering: str = "soft",
    depth: int | None = None,
    width: int | None = None,
    seed: int = 0,
    strategy: str | Any = None,
    mixed_precision: str | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Builds a soft-ordering model for `data` from a seeded initialisation and trains it.

    The counterpart of `keras_branch.training.fit_spec` for
    `keras-branch train --model soft-ordering|parallel|permuted|single-task`;
    both train through `keras_branch.training.fit_model`.

    Args:
        data: multi-task data (vectors or images).
        ordering: `"soft"`, `"parallel"`, `"permuted"` or `"single_task"`.
        depth: D, the number of shared layers (default 3 for images, after
            each task's encoder block; 4 for vectors).
        width: units or filters (default 64).
        seed: seed of initialisation, permuted orders and shuffling.
        strategy, mixed_precision: as in `fit_model` (one machine).
        **kwargs: the recipe and run options of `keras_branch.training.train`
            (`epochs`, `batch_size`, `learning_rate`, `schedule`,
            `weight_decay`, `warmup_epochs`, `augment`, `verbose`,
            `callbacks`, `checkpoint_dir`, `log`, `tensorboard`).

    Returns:
        `TrainResult` (model, history, `{split: {task: metrics}}`).

    Example (small: 256 training samples, one epoch):
    >>> data = planted_groups(num_train=256, num_validation=64, num_test=64)
    >>> run = fit_soft_ordering(data, "soft", epochs=1, verbose=0)
    >>> print(format_mixing_weights(run.model))
    task g0_t0 (rows: depth 1..4, columns: pool layer 1..4)
      depth 1 ...
    """
    return fit_model(
        lambda: build_soft_ordering_model(data.tasks, data.input_shape, ordering=ordering,
                                          depth=depth, width=width, seed=seed),
        data, seed=seed, strategy=strategy, mixed_precision=mixed_precision, **kwargs,
    )


# === Showing the mixing weights ===


def mixing_weights(model: SoftOrderingModel) -> dict[str, np.ndarray]:
    """Task name -> mixing scales [D, D] (rows: depths, columns: pool layers)."""
    if not isinstance(model, SoftOrderingModel):
        raise KerasBranchError(
            f"Mixing weights need a SoftOrderingModel. Received: {type(model).__name__}"
        )
    return model.mixing_weights()


def format_mixing_weights(model: SoftOrderingModel, digits: int = 2) -> str:
    """The mixing scales as text: per task, one row per depth, one column per pool layer.

    Example output::

        task Korean (rows: depth 1..4, columns: pool layer 1..4)
          depth 1  0.61 0.13 0.13 0.13
    """
    weights = mixing_weights(model)
    lines = []
    for name, table in weights.items():
        depth, size = table.shape
        lines.append(f"task {name} (rows: depth 1..{depth}, columns: pool layer 1..{size})")
        for d, row in enumerate(table):
            lines.append(f"  depth {d + 1}  " + " ".join(f"{v:.{digits}f}" for v in row))
    return "\n".join(lines)
