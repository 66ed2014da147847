"""One shared test helper for keras_branch layers and models.

`run_layer_test` and `run_model_test` check what every Keras object of the
library must do: config round trip, symbolic and eager output shapes, a
training step that changes weights, and a `.keras` save/load (safe mode on)
that reproduces outputs. Tests call them instead of copying the checks.

Shapes are written with the batch axis: `None` for symbolic shapes; eager
checks put the actual batch size there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(
        v is None or isinstance(v, int) for v in value
    )


def _map_shapes(fn: Callable[[tuple], Any], struct: Any) -> Any:
    """Applies `fn` to every shape in a dict / list structure of shapes."""
    if _is_shape(struct):
        return fn(tuple(struct))
    if isinstance(struct, Mapping):
        return {k: _map_shapes(fn, v) for k, v in struct.items()}
    return [_map_shapes(fn, v) for v in struct]


def tensor_shapes(struct: Any) -> Any:
    """Shapes (tuples) of a dict / list structure of tensors."""
    if isinstance(struct, Mapping):
        return {k: tensor_shapes(v) for k, v in struct.items()}
    if isinstance(struct, (list, tuple)):
        return [tensor_shapes(v) for v in struct]
    return tuple(struct.shape)


def _batch(shapes: Any, batch: int | None) -> Any:
    return _map_shapes(lambda s: (batch, *s[1:]), shapes)


def _first_array(x: Any) -> Any:
    return keras.tree.flatten(x)[0]


def check_save_load(model: keras.Model, x: Any, atol: float = 1e-6) -> keras.Model:
    """Saves `model` as `.keras`, reloads it in safe mode, compares outputs.

    Returns:
        The reloaded model (same class as `model`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    assert type(restored) is type(model), f"reloaded as {type(restored)}, not {type(model)}"
    expected = keras.tree.flatten(model(x, training=False))
    actual = keras.tree.flatten(restored(x, training=False))
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=atol, rtol=0)
    return restored


