"""Backbones: a stem plus an ordered list of stages that a TreeSpec routes through.

A `Backbone` holds one *template* per stage (a serialized Keras layer). Every
call of `make_stage(d)` builds a new layer from that template, so each block
of a branched model owns fresh weights, or a copy of the template's
pretrained weights when the backbone was cut from a trained model.

Built in:

* `mlp(input_dim, widths)`: one Dense + ReLU layer per stage;
* `convnet4(input_shape)`: the 4-block convnet of Omniglot multi-task work
  (conv 3x3, batch norm, ReLU, 2x2 max-pool per stage);
* `from_keras_model(model, stage_outputs)`: any functional Keras model (a
  `keras.applications` network, or any functional model) cut at named layers;
* `keras_application(name, input_shape, weights=...)`: the common case of
  the above, with known stage boundaries and weights from a local file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.checks import check_choice
from keras_branch.errors import BackboneError
from keras_branch.seeding import seeded_layers

LayerSource = keras.layers.Layer | Callable[[], keras.layers.Layer] | Mapping[str, Any]

POOLINGS = ("flatten", "avg", "max")


def _serialize(source: LayerSource, what: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    layer = source
    if not isinstance(layer, keras.layers.Layer) and callable(layer):
        layer = layer()
    if not isinstance(layer, keras.layers.Layer):
        raise BackboneError(
            f"{what} must be a Keras layer, a function returning one, or a "
            f"serialized layer config. Received: {source!r}"
        )
    return keras.saving.serialize_keras_object(layer)


class Backbone:
    """A stem and an ordered list of stage templates.

    Args:
        input_shape: shape of one input sample, without the batch axis.
        stages: one entry per stage: a Keras layer used as a template (it is
            never called itself), a function returning a fresh layer, or a
            serialized layer config.
        stem: optional layer (same forms) applied once before stage 1 and
            always shared.
        pooling: how a task head reads the last stage's output when it has
            spatial axes: `"flatten"`, `"avg"` or `"max"` (global pooling).
        name: backbone name, used in messages and model cards.
        stage_weights: optional initial weights per stage (lists of arrays,
            as `layer.get_weights()`); every block of that stage starts from
            them. Not part of the config: a saved model carries its weights.
        stem_weights: optional initial weights of the stem.

    Example:
    >>> bb = Backbone((8,), [keras.layers.Dense(4, activation="relu")] * 3)
    >>> bb.num_stages, bb.stage_params(0), bb.stage_params(1)
    (3, 36, 20)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        stages: Sequence[LayerSource],
        stem: LayerSource | None = None,
        pooling: str = "flatten",
        name: str = "backbone",
        stage_weights: Sequence[Sequence[np.ndarray] | None] | None = None,
        stem_weights: Sequence[np.ndarray] | None = None,
    ):
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise BackboneError(
                f"`input_shape` must be a tuple of positive ints. Received: {input_shape!r}"
            ) from None
        if not shape or any(s < 1 for s in shape):
            raise BackboneError(
                f"`input_shape` must be a tuple of positive ints. Received: {input_shape!r}"
            )
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise BackboneError(
                f"`stages` must be a non-empty list of stage layers. Received: {stages!r}"
            )
        check_choice(pooling, "pooling", POOLINGS, error=BackboneError)
        if stage_weights is not None and len(stage_weights) != len(stages):
            raise BackboneError(
                f"`stage_weights` needs one entry per stage ({len(stages)}). "
                f"Received {len(stage_weights)}."
            )
        self.input_shape = shape
        self.name = str(name)
        self.pooling = pooling
        self.stage_configs = [_serialize(s, f"stages[{i}]") for i, s in enumerate(stages)]
        self.stem_config = None if stem is None else _serialize(stem, "stem")
        self.stage_weights = None if stage_weights is None else list(stage_weights)
        self.stem_weights = stem_weights
        self._analysis: dict[str, Any] | None = None

    # === Layer factories ===

    @property
    def num_stages(self) -> int:
        return len(self.stage_configs)

    def make_stage(self, stage: int, name: str | None = None) -> keras.layers.Layer:
        """A new layer for `stage` (0-based), with its own weights."""
        if not 0 <= stage < self.num_stages:
            raise BackboneError(
                f"`stage` must be in [0, {self.num_stages}). Received: stage={stage}"
            )
        weights = self.stage_weights[stage] if self.stage_weights else None
        return self._instantiate(
            self.stage_configs[stage], name, weights, self.stage_input_shape(stage)
            if weights is not None else None
        )

    def make_stem(self, name: str | None = "stem") -> keras.layers.Layer | None:
        if self.stem_config is None:
            return None
        shape = self.input_shape if self.stem_weights is not None else None
        return self._instantiate(self.stem_config, name, self.stem_weights, shape)

    def make_pooling(self, name: str | None = None, depth: int | None = None) -> keras.layers.Layer:
        """The parameter-free layer that turns a stage output into features.

        Args:
            name: layer name.
            depth: the stage (1-based) whose output is pooled; default the last.
        """
        rank = len(self.stage_output_shape(self._stage_of(depth)))
        if rank == 1:
            return keras.layers.Identity(name=name)
        if self.pooling == "flatten":
            return keras.layers.Flatten(name=name)
        if rank == 3:
            pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
        elif rank == 2:
            pool = {"avg": keras.layers.GlobalAveragePooling1D, "max": keras.layers.GlobalMaxPooling1D}
        else:
            pool = {"avg": keras.layers.GlobalAveragePooling3D, "max": keras.layers.GlobalMaxPooling3D}
        return pool[self.pooling](name=name)

    @staticmethod
    def _instantiate(config, name, weights, build_shape) -> keras.layers.Layer:
        config = copy.deepcopy(config)
        policy = keras.config.dtype_policy().name
        if policy != "float32":
            # Templates carry the policy they were serialized under; a block
            # built under mixed precision takes the policy in force.
            config = with_dtype_policy(config, policy)
        if name is not None:
            config.setdefault("config", {})["name"] = name
        layer = keras.saving.deserialize_keras_object(config)
        if weights is not None:
            if not layer.built:
                layer.build((None, *build_shape))
            layer.set_weights(weights)
        return layer

    # === Shapes and parameter counts ===

    def _analyze(self) -> dict[str, Any]:
        # Builds one throwaway copy of every part on symbolic inputs, under
        # its own seed: whether the analysis ran before must not change the
        # weights a seeded build gets, nor the caller's random state.
        if self._analysis is None:
            with seeded_layers(0):
                return self._analyze_once()
        return self._analysis

    def _analyze_once(self) -> dict[str, Any]:
        if self._analysis is None:
            try:
                x = keras.Input(self.input_shape)
                stem = self.make_stem(name=None)
                stem_params = 0
                if stem is not None:
                    x = stem(x)
                    stem_params = stem.count_params()
                shapes, params, outputs, norms = [], [], [], []
                for d, config in enumerate(self.stage_configs):
                    shapes.append(tuple(x.shape[1:]))
                    layer = self._instantiate(config, None, None, None)
                    x = layer(x)
                    params.append(layer.count_params())
                    outputs.append(x)
                    positions = norm_positions(layer)
                    norms.append((positions, sum(layer.layers[i].count_params() for i in positions)))
                self._analysis = {
                    "stem_params": stem_params,
                    "stage_input_shapes": shapes,
                    "stage_output_shapes": [tuple(o.shape[1:]) for o in outputs],
                    "stage_params": params,
                    "stage_norms": norms,
                    "output_shape": tuple(x.shape[1:]),
                }
                self._analysis["feature_sizes"] = [
                    int(self.make_pooling(depth=d + 1)(o).shape[-1]) for d, o in enumerate(outputs)
                ]
            except BackboneError:
                raise
            except Exception as err:  # a user's layers that do not chain
                self._analysis = None
                raise BackboneError(
                    f"Backbone {self.name!r}: its stages do not chain on input "
                    f"shape {self.input_shape}: {err}"
                ) from err
        return self._analysis

    def stem_params(self) -> int:
        return self._analyze()["stem_params"]

    def stage_params(self, stage: int) -> int:
        """Parameters of one block of `stage` (0-based)."""
        return self._analyze()["stage_params"][stage]

    def stage_norm_positions(self, stage: int) -> list[int]:
        """Where a block of `stage` holds its batch norms: positions in its
        `layers` (a `keras.Sequential` stage; [] for any other layer)."""
        return list(self._analyze()["stage_norms"][stage][0])

    def stage_norm_params(self, stage: int) -> int:
        """Parameters of the batch norms of one block of `stage` (what a task owning them adds)."""
        return self._analyze()["stage_norms"][stage][1]

    def stage_input_shape(self, stage: int) -> tuple[int, ...]:
        return self._analyze()["stage_input_shapes"][stage]

    def stage_output_shape(self, stage: int) -> tuple[int, ...]:
        """Output shape (no batch axis) of `stage` (0-based)."""
        return self._analyze()["stage_output_shapes"][stage]

    def output_shape(self) -> tuple[int, ...]:
        return self._analyze()["output_shape"]

    def feature_size(self, depth: int | None = None) -> int:
        """Width of what a task head receives (after pooling).

        Args:
            depth: the number of stages the task uses; default all.
        """
        return self._analyze()["feature_sizes"][self._stage_of(depth)]

    def _stage_of(self, depth: int | None) -> int:
        if depth is None:
            return self.num_stages - 1
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.num_stages:
            raise BackboneError(
                f"`depth` must be an integer from 1 to {self.num_stages}. Received: depth={depth!r}"
            )
        return depth - 1

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "stem": self.stem_config,
            "stages": self.stage_configs,
            "pooling": self.pooling,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Backbone:
        if not isinstance(config, Mapping) or "stages" not in config:
            raise BackboneError(
                f"A backbone config needs `input_shape` and `stages`. Received: {config!r}"
            )
        return cls(
            input_shape=config["input_shape"],
            stages=config["stages"],
            stem=config.get("stem"),
            pooling=config.get("pooling", "flatten"),
            name=config.get("name", "backbone"),
        )

    def __repr__(self) -> str:
        return (
            f"Backbone(name={self.name!r}, input_shape={self.input_shape}, "
            f"stages={self.num_stages}, pooling={self.pooling!r})"
        )


