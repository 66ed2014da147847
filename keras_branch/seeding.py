"""Explicit seeds, and the one place the library meets Python's global `random`.

Library code never seeds the caller's global random state (no
`keras.utils.set_random_seed`, no `np.random.seed`): it draws from
`np.random.Generator`s, `keras.random.SeedGenerator`s and stateless TF ops
made from the seed it was given.

One source of randomness escapes that rule: Keras layers built with default
(unseeded) initializers, dropout or seed generators draw their seeds from
Python's global `random` module when they are *constructed*
(`keras.random.SeedGenerator(seed=None)` and `Initializer(seed=None)` call
`random.randint`). To build a model whose weights depend only on a seed,
whatever layers it holds (ours, the user's, keras-hub's), construction runs
inside `seeded_layers(seed)`, which lends Python's `random` a state made from
`seed` and gives the caller's state back afterwards, exception or not.
"""

from __future__ import annotations

import contextlib
import random
import threading
import zlib
from collections.abc import Iterator

import numpy as np

__all__ = ["derive_seed", "seeded_layers"]

_LOCK = threading.RLock()


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 31-bit seed made from `seed` and any number of int or str keys.

    Sub-seeds for independent streams (a task, a probe, a candidate) that do
    not depend on the order in which the streams are drawn.

    Args:
        seed: the run's seed (a non-negative int).
        *keys: ints or strings naming the stream.

    Returns:
        An int in [0, 2**31).

    Example:
    >>> derive_seed(0, "probe", 3) == derive_seed(0, "probe", 3)
    True
    >>> derive_seed(0, "probe", 3) != derive_seed(0, "probe", 4)
    True
    """
    words = [int(seed)]
    for key in keys:
        words.append(zlib.crc32(key.encode("utf-8")) if isinstance(key, str) else int(key))
    entropy = [w & 0xFFFFFFFF for w in words] + [(w >> 32) & 0xFFFFFFFF for w in words]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


@contextlib.contextmanager
def seeded_layers(seed: int) -> Iterator[None]:
    """Layers constructed inside draw their default seeds from `seed` alone.

    The caller's Python `random` state is the same after the block as before
    it; NumPy's and TensorFlow's global states are never touched.

    Args:
        seed: an int.

    Example:
    >>> import random, keras
    >>> state = random.getstate()
    >>> with seeded_layers(0):
    ...     a = keras.layers.Dense(2)
    ...     a.build((None, 3))
    >>> with seeded_layers(0):
    ...     b = keras.layers.Dense(2)
    ...     b.build((None, 3))
    >>> bool((a.kernel.numpy() == b.kernel.numpy()).all()), random.getstate() == state
    (True, True)
    """
    with _LOCK:
        state = random.getstate()
        random.seed(int(seed))
        try:
            yield
        finally:
            random.setstate(state)
