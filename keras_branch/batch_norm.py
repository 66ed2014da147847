"""Recomputing batch-norm statistics after training ("precise BN").

A `BatchNormalization` layer normalises with moving averages at inference,
updated during training with `momentum` (0.9 in convnet4: about the last
ten batches) on *augmented* batches of weights that were still changing.
`recalibrate_batch_norm` replaces them with the statistics of one pass over
clean data with the final weights: the mean over batches of each batch's
mean and variance.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_branch.checks import check_int
from keras_branch.data.multitask import MultiTaskData


def nested_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`layer` and every layer inside it (models, Sequential blocks, layers
    holding sublayers as attributes or lists), each once."""
    found: dict[int, keras.layers.Layer] = {}

    def walk(obj, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, seen)
            return
        if isinstance(obj, dict):
            for item in obj.values():
                walk(item, seen)
            return
        if not isinstance(obj, keras.layers.Layer):
            return
        found[id(obj)] = obj
        if isinstance(obj, keras.layers.BatchNormalization):
            return
        children = list(getattr(obj, "layers", []) or [])
        children += [v for v in vars(obj).values()
                     if isinstance(v, (keras.layers.Layer, list, tuple, dict))]
        for child in children:
            walk(child, seen)

    walk(layer, set())
    return list(found.values())


def batch_norm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every `BatchNormalization` inside `layer` (models, Sequential blocks,
    layers holding sublayers as attributes or lists), each once."""
    return [x for x in nested_layers(layer) if isinstance(x, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(
    model: keras.Model,
    data: MultiTaskData,
    split: str = "train",
    batch_size: int = 128,
    shuffle_seed: int | None = None,
) -> int:
    """Sets every batch norm's moving statistics to those of `split` under the final weights.

    One pass over the split, unaugmented, in batches: each layer's moving
    mean (variance) becomes the average of its batch means (variances).
    A `SoftOrderingModel` that routes training runs each sample through
    its own task's path, as in training. Stochastic mixing
    (`SoftOrdering(mixing_dropout=...)`) is off during the pass: the
    statistics are those of the full mixture that inference computes. The
    weights do not change.

    Args:
        model: a trained model (its `.tasks` name the data's tasks).
        data: the data.
        split: the split whose statistics to use.
        batch_size: samples per batch (>= 2: a batch variance needs two).
        shuffle_seed: None: batches in the split's order. An int: in an
            order shuffled with `numpy.random.default_rng(shuffle_seed)`.
            Training normalises over shuffled batches; a split stored task
            after task (Omniglot: alphabet after alphabet) gives batches of
            one task, whose variances miss the spread between tasks, so
            shuffle such splits to measure what training normalised with.

    Returns:
        The number of batch-norm layers recalibrated.

    Example (an untrained convnet4 on random images; in practice `model` is
    a trained `run.model`):
    >>> from keras_branch.data import MultiTaskData, Split
    >>> tasks = [Task("a", "multiclass", classes=3)]
    >>> x = np.random.default_rng(0).random((64, 16, 16, 1)).astype("float32")
    >>> data = MultiTaskData(tasks, {"train": Split(x, {"a": np.zeros(64, "int64")})})
    >>> model = build_model(TreeSpec.shared(["a"], num_stages=4),
    ...                     backbones.convnet4((16, 16, 1), filters=4), tasks)
    >>> recalibrate_batch_norm(model, data)   # convnet4: one batch norm per block
    4
    """
    check_int(batch_size, "batch_size", minimum=2)
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    x, y = data.arrays(split)
    if shuffle_seed is not None:
        check_int(shuffle_seed, "shuffle_seed")
        order = np.random.default_rng(shuffle_seed).permutation(len(x))
        x, y = x[order], {k: v[order] for k, v in y.items()}
    routed = getattr(model, "route_training", False) and hasattr(model, "routed_call")
    saved = [layer.momentum for layer in layers]
    # Layers that drop terms in training (SoftOrdering's mixing_dropout):
    # the statistics must be those of the deterministic inference path.
    stochastic = [
        layer for layer in nested_layers(model) if getattr(layer, "mixing_dropout", 0.0) > 0
    ]
    dropouts = [layer.mixing_dropout for layer in stochastic]
    sums = [(np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape))
            for layer in layers]
    batches = 0
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            if len(xb) < 2:
                break
            # momentum 0: each call leaves exactly this batch's statistics behind.
            for layer in layers:
                layer.momentum = 0.0
            for layer in stochastic:
                layer.mixing_dropout = 0.0
            if routed:
                yb = {k: v[start:start + batch_size] for k, v in y.items()}
                model.routed_call(xb, model.routing(yb), training=True)
            else:
                model(xb, training=True)
            for (mean, var), layer in zip(sums, layers):
                mean += keras.ops.convert_to_numpy(layer.moving_mean)
                var += keras.ops.convert_to_numpy(layer.moving_variance)
            batches += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
        for layer, rate in zip(stochastic, dropouts):
            layer.mixing_dropout = rate
    for (mean, var), layer in zip(sums, layers):
        layer.moving_mean.assign((mean / batches).astype(layer.moving_mean.dtype))
        layer.moving_variance.assign((var / batches).astype(layer.moving_variance.dtype))
    return len(layers)