def norm_positions(layer: keras.layers.Layer) -> list[int]:
    """Positions of the `BatchNormalization` layers among a `keras.Sequential`'s layers.

    Args:
        layer: a stage block.

    Returns:
        The indices into `layer.layers` ([] for a layer that is not a Sequential).

    Example:
    >>> norm_positions(keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization()]))
    [1]
    """
    if not isinstance(layer, keras.Sequential):
        return []
    return [i for i, x in enumerate(layer.layers) if isinstance(x, keras.layers.BatchNormalization)]


def with_dtype_policy(config: Any, policy: str) -> Any:
    """A layer config with every dtype policy in it set to `policy`."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config.get("config", {}), "name": policy}}
        return {k: with_dtype_policy(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [with_dtype_policy(v, policy) for v in config]
    return config


# === Built-in backbones ===


def mlp(input_dim: int, widths: Sequence[int] = (64, 64, 64), name: str = "mlp") -> Backbone:
    """A multi-layer perceptron: stage d is Dense(widths[d]) + ReLU.

    Args:
        input_dim: number of input features.
        widths: units of each stage; one stage per entry.

    Example:
    >>> mlp(100, widths=(32, 32, 16)).num_stages
    3
    """
    widths = _positive_ints(widths, "widths")
    # Templates only (builds draw fresh seeds), made without touching the caller's `random`.
    with seeded_layers(0):
        stages = [keras.layers.Dense(w, activation="relu") for w in widths]
    return Backbone((int(input_dim),), stages, name=name)


def convnet4(
    input_shape: Sequence[int] = (32, 32, 1),
    filters: int | Sequence[int] = 64,
    num_stages: int = 4,
    name: str = "convnet4",
) -> Backbone:
    """The 4-block convnet used in Omniglot multi-task work.

    Each stage: Conv2D(filters, 3x3, same) -> BatchNormalization -> ReLU ->
    MaxPooling2D(2x2). Heads read the flattened output of the last stage.

    Args:
        input_shape: (height, width, channels) of one image.
        filters: filters of every stage, or one value per stage.
        num_stages: number of blocks (4 in the literature).

    Reference:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016;
        Meyerson & Miikkulainen, "Beyond Shared Hierarchies", ICLR 2018.
    """
    if isinstance(filters, int):
        filters = [filters] * num_stages
    filters = _positive_ints(filters, "filters")

    def block(f: int) -> keras.layers.Layer:
        return keras.Sequential(
            [
                keras.layers.Conv2D(f, 3, padding="same", use_bias=False),
                # Momentum 0.9: with ~40 steps per epoch on Omniglot, the
                # default 0.99 leaves inference statistics far from the data
                # for the first dozen epochs.
                keras.layers.BatchNormalization(momentum=0.9),
                keras.layers.ReLU(),
                keras.layers.MaxPooling2D(2),
            ]
        )

    with seeded_layers(0):
        stages = [block(f) for f in filters]
    return Backbone(tuple(input_shape), stages, pooling="flatten", name=name)


def from_keras_model(
    model: keras.Model,
    stage_outputs: Sequence[str],
    stem_output: str | None = None,
    pooling: str = "avg",
    copy_weights: bool = True,
    name: str | None = None,
) -> Backbone:
    """Cuts a functional Keras model into a stem and stages at named layers.

    Stage d runs from the output of `stage_outputs[d-1]` (or of the stem, or
    the model input) to the output of `stage_outputs[d]`. Each stage becomes
    a functional sub-model whose config is the stage template.

    Args:
        model: a functional model (e.g. `keras.applications.ResNet50(
            include_top=False, weights=None)`, or any functional model).
        stage_outputs: names of the layers whose outputs end each stage.
        stem_output: name of the layer ending the shared stem, if any.
        pooling: how heads read the last stage (`"avg"` suits CNNs).
        copy_weights: start every block from the model's current weights
            (pretrained or trained); otherwise blocks start from fresh
            initialisation.
        name: backbone name; defaults to the model's.

    Example:
    >>> net = keras.applications.MobileNetV2(
    ...     input_shape=(64, 64, 3), include_top=False, weights=None)
    >>> bb = from_keras_model(net, ["block_3_expand_relu", "out_relu"])
    >>> bb.num_stages
    2
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise BackboneError(
            f"`model` must be a built functional Keras model. Received: {model!r}"
        )
    if len(model.inputs) != 1:
        raise BackboneError(f"`model` must have one input. Received {len(model.inputs)}.")
    if isinstance(stage_outputs, str) or not stage_outputs:
        raise BackboneError(
            f"`stage_outputs` must be a non-empty list of layer names. "
            f"Received: {stage_outputs!r}"
        )

    def tensor(layer_name: str, field: str):
        try:
            return model.get_layer(layer_name).output
        except ValueError:
            raise BackboneError(
                f"`{field}` names layer {layer_name!r}, which model {model.name!r} lacks."
            ) from None

    current = model.inputs[0]
    stem = stem_weights = None
    if stem_output is not None:
        end = tensor(stem_output, "stem_output")
        stem_model = keras.Model(current, end, name="stem")
        stem = keras.saving.serialize_keras_object(stem_model)
        stem_weights = stem_model.get_weights() if copy_weights else None
        current = end
    stages, weights = [], []
    for d, layer_name in enumerate(stage_outputs):
        end = tensor(layer_name, f"stage_outputs[{d}]")
        try:
            part = keras.Model(current, end, name=f"stage_{d + 1}")
        except Exception as err:
            raise BackboneError(
                f"Cannot cut model {model.name!r} between stage {d} and "
                f"{layer_name!r}: {err}"
            ) from None
        stages.append(keras.saving.serialize_keras_object(part))
        weights.append(part.get_weights() if copy_weights else None)
        current = end
    return Backbone(
        tuple(model.inputs[0].shape[1:]),
        stages,
        stem=stem,
        pooling=pooling,
        name=name or model.name,
        stage_weights=weights if copy_weights else None,
        stem_weights=stem_weights,
    )


