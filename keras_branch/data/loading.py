"""Data sets by name, as the CLI spells them (`planted`, `omniglot:PATH`)."""

from __future__ import annotations

from typing import Any

from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import DataError

_FORMS = ("'planted', 'planted:seed=1,kind=binary', 'omniglot:PATH', "
          "'celeba[:data_dir=DIR,train=N,validation=N,test=N,download=1]' or 'npz:PATH'")


def _parse_options(text: str, allowed: dict[str, type]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise DataError(
                f"--data: unknown option {item!r}; options are {sorted(allowed)}."
            )
        kind = allowed[key]
        try:
            if kind is tuple:
                options[key] = tuple(int(v) for v in value.split("-"))
            else:
                options[key] = kind(value)
        except ValueError:
            raise DataError(f"--data: option {key} needs a {kind.__name__}. Received: {value!r}") from None
    return options


def load_data(source: str, image_size: int = 32, **kwargs: Any) -> MultiTaskData:
    """Loads a data set from its CLI form.

    Args:
        source: `"planted"` (options after a colon: `seed`, `kind`,
            `groups` as dash-separated sizes, `train`, `dim`), or
            `"omniglot:PATH"` (a zip or folder in the Omniglot layout), or
            `"celeba"` (TFDS' `celeb_a`; options `data_dir`, `train`,
            `validation`, `test` (first N of a split) and `download=1`), or
            `"npz:PATH"` (your own arrays, see `keras_branch.data.arrays`).
        image_size: image side for image data sets.
        **kwargs: further arguments of the loader.

    Example:
    >>> load_data("planted:seed=1,groups=3-3-2").task_names[:2]
    ['g0_t0', 'g0_t1']
    """
    if not isinstance(source, str) or not source:
        raise DataError(f"--data must be one of {_FORMS}. Received: {source!r}")
    name, _, rest = source.partition(":")
    if name == "planted":
        from keras_branch.data.planted import planted_groups

        options = _parse_options(
            rest,
            {"seed": int, "kind": str, "groups": tuple, "train": int, "dim": int},
        )
        renames = {"groups": "group_sizes", "train": "num_train"}
        options = {renames.get(k, k): v for k, v in options.items()}
        return planted_groups(**options, **kwargs)
    if name == "omniglot":
        from keras_branch.data.omniglot import load_omniglot

        if not rest:
            raise DataError("--data omniglot needs a path: 'omniglot:PATH'.")
        return load_omniglot(rest, image_size=image_size, **kwargs)
    if name == "celeba":
        from keras_branch.data.celeba import load_celeba

        options = _parse_options(
            rest, {"data_dir": str, "train": int, "validation": int, "test": int, "download": int},
        )
        renames = {"train": "num_train", "validation": "num_validation", "test": "num_test"}
        options = {renames.get(k, k): v for k, v in options.items()}
        options["download"] = bool(options.get("download", 0))
        return load_celeba(image_size=image_size, **options, **kwargs)
    if name == "npz":
        from keras_branch.data.arrays import load_npz

        if not rest:
            raise DataError("--data npz needs a path: 'npz:PATH'.")
        return load_npz(rest)
    raise DataError(f"--data must be one of {_FORMS}. Received: {source!r}")
