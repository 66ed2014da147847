"""Task weighting: how a multi-task model combines its task losses.

How tasks share layers is the TreeSpec's business; how their losses combine
is the weighting's (LibMTL keeps the two axes apart too). `equal` (the sum
of the masked task losses, each times its `Task.loss_weight`) is the
default; the others attach to a `TaskModel` through
`compile_model(model, weighting=...)`, `fit_spec(..., weighting=...)` or
`keras-branch train --weighting NAME[:KEY=VALUE,...]`:

| name          | class          | level    | settings                          |
|---------------|----------------|----------|-----------------------------------|
| `equal`       | (none)         | -        | -                                 |
| `fixed`       | `Fixed`        | loss     | `weights` (task -> weight)        |
| `uncertainty` | `Uncertainty`  | loss     | -                                 |
| `dwa`         | `DWA`          | loss     | `temperature` (2.0)               |
| `gradnorm`    | `GradNorm`     | gradient | `alpha` (1.5), `learning_rate` (0.025) |
| `pcgrad`      | `PCGrad`       | gradient | `seed` (0)                        |
| `cagrad`      | `CAGrad`       | gradient | `c` (0.4)                         |

For `fixed`, `--weighting fixed:TASK=WEIGHT,...` names the tasks directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from keras_branch.cli_args import key_values
from keras_branch.errors import WeightingError
from keras_branch.weighting.base import Weighting
from keras_branch.weighting.gradient_level import (
    CAGrad,
    GradNorm,
    PCGrad,
    conflict_averse,
    gradnorm_step,
    project_conflicting,
)
from keras_branch.weighting.loss_level import DWA, Fixed, Uncertainty
from keras_branch.weighting.step import WeightingEpochs, weight_logs, weighted_train_step

WEIGHTINGS: dict[str, type[Weighting] | None] = {
    "equal": None,
    "fixed": Fixed,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
}


def get_weighting(weighting: str | Weighting | None, **settings: Any) -> Weighting | None:
    """A `Weighting` from a name and settings (None for `equal`).

    Args:
        weighting: a name of `WEIGHTINGS` (or `NAME:KEY=VALUE,...`, see
            `parse_weighting`), a `Weighting` (returned as is), or None
            (equal).
        **settings: the method's settings (see the table in the module doc).

    Returns:
        A fresh `Weighting`, or None for equal weighting.

    Raises:
        WeightingError: an unknown name or setting, naming the method and value.

    Example:
    >>> get_weighting("dwa", temperature=1.0).temperature
    1.0
    >>> get_weighting("equal") is None
    True
    >>> get_weighting("gradnorm:alpha=0.5").alpha
    0.5
    """
    if weighting is None or isinstance(weighting, Weighting):
        if settings:
            raise WeightingError(f"Settings go with a weighting's name. Received: {settings}")
        return weighting
    if isinstance(weighting, str) and ":" in weighting and not settings:
        return parse_weighting(weighting)
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise WeightingError(
            f"Unknown weighting; known: {', '.join(WEIGHTINGS)}. Received: weighting={weighting!r}")
    cls = WEIGHTINGS[weighting]
    if cls is None:
        if settings:
            raise WeightingError(f"equal takes no settings. Received: {settings}")
        return None
    takes = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    unknown = sorted(set(settings) - set(takes))
    if unknown:
        raise WeightingError(
            f"{weighting}: unknown setting {unknown[0]!r} (it takes {', '.join(takes)}). "
            f"Received: {unknown[0]}={settings[unknown[0]]!r}")
    return cls(**settings)


def parse_weighting(text: str, settings: Mapping[str, Any] | None = None) -> Weighting | None:
    """`NAME` or `NAME:KEY=VALUE,...` (the CLI's `--weighting`) as a `Weighting`.

    Values are read as JSON when they are JSON. For `fixed`, every key is a
    task name and every value its weight.

    Example:
    >>> parse_weighting("fixed:a=2,b=0.5").fixed_weights
    {'a': 2.0, 'b': 0.5}
    >>> parse_weighting("cagrad:c=0.2").c
    0.2
    """
    name, _, rest = str(text).partition(":")
    pairs = dict(settings or {})
    if rest:
        pairs.update(key_values(rest.split(","), f"--weighting {name}", WeightingError))
    if name == "fixed":
        pairs = {"weights": pairs} if pairs else {}
    return get_weighting(name.strip(), **pairs)


__all__ = [
    "CAGrad", "DWA", "Fixed", "GradNorm", "PCGrad", "Uncertainty", "WEIGHTINGS", "Weighting",
    "WeightingEpochs", "conflict_averse", "get_weighting", "gradnorm_step", "parse_weighting",
    "project_conflicting", "weight_logs", "weighted_train_step",
]
