"""Releasing the graphs TensorFlow's custom-gradient registry keeps alive.

Every `model.fit` under TensorFlow 2.21 traces a train step whose
`tf.custom_gradient` ops (in graph mode) register a closure in TensorFlow's
global gradient registry under a fresh `CustomGradient-N` name, and nothing
ever removes it. The closure holds the traced graph, so a model trained and
dropped stays in memory (about 23,000 Python objects for a small convnet4),
and a process that trains many models one after another (an evolution's
candidates, a benchmark's seeds) holds more objects with each, which every
`gc.collect()` walks. (Three Omniglot-5 evolutions in one process took 151,
303 and 452 s for the same work; how much of that the leak caused is not
measured, see docs/evolution.md.)
(tensorflow/tensorflow#97697; keras-team/tf-keras#898 purges the same
entries in `clear_session`.)

`released_custom_gradients()` removes, on exit, the entries registered while
its body ran. Use it around work whose models are dropped afterwards: a
graph traced inside keeps working (its gradient was built while tracing),
but a function traced inside and differentiated again later would miss its
gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["released_custom_gradients"]

_PREFIX = "CustomGradient-"


def _registry() -> dict | None:
    """TensorFlow's gradient registry, or None where this TensorFlow has none to reach."""
    try:
        from tensorflow.python.framework import ops  # no public access to the registry
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return None
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


@contextlib.contextmanager
def released_custom_gradients() -> Iterator[None]:
    """Removes the custom gradients registered inside the block when it ends.

    Entries that existed before the block are kept; where TensorFlow's
    registry cannot be reached (another version's layout) nothing is done.

    Example:
    >>> import keras, numpy as np
    >>> with released_custom_gradients():
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile("sgd", "mse")
    ...     _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    >>> del model  # nothing in TensorFlow's registry holds its train step now
    """
    registry = _registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for name in [k for k in registry if k not in before and k.startswith(_PREFIX)]:
                registry.pop(name, None)
