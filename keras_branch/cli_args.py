"""Argument types and the parser class of the `keras-branch` command line.

Each type checks one flag's value where argparse reads it, so a bad number
ends the command at once with one line naming the flag and the value
(`keras-branch train: error: argument --batch-size: must be an int >= 1.
Received: '0'`), exit status 2, before any data is loaded or any file is
written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: Seeds are what numpy and TensorFlow accept: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


#: What `--data` takes, in every subcommand's help.
DATA_HELP = ("'planted[:opts]', 'omniglot:PATH', 'celeba[:opts]' or 'npz:PATH' "
             "(your own arrays, see keras_branch.data.arrays)")


def examples(*lines: str) -> str:
    """A `--help` epilog of example command lines.

    Args:
        *lines: the command lines, each shown on its own indented line.

    Returns:
        The epilog text (for a parser with `HelpFormatter`, which keeps it as written).

    Example:
    >>> print(examples("keras-branch demo"))
    example:
      keras-branch demo
    """
    return ("examples:" if len(lines) > 1 else "example:") + "".join(f"\n  {line}" for line in lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` with every default shown and the epilog's example lines kept as written.

    A flag's default is appended as `(default: ...)` unless its help already
    says what the default is, or it has none to show (None, an empty list,
    an off switch).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] \
            or default is argparse.SUPPRESS  # `is`: a default of 0 is shown
        if nothing or "default" in help.lower():
            return help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage block) and exit 2.

    Its help shows every default (`HelpFormatter`). Subparsers made by
    `add_subparsers` inherit the class.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        message = " ".join(str(message).split())
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def argument_type(convert: Callable[[str], Any], accept: Callable[[Any], bool],
                  wanted: str) -> Callable[[str], Any]:
    """An argparse type: `convert(text)` when `accept` takes it, else a one-line error.

    Args:
        convert: text -> value (`int`, `float`); its ValueError means refused.
        accept: whether a converted value is allowed (NaN fails comparisons).
        wanted: what the flag takes, for the message ("an int >= 1").

    Example:
    >>> argument_type(int, lambda v: v % 2 == 0, "an even int")("4")
    4
    """

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}. Received: {text!r}")
        return value

    parse.__name__ = wanted
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= `minimum`.

    Example:
    >>> int_at_least(1)("3")
    3
    """
    return argument_type(int, lambda v: v >= minimum, f"an int >= {minimum}")


def finite_float(minimum: float = 0.0, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float above `minimum` (or at it, with `inclusive`).

    Example:
    >>> finite_float()("3e-3")
    0.003
    """
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    return argument_type(
        float, lambda v: math.isfinite(v) and (v >= minimum if inclusive else v > minimum),
        f"a finite number {bound}",
    )


#: A seed: an int in 0 .. 2**32 - 1.
seed = argument_type(int, lambda v: 0 <= v <= MAX_SEED, f"an int from 0 to {MAX_SEED} (2**32 - 1)")
#: A number in (0, 1] (a scale factor).
fraction = argument_type(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
#: A number in [0, 1].
probability = argument_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")

#: The common cases, named for the flags that use them.
positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = finite_float(0.0)
non_negative_float = finite_float(0.0, inclusive=True)


def parse_budget(text: str) -> int | str:
    """`--budget`: an integer stays an int; "2x" and floats are resolved by the search."""
    return int(text) if text.isdigit() else text


def key_values(items: Sequence[str], flag: str, error: type[Exception]) -> dict:
    """`KEY=VALUE` flags as a dict, each VALUE parsed as JSON when it is JSON.

    Args:
        items: the flag's values.
        flag: the flag's name, for the error message.
        error: the exception type raised for an item without `=`.
    """
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise error(f"{flag} must be KEY=VALUE. Received: {item!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def add_out_arguments(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """`--out PATH` and `--overwrite`, with one meaning in every subcommand.

    An existing `--out` is refused unless `--overwrite`, and even then only
    a folder keras_branch wrote is replaced (see `keras_branch.files`).

    Args:
        parser: the subcommand's parser.
        help: what `--out` is ("run folder to write").
        required: whether `--out` must be given.
    """
    parser.add_argument("--out", required=required, default=None, help=help)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (only a folder keras_branch wrote)")
