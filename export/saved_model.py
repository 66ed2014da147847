"""SavedModel export with one signature per task plus a default one.

The artifact has

* `serving_default`: every task's output, a dict keyed by `Task.key`;
* one signature per task, named after `Task.key`, returning `{key: output}`
  and computing only the blocks on that task's route;

all taking one float32 input named `inputs` with a free batch axis, and all
in inference mode (`training=False`: dropout off, batch-norm moving
statistics). No endpoint is called `serve`: with such an endpoint the TFLite
converter silently keeps `serving_default` only (keras-tf-notes.md).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from keras_branch.errors import ExportError
from keras_branch.files import atomic_path

#: The signature that returns every task's output.
DEFAULT_SIGNATURE = "serving_default"
#: Name of the single input of every signature.
INPUT_NAME = "inputs"
# `serve` is Keras' default endpoint name, which makes the TFLite converter
# drop every other signature; `serving_default` is taken by the default one.
RESERVED_NAMES = ("serve", DEFAULT_SIGNATURE)


def signature_keys(model: keras.Model) -> list[str]:
    """Signature keys of `model`'s export: the default one, then one per task.

    Args:
        model: a `BranchedModel` (anything with `.tasks`).

    Returns:
        `["serving_default", task_key_1, ...]` in the model's task order.

    Raises:
        ExportError: when a task key cannot name a signature.

    Example:
    >>> model = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression"), Task("b", "binary")])
    >>> signature_keys(model)
    ['serving_default', 'a', 'b']
    """
    keys = [t.key for t in model.tasks]
    for task in model.tasks:
        if task.key in RESERVED_NAMES:
            raise ExportError(
                f"Task {task.name!r} has the output key {task.key!r}, which cannot name "
                f"a signature (reserved: {list(RESERVED_NAMES)}); rename the task."
            )
    return [DEFAULT_SIGNATURE, *keys]


def _endpoint(fn_model: keras.Model):
    # A named function (not a lambda in a loop) so each endpoint keeps its own model.
    def serving_fn(inputs):
        return fn_model(inputs, training=False)

    return serving_fn


def write_saved_model(model: keras.Model, path: str | os.PathLike) -> list[str]:
    """Writes the SavedModel to `path` (not atomically; see `export_saved_model`).

    Args:
        model: a `BranchedModel` whose outputs are a dict keyed by task key.
        path: a folder that does not exist yet.

    Returns:
        The signature keys written.

    Example (not run as a doctest: it writes into the temporary folder of an
    `atomic_path`; `export_saved_model` does both):
    >>> write_saved_model(model, "tmp/saved_model")  # doctest: +SKIP
    """
    keys = signature_keys(model)
    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name=INPUT_NAME)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # Registered first and by its own name, so Keras adds no `serve` alias.
    archive.add_endpoint(DEFAULT_SIGNATURE, _endpoint(model), input_signature=[spec])
    for task in model.tasks:
        # A sub-model per task: its signature holds only that task's route,
        # not the whole tree with the other outputs pruned at run time.
        sub = keras.Model(model.inputs, {task.key: model.output[task.key]},
                          name=f"signature_{task.key}")
        archive.add_endpoint(task.key, _endpoint(sub), input_signature=[spec])
    archive.write_out(os.fspath(path), verbose=False)
    return keys


def export_saved_model(
    model: keras.Model, path: str | os.PathLike, overwrite: bool = False
) -> list[str]:
    """Exports a multi-task model as a SavedModel, atomically.

    Args:
        model: a `BranchedModel`.
        path: the SavedModel folder to write.
        overwrite: replace `path` if it exists (otherwise `OutputExistsError`).

    Returns:
        The signature keys: `serving_default` then one per task key.

    Example:
    >>> model = build_model(TreeSpec.shared(["a", "b"], num_stages=2), backbones.mlp(10, (4, 4)),
    ...                     [Task("a", "regression"), Task("b", "binary")])
    >>> keys = export_saved_model(model, "out/saved_model")
    >>> keys
    ['serving_default', 'a', 'b']
    >>> loaded = tf.saved_model.load("out/saved_model")
    >>> x = np.zeros((8, 10), "float32")
    >>> {k: tuple(v.shape) for k, v in loaded.signatures[keys[1]](inputs=tf.constant(x)).items()}
    {'a': (8, 1)}
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        return write_saved_model(model, tmp)


def run_saved_model(path: str | os.PathLike, x) -> dict[str, dict[str, object]]:
    """Runs every signature of a SavedModel on the same inputs.

    Args:
        path: the SavedModel folder.
        x: float inputs with a batch axis.

    Returns:
        `{signature key: {output name: numpy array}}`.

    Example (not run as a doctest: needs the folder `export_saved_model` wrote):
    >>> run_saved_model("out/saved_model", x)["a"]["a"].shape  # doctest: +SKIP
    (64, 1)
    """
    loaded = tf.saved_model.load(os.fspath(path))
    inputs = tf.constant(x, dtype=tf.float32)
    return {
        key: {name: value.numpy() for name, value in fn(**{INPUT_NAME: inputs}).items()}
        for key, fn in loaded.signatures.items()
    }