def check_training_step(
    model: keras.Model, x: Any, y: Any, compile_fn: Callable[[keras.Model], Any] | None = None
) -> dict[str, float]:
    """One `train_on_batch`: the loss is finite and some weight changes."""
    if compile_fn is not None:
        compile_fn(model)
    elif not model.compiled:
        model.compile(optimizer="sgd", loss="mse")
    before = [np.array(w) for w in model.trainable_weights]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), f"training step gave a non-finite loss: {logs}"
    after = [np.array(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), (
        "a training step changed no trainable weight"
    )
    return logs


def run_model_test(
    make_model: Callable[[], keras.Model],
    x: Any,
    y: Any,
    expected_output_shape: Any,
    compile_fn: Callable[[keras.Model], Any] | None = None,
    atol: float = 1e-6,
) -> keras.Model:
    """Checks a model class end to end.

    Args:
        make_model: builds a fresh model.
        x, y: one batch of inputs and targets.
        expected_output_shape: output shapes with batch axis None, e.g.
            `{"a": (None, 3), "b": (None, 1)}`.
        compile_fn: compiles the model for the training step (default: SGD
            and MSE).
        atol: tolerance of the save/load comparison.

    Returns:
        The trained model.
    """
    model = make_model()
    symbolic = tensor_shapes(model.output)
    assert symbolic == _batch(expected_output_shape, None), (
        f"symbolic output shapes {symbolic} != {expected_output_shape}"
    )
    batch = int(_first_array(x).shape[0])
    eager = tensor_shapes(model(x, training=False))
    assert eager == _batch(expected_output_shape, batch), (
        f"eager output shapes {eager} != {_batch(expected_output_shape, batch)}"
    )
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config, "get_config() does not survive from_config()"
    assert tensor_shapes(clone.output) == symbolic
    assert clone.count_params() == model.count_params()
    check_training_step(model, x, y, compile_fn)
    check_save_load(model, x, atol=atol)
    return model


def run_layer_test(
    layer_cls: type[keras.layers.Layer],
    init_kwargs: Mapping[str, Any],
    input_shape: Sequence[int | None] | Sequence[Sequence[int | None]],
    expected_output_shape: Any,
    input_dtype: str = "float32",
    atol: float = 1e-6,
    seed: int = 0,
) -> keras.layers.Layer:
    """Checks a layer class: config, shapes, a training step, save/load.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_shape: one input shape with batch axis (e.g. `(4, 8)`), or a
            list of them for a layer taking a list of inputs.
        expected_output_shape: output shape(s) with the same batch size.
        input_dtype: dtype of the random inputs.
        atol: tolerance of the save/load comparison.
        seed: seed of the random inputs and targets.

    Returns:
        The layer, called on symbolic and eager inputs.
    """
    rng = np.random.default_rng(seed)
    multi = not _is_shape(input_shape)
    shapes = [tuple(s) for s in input_shape] if multi else [tuple(input_shape)]
    arrays = [rng.standard_normal(s).astype(input_dtype) for s in shapes]
    x = arrays if multi else arrays[0]

    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config, "get_config() does not survive from_config()"
    inputs = [keras.Input(s[1:], dtype=input_dtype) for s in shapes]
    symbolic = layer(inputs if multi else inputs[0])
    assert tensor_shapes(symbolic) == _batch(expected_output_shape, None), (
        f"symbolic output shapes {tensor_shapes(symbolic)} != {expected_output_shape}"
    )
    cloned = tensor_shapes(clone(inputs if multi else inputs[0]))
    assert cloned == tensor_shapes(symbolic), (
        f"from_config(get_config()) builds a different layer: outputs {cloned}"
    )
    assert clone.count_params() == layer.count_params(), (
        "from_config(get_config()) builds a layer with other parameters"
    )
    eager = tensor_shapes(layer(x))
    assert eager == _batch(expected_output_shape, shapes[0][0]), (
        f"eager output shapes {eager} != {expected_output_shape}"
    )
    # Wrapped in a model: a training step and a .keras round trip.
    outputs = keras.tree.flatten(symbolic)
    model = keras.Model(inputs if multi else inputs[0], outputs)
    targets = [rng.standard_normal((shapes[0][0], *o.shape[1:])).astype("float32") for o in outputs]
    if layer.trainable_weights:
        check_training_step(model, x, targets if len(targets) > 1 else targets[0])
    check_save_load(model, x, atol=atol)
    return layer


def random_affinity(rng: np.random.Generator, stages: int, tasks: int) -> np.ndarray:
    """A random symmetric affinity tensor [stages, tasks, tasks], 1 on the diagonals.

    For tests and benchmarks of the tree search: no structure to find.
    """
    a = rng.uniform(-1, 1, (stages, tasks, tasks))
    a = (a + a.transpose(0, 2, 1)) / 2
    for d in range(stages):
        np.fill_diagonal(a[d], 1.0)
    return a


def check_tflite_parity(model: keras.Model, x: np.ndarray, directory: str | os.PathLike,
                        atol: float = 1e-5) -> dict[str, np.ndarray]:
    """Converts a dict-output model to builtins-only TFLite, runs it on LiteRT, compares.

    SavedModel via `keras.export.ExportArchive` (endpoint "predict", never
    "serve"), converted with TensorFlow, run with `ai_edge_litert`; every
    output must match Keras (inference mode) within `atol`.

    Returns:
        The LiteRT outputs.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "predict",
        lambda inputs: model(inputs, training=False),
        input_signature=[keras.InputSpec(shape=(None, *x.shape[1:]), dtype="float32")],
    )
    path = os.path.join(os.fspath(directory), f"saved_{model.name}")
    archive.write_out(path, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["predict"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    got = interpreter.get_signature_runner("predict")(inputs=x)
    want = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    assert set(got) == set(want), f"TFLite outputs {sorted(got)} != Keras outputs {sorted(want)}"
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=0)
    return got
