"""tf.distribute strategies for training keras_branch models.

* `"auto"`: `MirroredStrategy` over the visible GPUs when there are two or
  more, otherwise the default (single-device) strategy.
* `"mirrored"`: `MirroredStrategy` (all GPUs, or the given devices).
* `"multiworker"`: `MultiWorkerMirroredStrategy` from `TF_CONFIG`. Keras
  3.15's `model.fit` is broken under it (keras issues #20585, #20329), so
  keras_branch trains it with its own loop (`keras_branch.custom_loop`), with
  the same losses, masks, metrics, checkpoints and outputs as the fit path.
* `"none"`: the default strategy.

Batch sizes are global. Under a strategy with more than one replica, batch
normalization is synchronized across replicas, so its statistics are those
of the global batch.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_branch.backbones import Backbone, with_dtype_policy
from keras_branch.errors import KerasBranchError

STRATEGIES = ("auto", "mirrored", "multiworker", "none")


class StrategyError(KerasBranchError):
    """A distribution strategy cannot be set up as asked."""


def get_strategy(
    name: str | tf.distribute.Strategy | None = "auto",
    devices: Sequence[str] | None = None,
) -> tf.distribute.Strategy:
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"auto"`, `"mirrored"`, `"multiworker"`, `"none"`, None (the
            default strategy) or a strategy object (returned as is).
        devices: devices for `"mirrored"` (default: all GPUs).

    Returns:
        The strategy.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name is None or name == "none":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise StrategyError(f"--strategy must be one of {list(STRATEGIES)}. Received: {name!r}")
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) >= 2:
            return mirrored_strategy()
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return mirrored_strategy(devices)
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise StrategyError(
            "--strategy multiworker needs the TF_CONFIG environment variable "
            "(cluster worker addresses and this worker's task index)."
        )
    try:
        json.loads(config)
    except ValueError as err:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {err}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def mirrored_strategy(devices: Sequence[str] | None = None) -> tf.distribute.MirroredStrategy:
    """`MirroredStrategy` over `devices` (default: all GPUs).

    On CPU devices the reductions go through one device: with TF's default
    collective all-reduce, synchronized batch norm and the optimizer's
    gradient all-reduce ran out of order across replicas on TF 2.21 ("Shape
    mismatch in the collective instance"), or gave weights 3e-4 off a
    single-device run; through one device they match it to 1e-7.
    """
    devices = list(devices) if devices else None
    names = devices or [d.name for d in tf.config.list_logical_devices("GPU")]
    on_cpu = not names or all("CPU" in d.upper() for d in names)
    ops = tf.distribute.ReductionToOneDevice() if on_cpu else None
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True on the worker that writes files (the only worker outside multi-worker runs)."""
    if strategy is None or not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and
                                             "chief" not in resolver.cluster_spec().as_dict())


def _sync_batch_norm(config: Any) -> Any:
    if isinstance(config, dict):
        result = {k: _sync_batch_norm(v) for k, v in config.items()}
        if result.get("class_name") == "BatchNormalization" and isinstance(result.get("config"), dict):
            result["config"] = dict(result["config"], synchronized=True)
        return result
    if isinstance(config, list):
        return [_sync_batch_norm(v) for v in config]
    return config


def synchronized_batch_norm(backbone: Backbone) -> Backbone:
    """The same backbone with every BatchNormalization synchronized across replicas."""
    config = _sync_batch_norm(copy.deepcopy(backbone.get_config()))
    result = Backbone.from_config(config)
    result.stage_weights = backbone.stage_weights
    result.stem_weights = backbone.stem_weights
    return result


def prepare_backbone(backbone: Backbone, strategy: tf.distribute.Strategy) -> Backbone:
    """The backbone to build under `strategy` (synchronized batch norm with >1 replica)."""
    if strategy.num_replicas_in_sync > 1:
        return synchronized_batch_norm(backbone)
    return backbone


MIXED_POLICIES = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


class dtype_policy:  # noqa: N801 - used as a context manager, like a function
    """Sets Keras' global dtype policy inside a `with` block, then restores it.

    Args:
        precision: None (float32), `"float16"` or `"bfloat16"` (mixed
            precision: compute in that type, variables in float32).
    """

    def __init__(self, precision: str | None):
        if precision is not None and precision not in MIXED_POLICIES:
            raise StrategyError(
                f"--mixed-precision must be one of {list(MIXED_POLICIES)}. Received: {precision!r}"
            )
        self.policy = MIXED_POLICIES.get(precision, "float32") if precision else None

    def __enter__(self):
        self._previous = keras.config.dtype_policy()
        if self.policy:
            keras.config.set_dtype_policy(self.policy)
        return self

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self._previous)
        return False


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 copy of a (mixed precision) task model with the same weights.

    Any keras_branch `TaskModel` (rebuilt from its config with every dtype
    policy set to float32). Export uses it: float16 compute in a converted
    model needs ops LiteRT's builtins lack.
    """
    config = with_dtype_policy(model.get_config(), "float32")
    with dtype_policy(None):
        keras.config.set_dtype_policy("float32")
        clone = type(model).from_config(config)
    clone.set_weights(model.get_weights())
    return clone