# Stage boundaries of keras.applications networks (after each resolution).
APPLICATION_CUTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "ResNet50": (
        "pool1_pool",
        ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "MobileNetV2": (
        None,
        ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    ),
}


def keras_application(
    name: str,
    input_shape: Sequence[int],
    weights: str | os.PathLike | None = None,
    stage_outputs: Sequence[str] | None = None,
    stem_output: str | None = None,
    **kwargs: Any,
) -> Backbone:
    """A `keras.applications` network cut into stages; nothing is downloaded.

    Args:
        name: class name in `keras.applications`, e.g. `"ResNet50"`.
        input_shape: (height, width, channels).
        weights: None for random initialisation, or the path of a local
            weights file (`.weights.h5`) for the headless network.
        stage_outputs: layer names ending each stage; known for the networks
            in `APPLICATION_CUTS`, required otherwise.
        stem_output: layer name ending the shared stem (known ones as above).
        **kwargs: further constructor arguments of the application.
    """
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise BackboneError(f"`keras.applications` has no network {name!r}.")
    if stage_outputs is None:
        if name not in APPLICATION_CUTS:
            raise BackboneError(
                f"Stage boundaries of {name!r} are not known; pass `stage_outputs`."
            )
        stem_output, stage_outputs = APPLICATION_CUTS[name]
    with seeded_layers(0):
        net = constructor(include_top=False, weights=None, input_shape=tuple(input_shape), **kwargs)
    if weights is not None:
        if not os.path.exists(weights):
            raise BackboneError(f"Weights file does not exist: weights={os.fspath(weights)!r}")
        net.load_weights(weights)
    return from_keras_model(
        net, stage_outputs, stem_output=stem_output, pooling="avg",
        copy_weights=weights is not None, name=name,
    )


