"""Argument checks of the library's public functions: one wording for every bad value.

Each check returns the value normalised (a Python int or float) or raises the
caller's error type with a message naming the field and the value received,
e.g. "`epochs` must be an int >= 1. Received: epochs=0". `bool` is refused
where a number is wanted (`True` is an int to Python, never to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The widest adapter bottleneck (`TreeSpec.adapters`, `keras_branch.layers.Adapter`).
#: An adapter is a bottleneck narrower than its stage's channels (a few
#: thousand at most in the backbones keras_branch builds: ResNet-50's last
#: stage has 2048); 2**16 leaves room for any such stage, while a width far
#: beyond it asks for gigabytes of weights and would end in TensorFlow's
#: ResourceExhaustedError instead of an error naming the field.
MAX_ADAPTER_WIDTH = 2**16


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int from {minimum} to {maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_int(
    value: Any,
    field: str,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[Exception] = ValueError,
) -> int:
    """`value` as an int in [`minimum`, `maximum`] (either bound optional).

    Args:
        value: what the caller passed.
        field: the argument's name, for the message.
        minimum, maximum: inclusive bounds, or None.
        error: the exception type to raise.

    Returns:
        `int(value)`.

    Example:
    >>> check_int(3, "epochs", minimum=1)
    3
    >>> check_int(0, "epochs", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `epochs` must be an int >= 1. Received: epochs=0
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, np.integer))
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
    )
    if not ok:
        raise error(f"`{field}` must be {_int_range(minimum, maximum)}. Received: {field}={value!r}")
    return int(value)


def check_number(
    value: Any,
    field: str,
    minimum: float | None = None,
    inclusive: bool = False,
    error: type[Exception] = ValueError,
) -> float:
    """`value` as a finite float above `minimum` (or at it, with `inclusive`).

    Args:
        value: what the caller passed.
        field: the argument's name, for the message.
        minimum: the lower bound, or None for any finite number.
        inclusive: whether `minimum` itself is allowed.
        error: the exception type to raise.

    Returns:
        `float(value)`.

    Example:
    >>> check_number(0.0, "weight_decay", minimum=0, inclusive=True)
    0.0
    >>> check_number(float("nan"), "learning_rate", minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: `learning_rate` must be a finite number > 0. Received: learning_rate=nan
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (minimum is None or (value >= minimum if inclusive else value > minimum))
    )
    if not ok:
        bound = "" if minimum is None else (f" >= {minimum:g}" if inclusive else f" > {minimum:g}")
        raise error(f"`{field}` must be a finite number{bound}. Received: {field}={value!r}")
    return float(value)


def check_choice(value: Any, field: str, choices: Sequence, error: type[Exception] = ValueError) -> Any:
    """`value` if it is one of `choices`.

    Args:
        value: what the caller passed.
        field: the argument's name, for the message.
        choices: the accepted values.
        error: the exception type to raise.

    Returns:
        `value`.

    Example:
    >>> check_choice("cosine", "schedule", ("constant", "cosine"))
    'cosine'
    >>> check_choice("linear", "schedule", ("constant", "cosine"))
    Traceback (most recent call last):
    ...
    ValueError: `schedule` must be one of ['constant', 'cosine']. Received: schedule='linear'
    """
    if value not in choices:
        raise error(f"`{field}` must be one of {list(choices)}. Received: {field}={value!r}")
    return value


def check_utf8(value: str, field: str, error: type[Exception] = ValueError) -> str:
    """`value` unchanged when UTF-8 can encode it (a string without lone surrogates).

    A name such as `"a\\udc80"` (from `os.fsdecode` of bad bytes, or a JSON
    escape) is a valid Python string that no file, log or terminal in UTF-8
    can take: it would crash later, while printing or saving.

    Args:
        value: the string.
        field: the argument's name, for the message.
        error: the exception type to raise.

    Returns:
        `value`.

    Example:
    >>> check_utf8("a\\udc80", "name")
    Traceback (most recent call last):
    ...
    ValueError: `name` must be text UTF-8 can encode (no lone surrogates). Received: name='a\\udc80'
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"`{field}` must be text UTF-8 can encode (no lone surrogates). "
                    f"Received: {field}={value!r}") from None
    return value
