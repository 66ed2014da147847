"""`SoftOrdering`: one pool of shared layers, mixed per task and per depth.

Soft layer ordering shares a pool of D layers F_1..F_D among T tasks
without fixing where each layer sits: at every depth d, task t applies every
pool layer to its previous output and mixes the results with its own
learned scales, `y_t^d = sum_j s[t, d, j] * F_j(y_t^(d-1))`, with
`s[t, d, :] = softmax(logits[t, d, :])`. The fixed orderings the paper
compares against are options of the same layer.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_branch.checks import check_choice, check_int
from keras_branch.layers.branch_point import _positive_float

SOFT = "soft"
PARALLEL = "parallel"
PERMUTED = "permuted"
ORDERINGS = (SOFT, PARALLEL, PERMUTED)


def _as_layer(entry: Any, index: int) -> keras.layers.Layer:
    if isinstance(entry, keras.layers.Layer):
        return entry
    if isinstance(entry, Mapping):
        try:
            layer = keras.saving.deserialize_keras_object(copy.deepcopy(dict(entry)))
        except Exception as err:  # Keras raises many types for a bad config
            raise ValueError(
                f"`pool[{index}]` is not a valid serialized Keras layer: {err}"
            ) from None
        if isinstance(layer, keras.layers.Layer):
            return layer
    raise ValueError(
        f"`pool[{index}]` must be a Keras layer or a serialized layer config. "
        f"Received: {entry!r}"
    )


def task_orders(ordering: str, num_tasks: int, depth: int, seed: int) -> np.ndarray | None:
    """The fixed pool-layer order of every task, int [T, D], or None for soft.

    `parallel`: every task applies F_1, ..., F_D in that order (ordinary
    hard sharing). `permuted`: task t applies the pool in its own random
    order, drawn from `numpy.random.default_rng(seed)` task after task.

    Example:
    >>> task_orders("parallel", 2, 3, seed=0).tolist()
    [[0, 1, 2], [0, 1, 2]]
    """
    if ordering == PARALLEL:
        return np.tile(np.arange(depth), (num_tasks, 1))
    if ordering == PERMUTED:
        rng = np.random.default_rng(seed)
        return np.stack([rng.permutation(depth) for _ in range(num_tasks)])
    return None


@keras.saving.register_keras_serializable(package="keras_branch")
class SoftOrdering(keras.layers.Layer):
    """A shared pool of D layers applied at D depths, mixed per task.

    With `ordering="soft"` the layer holds logits [T, D, D] (task, depth,
    pool layer), initialised to zero (a uniform mixture), and computes for
    every task t and depth d = 1..D

        y_t^d = sum_j softmax(logits[t, d])[j] * F_j(y_t^(d-1)),

    starting from the task's input `y_t^0`. The ablations of the paper use
    no logits: `"parallel"` applies F_1..F_D in order for every task
    (ordinary hard sharing) and `"permuted"` applies them in a fixed random
    order per task (seeded). The pool layers used at one depth must agree on
    the output shape (they may change it: a conv block with max-pooling
    halves the resolution at every depth); each brings its own nonlinearity
    (e.g. `Dense(64, activation="relu")`). A layer whose `call` takes a
    `depth` argument (`ConvBlock`) is told the depth (0-based) of each call,
    and one whose `call` takes a `routing` argument is told each sample's
    task (one-hot rows [batch, T]; `ConvBlock(tasks=T)` scales and shifts
    its features per task).

    At one depth every pool layer is called once on the tasks' inputs
    stacked along the batch axis, which changes nothing for layers that
    treat samples independently; a layer with batch statistics
    (`BatchNormalization` in training) sees all tasks' samples together.

    Args:
        pool: the D shared layers: Keras layers or serialized layer configs.
            They are built in `build()` on the input shape.
        num_tasks: T, the number of tasks (>= 1).
        ordering: `"soft"`, `"parallel"` or `"permuted"`.
        seed: seed of the `"permuted"` orders.
        logit_scale: the mixing logits are `logit_scale * layer.logits`
            (> 0). With Adam, whose steps do not depend on the gradient's
            scale, this multiplies the logits' effective learning rate while
            the pool keeps the model's.
        mixing_dropout: soft ordering only, in training: each sample drops
            each pool layer's term at each depth with this probability
            (in [0, 1); at least one term is kept) and renormalises the
            kept scales to sum 1 (FractalNet's local drop-path applied to
            the mixture). 0 (default): the paper's deterministic mixture.
            Inference always uses the full mixture.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list of T tensors of one shape (one per task, e.g. the
            outputs of task encoders), or one tensor that every task starts
            from.
        training: passed to the pool layers.

    Returns:
        A list of T tensors of the input shape, one per task.

    Example:
    >>> pool = [keras.layers.Dense(16, activation="relu") for _ in range(3)]
    >>> x = [keras.Input((16,)), keras.Input((16,))]
    >>> ys = SoftOrdering(pool, num_tasks=2)(x)
    >>> len(ys), tuple(ys[0].shape)
    (2, (None, 16))

    Reference:
        Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask
        Learning through Soft Layer Ordering", ICLR 2018, arXiv:1711.00108.
    """

    def __init__(
        self,
        pool: Sequence[keras.layers.Layer | Mapping[str, Any]],
        num_tasks: int,
        ordering: str = SOFT,
        seed: int = 0,
        logit_scale: float = 1.0,
        mixing_dropout: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(pool, (str, bytes, Mapping, keras.layers.Layer)) or not isinstance(
            pool, Sequence
        ) or not pool:
            raise ValueError(
                f"`pool` must be a non-empty list of layers (or layer configs). "
                f"Received: pool={pool!r}"
            )
        check_int(num_tasks, "num_tasks", minimum=1)
        check_choice(ordering, "ordering", ORDERINGS)
        check_int(seed, "seed")
        layers = [_as_layer(entry, i) for i, entry in enumerate(pool)]
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError(
                "`pool` holds the same layer object more than once; give D distinct layers."
            )
        self.pool = layers
        self.num_tasks = int(num_tasks)
        self.ordering = ordering
        self.seed = int(seed)
        self.logit_scale = _positive_float(logit_scale, "logit_scale")
        if (
            isinstance(mixing_dropout, bool)
            or not isinstance(mixing_dropout, (int, float))
            or not 0.0 <= float(mixing_dropout) < 1.0
        ):
            raise ValueError(
                f"`mixing_dropout` must be a float in [0, 1). Received: "
                f"mixing_dropout={mixing_dropout!r}"
            )
        self.mixing_dropout = float(mixing_dropout)
        self.seed_generator = (
            keras.random.SeedGenerator(self.seed) if self.mixing_dropout > 0 else None
        )
        self.depth = len(layers)
        # Layers such as `ConvBlock` keep per-depth state (normalisation).
        self._takes_depth = [
            "depth" in inspect.signature(layer.call).parameters for layer in layers
        ]
        # ... and per-task state (`ConvBlock(tasks=T)`): told each sample's task.
        self._takes_routing = [
            "routing" in inspect.signature(layer.call).parameters for layer in layers
        ]
        self.orders = task_orders(ordering, self.num_tasks, self.depth, self.seed)

    def _task_shapes(self, input_shape) -> tuple[list[tuple], bool]:
        """Per-task input shapes, and whether one tensor feeds every task."""
        if isinstance(input_shape, (list, tuple)) and input_shape and all(
            isinstance(s, (list, tuple)) for s in input_shape
        ):
            shapes = [tuple(s) for s in input_shape]
            if len(shapes) != self.num_tasks:
                raise ValueError(
                    f"SoftOrdering {self.name!r} was built for num_tasks={self.num_tasks} "
                    f"but received {len(shapes)} task input(s)."
                )
            return shapes, False
        return [tuple(input_shape)] * self.num_tasks, True

    def _layers_at(self, d: int) -> list[int]:
        """The pool layers some task applies at depth d (every one for soft)."""
        if self.ordering == SOFT:
            return list(range(self.depth))
        return sorted({int(j) for j in self.orders[:, d]})

    def depth_shapes(self, shape: tuple) -> list[tuple]:
        """The feature shape before depth 1, after depth 1, ..., after depth D.

        Raises a `ValueError` naming the layers and shapes when the pool
        layers used at one depth disagree on the output shape.
        """
        shapes = [shape]
        for d in range(self.depth):
            outs = {
                j: tuple(self.pool[j].compute_output_spec(keras.KerasTensor(shapes[-1])).shape)
                for j in self._layers_at(d)
            }
            if len({out[1:] for out in outs.values()}) > 1:
                listed = ", ".join(
                    f"pool layer {j} ({self.pool[j].name!r}) -> {out}" for j, out in outs.items()
                )
                raise ValueError(
                    f"SoftOrdering {self.name!r}: the pool layers used at depth {d + 1} must "
                    f"agree on the output shape, because their outputs are mixed. On input "
                    f"{shapes[-1]}: {listed}."
                )
            shapes.append((None, *next(iter(outs.values()))[1:]))
        return shapes

    def build(self, input_shape):
        shapes, _ = self._task_shapes(input_shape)
        first = shapes[0]
        for t, shape in enumerate(shapes[1:], start=1):
            if len(shape) != len(first) or any(
                a is not None and b is not None and a != b for a, b in zip(first[1:], shape[1:])
            ):
                raise ValueError(
                    f"SoftOrdering {self.name!r}: all task inputs must have one shape. "
                    f"Received: task 0 input {first}, task {t} input {shape}."
                )
        shape = (None, *first[1:])
        # A layer applied at several depths sees several resolutions (a conv
        # block with pooling halves it per depth): build it on the channels
        # only, so its weights do not depend on where it is used.
        generic = shape if len(shape) <= 2 else (None, *([None] * (len(shape) - 2)), shape[-1])
        for layer in self.pool:
            if not layer.built:
                layer.build(generic)
        self._shapes = self.depth_shapes(shape)
        if self.ordering == SOFT:
            self.logits = self.add_weight(
                name="logits",
                shape=(self.num_tasks, self.depth, self.depth),
                initializer="zeros",  # a uniform mixture at the start, as in the paper
                trainable=True,
                dtype=self.variable_dtype,
            )

    def mixing_weights(self) -> np.ndarray:
        """The scales s [T, D, D] (task, depth, pool layer); rows sum to 1.

        Soft ordering: `softmax(logits)`. Fixed orderings: one-hot rows.
        """
        if self.ordering == SOFT:
            return keras.ops.convert_to_numpy(
                ops.softmax(ops.cast(self.logits, "float32") * self.logit_scale, axis=-1)
            )
        return np.eye(self.depth, dtype="float32")[self.orders]

    def _call(self, j: int, x, training, d: int, routing=None):
        """Pool layer j at depth d (0-based); told the depth (and each sample's
        task) when its call takes them."""
        kwargs = {}
        if self._takes_depth[j]:
            kwargs["depth"] = d
        if self._takes_routing[j]:
            kwargs["routing"] = routing
        return self.pool[j](x, training=training, **kwargs)

    def _apply(self, j: int, tensors: list, training, d: int, tasks: list[int]) -> list:
        """`layer` on each tensor; one call on the concatenation of the distinct ones.

        Tasks that hold the very same tensor (one input fed to every task,
        or parallel ordering, where all tasks compute the same path) share
        one computation, unless the layer has per-task state: it then gets
        every task's tensor and routing rows naming `tasks` (the task of
        each tensor).
        """
        if self._takes_routing[j]:
            eye = np.eye(self.num_tasks, dtype="float32")
            routing = ops.concatenate(
                [
                    ops.ones_like(ops.reshape(x, (ops.shape(x)[0], -1))[:, :1])
                    * ops.convert_to_tensor(eye[t][None], dtype=x.dtype)
                    for x, t in zip(tensors, tasks)
                ],
                axis=0,
            )
            out = self._call(j, ops.concatenate(tensors, axis=0), training, d, routing)
            return ops.split(out, len(tensors), axis=0) if len(tensors) > 1 else [out]
        distinct: dict[int, int] = {}
        for tensor in tensors:
            distinct.setdefault(id(tensor), len(distinct))
        unique = list({id(t): t for t in tensors}.values())
        if len(unique) == 1:
            outs = [self._call(j, unique[0], training, d)]
        else:
            outs = ops.split(
                self._call(j, ops.concatenate(unique, axis=0), training, d), len(unique), axis=0
            )
        return [outs[distinct[id(tensor)]] for tensor in tensors]

    def _scales(self):
        """s [T, D, D] as a tensor of the compute dtype (one-hot rows for fixed orders)."""
        if self.ordering == SOFT:
            return ops.cast(
                ops.softmax(ops.cast(self.logits, "float32") * self.logit_scale, axis=-1),
                self.compute_dtype,
            )
        return ops.convert_to_tensor(
            np.eye(self.depth)[self.orders], dtype=self.compute_dtype
        )

    def _dropped(self, scales):
        """Per-sample scales [batch, D, D] with terms dropped and the rest renormalised."""
        keep = ops.cast(
            keras.random.uniform(ops.shape(scales), seed=self.seed_generator)
            >= self.mixing_dropout,
            scales.dtype,
        )
        # A row with every term dropped keeps them all.
        keep = ops.where(ops.sum(keep, axis=-1, keepdims=True) > 0, keep, ops.ones_like(keep))
        kept = scales * keep
        return kept / ops.maximum(ops.sum(kept, axis=-1, keepdims=True), 1e-12)

    def _drops(self, training) -> bool:
        return self.ordering == SOFT and self.mixing_dropout > 0 and bool(training)

    def call(self, inputs, training=None, routing=None):
        if routing is not None:
            return self._routed(inputs, routing, training)
        ys = [inputs] * self.num_tasks if not isinstance(inputs, (list, tuple)) else list(inputs)
        if self.ordering == SOFT:
            scales = self._scales()
            rank = len(ys[0].shape)
            if self._drops(training):
                # Per task and sample: [batch, D, D] each.
                batch = ops.shape(ys[0])[0]
                per_sample = [
                    self._dropped(
                        ops.broadcast_to(scales[t][None], (batch, self.depth, self.depth))
                    )
                    for t in range(self.num_tasks)
                ]

                def scale(t, d, j):
                    return ops.reshape(per_sample[t][:, d, j], (-1,) + (1,) * (rank - 1))
            else:

                def scale(t, d, j):
                    return scales[t, d, j]

            for d in range(self.depth):
                everyone = list(range(self.num_tasks))
                outs = [self._apply(j, ys, training, d, everyone) for j in range(self.depth)]
                ys = [
                    sum(scale(t, d, j) * outs[j][t] for j in range(self.depth))
                    for t in range(self.num_tasks)
                ]
            return ys
        for d in range(self.depth):
            new = list(ys)
            for j in range(self.depth):
                users = [t for t in range(self.num_tasks) if self.orders[t, d] == j]
                if users:
                    outs = self._apply(j, [ys[t] for t in users], training, d, users)
                    for t, out in zip(users, outs):
                        new[t] = out
            ys = new
        return ys

    def _routed(self, inputs, routing, training):
        """Every sample through its own task's path only: one tensor [batch, ...].

        `routing` [batch, T] holds one-hot rows (a row of zeros is allowed:
        that sample's output is then zero). Sample i starts from
        `sum_t r[i, t] * inputs[t][i]` and mixes with `sum_t r[i, t] * s[t]`,
        so where each sample matters to one task only (Omniglot: one
        alphabet per image, the other tasks' labels missing), its outputs
        are those of the full call at 1/T of the cost. Pool layers must
        treat samples independently (no batch statistics) for the two to
        agree.
        """
        routing = ops.cast(routing, self.compute_dtype)
        if isinstance(inputs, (list, tuple)):
            rank = len(inputs[0].shape)
            y = sum(
                ops.reshape(routing[:, t], (-1,) + (1,) * (rank - 1)) * inputs[t]
                for t in range(self.num_tasks)
            )
        else:
            y = inputs
        rank = len(y.shape)
        # Per-sample scales [batch, D, D]: the sample's task's row of s.
        scales = ops.einsum("bt,tdj->bdj", routing, self._scales())
        if self._drops(training):
            scales = self._dropped(scales)
        for d in range(self.depth):
            used = self._layers_at(d)
            outs = [self._call(j, y, training, d, routing) for j in used]
            if len(used) == 1:
                y = outs[0]
                continue
            y = sum(
                ops.reshape(scales[:, d, j], (-1,) + (1,) * (rank - 1)) * out
                for j, out in zip(used, outs)
            )
        return y

    def compute_output_shape(self, input_shape):
        shapes, _ = self._task_shapes(input_shape)
        return [(s[0], *self.depth_shapes((None, *s[1:]))[-1][1:]) for s in shapes]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "pool": [keras.saving.serialize_keras_object(layer) for layer in self.pool],
                "num_tasks": self.num_tasks,
                "ordering": self.ordering,
                "seed": self.seed,
                "logit_scale": self.logit_scale,
                "mixing_dropout": self.mixing_dropout,
            }
        )
        return config