def _positive_ints(values: Any, field: str) -> list[int]:
    try:
        result = [int(v) for v in values]
    except (TypeError, ValueError):
        raise BackboneError(f"`{field}` must be a list of positive ints. Received: {values!r}") from None
    if not result or any(v < 1 for v in result):
        raise BackboneError(f"`{field}` must be a list of positive ints. Received: {values!r}")
    return result


# Registered backbones that read images (h, w, c); `get` checks the data's shape for them.
_IMAGE_BACKBONES = {"convnet4", "resnet50", "mobilenet_v2", "keras_hub"}

BUILTIN: dict[str, Callable[..., Backbone]] = {
    "mlp": lambda input_shape, **kw: mlp(input_shape[0], **kw),
    "convnet4": lambda input_shape, **kw: convnet4(input_shape, **kw),
    "resnet50": lambda input_shape, **kw: keras_application("ResNet50", input_shape, **kw),
    "mobilenet_v2": lambda input_shape, **kw: keras_application("MobileNetV2", input_shape, **kw),
}


def register_backbone(name: str, factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Makes a backbone usable by name (`get`, the CLI's `--backbone`, zoo entries).

    `keras_branch.hub` registers `"keras_hub"` this way.

    Args:
        name: the name (refused if already taken).
        factory: `factory(input_shape, **kwargs) -> Backbone` (input_shape
            without the batch axis).

    Returns:
        `factory`, so the function can serve as a decorator.
    """
    if name in BUILTIN and BUILTIN[name] is not factory:
        raise BackboneError(f"A backbone named {name!r} is registered already.")
    BUILTIN[name] = factory
    return factory


def get(name: str, input_shape: Sequence[int], **kwargs: Any) -> Backbone:
    """A registered backbone by name (`mlp`, `convnet4`, `resnet50`, `mobilenet_v2`, `keras_hub`).

    Args:
        name: a name in `BUILTIN` (see `register_backbone`).
        input_shape: one sample's shape.
        **kwargs: the factory's arguments (e.g. `widths` of `mlp`).
    """
    if name not in BUILTIN:
        raise BackboneError(
            f"Unknown backbone {name!r}; built-in backbones are {sorted(BUILTIN)}."
        )
    if name == "mlp" and len(input_shape) != 1:
        raise BackboneError(
            f"Backbone 'mlp' needs flat inputs; this data has input shape {tuple(input_shape)}."
        )
    if name in _IMAGE_BACKBONES and len(input_shape) != 3:
        raise BackboneError(
            f"Backbone {name!r} needs image inputs (h, w, c); this data has "
            f"input shape {tuple(input_shape)}."
        )
    return BUILTIN[name](tuple(input_shape), **kwargs)
