"""Backbones from keras-hub: a `keras_hub.models.*Backbone` cut at its stage outputs.

keras-hub is the maintained home of the Keras vision backbones (keras-cv is
frozen). Its `*Backbone` classes build offline from constructor arguments;
its presets need a download, so here a preset is only ever read from a
directory the user already has on disk (written by `save_to_preset`, or
downloaded elsewhere and copied over). Nothing in this module touches the
network.

A keras-hub vision backbone (a `FeaturePyramidBackbone`) names the output of
each of its stages in `pyramid_outputs` (`{"P2": ..., "P3": ..., ...}`).
`from_keras_hub` cuts the network there with
`keras_branch.backbones.from_keras_model`: the layers before the first stage
become the shared stem, and every stage becomes a functional sub-model that
the tree builder instantiates once per block, so every branch owns its copy.
The stage templates hold only standard Keras layers for ResNet (and
keras-hub's own registered layers for other families, which Keras imports
by module when a `.keras` file is loaded), so `.keras` files, SavedModels
and TFLite files of such a model need nothing beyond Keras and TensorFlow.

* `from_keras_hub(hub_backbone)`: cut a keras-hub backbone you built or
  loaded yourself;
* `keras_hub_backbone(input_shape, class_name=..., preset=..., **kwargs)`:
  build one from constructor arguments (a small ResNet by default) or load a
  local preset, then cut it. Registered as backbone `"keras_hub"` in
  `keras_branch.backbones.get`, so a TreeSpec run, the CLI
  (`--backbone keras_hub --backbone-arg ...`) and zoo entries can name it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_branch.backbones import Backbone, from_keras_model, register_backbone
from keras_branch.errors import BackboneError
from keras_branch.seeding import seeded_layers

#: Constructor arguments used for `ResNetBackbone` when no preset is given:
#: a ResNet-6 (one basic block per stack, three stacks of 64 filters), about
#: 0.23M parameters, small enough to train one copy per branch on a CPU.
#: Each key can be overridden; keras-hub requires 64 filters in the first stack.
SMALL_RESNET: dict[str, Any] = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 64, 64],
    "stackwise_num_blocks": [1, 1, 1],
    "stackwise_num_strides": [1, 2, 2],
    "block_type": "basic_block",
    "use_pre_activation": False,
}

#: The layer ending the shared stem, per keras-hub class (everything before
#: the first stage: input convolutions and the first max-pool).
STEM_OUTPUTS: dict[str, str] = {
    "ResNetBackbone": "pool1_pool",
}

#: `stem_output` default: look the class up in `STEM_OUTPUTS`.
AUTO = "auto"

#: Schemes of remote preset handles, refused: nothing is downloaded.
_REMOTE = ("kaggle://", "hf://", "modelscope://", "http://", "https://", "gs://")


def _keras_hub():
    try:
        import keras_hub
    except ImportError as err:  # declared in setup.cfg; a broken install otherwise
        raise BackboneError(
            f"keras-hub backbones need the `keras-hub` package (pip install keras-hub): {err}"
        ) from None
    return keras_hub


def hub_backbone_class(class_name: str) -> type:
    """The keras-hub backbone class called `class_name`.

    Args:
        class_name: a class of `keras_hub.models` ending in `Backbone`,
            e.g. `"ResNetBackbone"`.

    Returns:
        The class (a subclass of `keras_hub.models.Backbone`).

    Raises:
        BackboneError: naming `class_name` and listing the keras-hub vision
            backbones (those with stage outputs) for an unknown name.

    Example:
    >>> hub_backbone_class("ResNetBackbone").__name__
    'ResNetBackbone'
    """
    keras_hub = _keras_hub()
    cls = getattr(keras_hub.models, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)):
        raise BackboneError(
            f"`class_name` must name a backbone class of `keras_hub.models` (those with "
            f"stage outputs: {vision_backbone_classes()}). Received: class_name={class_name!r}"
        )
    return cls


def vision_backbone_classes() -> list[str]:
    """Names of the keras-hub backbones that expose stage outputs (`pyramid_outputs`).

    Returns:
        Sorted class names of `keras_hub.models` subclassing
        `FeaturePyramidBackbone`.

    Example:
    >>> "ResNetBackbone" in vision_backbone_classes()
    True
    """
    keras_hub = _keras_hub()
    base = keras_hub.models.FeaturePyramidBackbone
    return sorted(
        name for name in dir(keras_hub.models)
        if isinstance(getattr(keras_hub.models, name), type)
        and issubclass(getattr(keras_hub.models, name), base)
        and getattr(keras_hub.models, name) is not base
    )


def _layer_of(model: keras.Model, tensor: Any) -> str | None:
    """The name of the layer of `model` whose (single) output is `tensor`."""
    for layer in model.layers:
        try:
            output = layer.output
        except (AttributeError, ValueError):  # shared layers have no single output
            continue
        if output is tensor:
            return layer.name
    return None


def _stage_layer_names(hub_backbone: keras.Model, stage_outputs: Sequence[str] | None
                       ) -> list[str]:
    pyramid = dict(getattr(hub_backbone, "pyramid_outputs", None) or {})
    if stage_outputs is None:
        if not pyramid:
            raise BackboneError(
                f"keras-hub backbone {type(hub_backbone).__name__} has no `pyramid_outputs`; "
                f"pass `stage_outputs` (layer names ending each stage)."
            )
        names = []
        for key, tensor in pyramid.items():
            layer = _layer_of(hub_backbone, tensor)
            if layer is None:
                raise BackboneError(
                    f"The stage output {key!r} of {type(hub_backbone).__name__} is not the "
                    f"output of one layer; pass `stage_outputs` (layer names)."
                )
            names.append(layer)
        # Layers after the last stage (ResNetV2's final norm) belong to the last one.
        last = _layer_of(hub_backbone, hub_backbone.output)
        if last is not None and last != names[-1]:
            names[-1] = last
        return names
    if (isinstance(stage_outputs, str) or not isinstance(stage_outputs, Sequence)
            or not stage_outputs):
        raise BackboneError(
            f"`stage_outputs` must be a non-empty list of stage names "
            f"({sorted(pyramid)}) or layer names. Received: stage_outputs={stage_outputs!r}"
        )
    names = []
    for d, item in enumerate(stage_outputs):
        if item in pyramid:
            layer = _layer_of(hub_backbone, pyramid[item])
            if layer is None:
                raise BackboneError(
                    f"`stage_outputs[{d}]`={item!r} is not the output of one layer; "
                    f"name the layer instead."
                )
            names.append(layer)
        else:
            names.append(item)  # a layer name: from_keras_model checks it
    return names


def from_keras_hub(
    hub_backbone: keras.Model,
    stage_outputs: Sequence[str] | None = None,
    stem_output: str | None = AUTO,
    pooling: str = "avg",
    copy_weights: bool = True,
    name: str | None = None,
) -> Backbone:
    """Cuts a keras-hub backbone into a shared stem and stages.

    Args:
        hub_backbone: a `keras_hub.models.*Backbone` (e.g. `ResNetBackbone`),
            built from constructor arguments or loaded with `from_preset`.
            Its `image_shape` must be fully known (no `None`).
        stage_outputs: where each stage ends: keys of `pyramid_outputs`
            (`"P2"`, `"P3"`, ...) or layer names. Default: every pyramid
            level, the last one extended to the network's output.
        stem_output: the layer ending the shared stem; `"auto"` looks the
            class up in `STEM_OUTPUTS` (none for other classes); None puts
            the stem layers into stage 1.
        pooling: how heads read a stage's output (`"avg"` suits CNNs).
        copy_weights: start every block from `hub_backbone`'s weights (a
            preset's pretrained weights); otherwise fresh initialisation.
        name: backbone name; default `keras_hub.<class name>`.

    Returns:
        A `keras_branch.Backbone` with one stage per stage output.

    Raises:
        BackboneError: not a keras-hub backbone, an unknown stage or layer
            name, or an input shape with unknown sizes.

    Example:
    >>> import keras_hub
    >>> net = keras_hub.models.ResNetBackbone(**SMALL_RESNET, image_shape=(32, 32, 3))
    >>> bb = from_keras_hub(net, copy_weights=False)
    >>> bb.num_stages, bb.stage_output_shape(2)
    (3, (2, 2, 64))
    """
    keras_hub = _keras_hub()
    if not isinstance(hub_backbone, keras_hub.models.Backbone):
        raise BackboneError(
            f"`hub_backbone` must be a `keras_hub.models.Backbone` instance. "
            f"Received: {type(hub_backbone).__name__}"
        )
    class_name = type(hub_backbone).__name__
    shape = tuple(hub_backbone.inputs[0].shape[1:]) if len(hub_backbone.inputs) == 1 else None
    if shape is None or any(s is None for s in shape):
        raise BackboneError(
            f"The keras-hub backbone needs one input of known shape (pass `image_shape=(h, w, c)` "
            f"when building it). Received: input shape {shape}"
        )
    if stem_output == AUTO:
        stem_output = STEM_OUTPUTS.get(class_name)
    layers = _stage_layer_names(hub_backbone, stage_outputs)
    return from_keras_model(
        hub_backbone, layers, stem_output=stem_output, pooling=pooling,
        copy_weights=copy_weights, name=name or f"keras_hub.{class_name}",
    )


def _check_preset(preset: str | os.PathLike) -> str:
    path = os.fspath(preset)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if path.startswith(_REMOTE):
        raise BackboneError(
            f"`preset` must be a local preset directory; nothing is downloaded here. "
            f"Download it elsewhere, copy the folder, and pass its path. Received: preset={path!r}"
        )
    if not os.path.isdir(path):
        raise BackboneError(
            f"`preset` must be an existing local preset directory (as written by "
            f"`save_to_preset`; built-in preset names need a download). Received: preset={path!r}"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise BackboneError(
            f"`preset` directory has no config.json, so it is not a keras-hub preset. "
            f"Received: preset={path!r}"
        )
    return path


def keras_hub_backbone(
    input_shape: Sequence[int],
    class_name: str | None = None,
    preset: str | os.PathLike | None = None,
    stage_outputs: Sequence[str] | None = None,
    stem_output: str | None = AUTO,
    pooling: str = "avg",
    name: str | None = None,
    **kwargs: Any,
) -> Backbone:
    """A keras-hub backbone, built offline or read from a local preset, cut into stages.

    Without `preset`, the network is built from constructor arguments with
    fresh weights (`class_name` defaults to `"ResNetBackbone"`, whose
    arguments default to `SMALL_RESNET`). With `preset`, the network and its
    weights come from that directory and every block of every branch starts
    from the preset's weights of its stage.

    Args:
        input_shape: (height, width, channels) of one image; passed to
            keras-hub as `image_shape` (convolution weights do not depend on
            the image size, so a preset loads at any size with its channels).
        class_name: a backbone class of `keras_hub.models`, e.g.
            `"ResNetBackbone"`. With a preset: default the preset's class.
        preset: a local keras-hub preset directory, or None.
        stage_outputs: stage ends (pyramid keys or layer names); see
            `from_keras_hub`.
        stem_output: layer ending the shared stem; see `from_keras_hub`.
        pooling: how heads read a stage's output.
        name: backbone name.
        **kwargs: constructor arguments of the class (JSON values, so the CLI
            and zoo entries can give them); with a preset they override the
            preset's config.

    Returns:
        A `keras_branch.Backbone`.

    Raises:
        BackboneError: an unknown `class_name`, a `preset` that is not a local
            preset directory, or arguments the class refuses (the class's own
            message is included).

    Example (the last line is not run as a doctest: it needs a local preset
    directory):
    >>> bb = keras_hub_backbone((32, 32, 1))                     # small ResNet
    >>> bb.num_stages
    3
    >>> bb = keras_hub_backbone((64, 64, 3), preset="presets/my_resnet")  # doctest: +SKIP
    """
    shape = tuple(input_shape) if not isinstance(input_shape, int) else (input_shape,)
    if len(shape) != 3:
        raise BackboneError(
            f"keras-hub backbones need image inputs (h, w, c). Received: input_shape={shape}"
        )
    if "image_shape" in kwargs:
        raise BackboneError(
            f"Give the image shape as `input_shape`, not `image_shape`. "
            f"Received: image_shape={kwargs['image_shape']!r}"
        )
    if preset is None:
        cls = hub_backbone_class("ResNetBackbone" if class_name is None else class_name)
        if cls.__name__ == "ResNetBackbone":
            kwargs = {**SMALL_RESNET, **kwargs}
        what = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        try:
            with seeded_layers(0):  # a template: builds draw their own seeds
                net = cls(**kwargs, image_shape=shape)
        except (TypeError, ValueError) as err:
            raise BackboneError(f"keras-hub refused {what}: {err}") from None
        copy_weights = False
    else:
        path = _check_preset(preset)
        cls = (_keras_hub().models.Backbone if class_name is None
               else hub_backbone_class(class_name))
        try:
            with seeded_layers(0):
                net = cls.from_preset(path, image_shape=shape, **kwargs)
        except (TypeError, ValueError) as err:
            raise BackboneError(
                f"keras-hub could not load preset {path!r} with input_shape={shape}"
                f"{' and ' + repr(kwargs) if kwargs else ''}: {err}"
            ) from None
        copy_weights = True
    return from_keras_hub(net, stage_outputs=stage_outputs, stem_output=stem_output,
                          pooling=pooling, copy_weights=copy_weights, name=name)


register_backbone("keras_hub", keras_hub_backbone)
