"""Argument types and the parser class of the `keras-branch` command line.

Each type checks one flag's value where argparse reads it, so a bad number
ends the command at once with one line naming the flag and the value
(`keras-branch train: error: argument --batch-size: must be an int >= 1.
Received: '0'`), exit status 2, before any data is loaded or any file is
written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

#: Seeds are what numpy and TensorFlow accept: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage block) and exit 2.

    Subparsers made by `add_subparsers` inherit the class.
    """

    def error(self, message: str):
        message = " ".join(str(message).split())
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= `minimum`.

    Example:
    >>> int_at_least(1)("3")
    3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an int >= {minimum}. Received: {text!r}"
            )
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed, an int in 0 .. 2**32 - 1."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an int from 0 to {MAX_SEED} (2**32 - 1). Received: {text!r}"
        )
    return value


def finite_float(minimum: float = 0.0, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float above `minimum` (or at it, with `inclusive`).

    Example:
    >>> finite_float()("3e-3")
    0.003
    """
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be a finite number {bound}. Received: {text!r}"
            )
        return value

    parse.__name__ = f"number {bound}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1] (a scale factor).

    Example:
    >>> fraction("0.5")
    0.5
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1]. Received: {text!r}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]. Received: {text!r}")
    return value


#: The common cases, named for the flags that use them.
positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = finite_float(0.0)
non_negative_float = finite_float(0.0, inclusive=True)
