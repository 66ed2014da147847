"""`SearchResult`: what every search returns, and its folder on disk.

The affinity search, Learning to Branch and evolution each find a TreeSpec;
what else they measure and make differs. One type carries all of it:

- `spec`: the tree found;
- `scores`: JSON-able measurements (the tree's cost and parameters, the
  branching margins, test metrics, the settings used);
- `artifacts`: the objects behind them (a `TaskAffinity`, the Pareto front,
  the trained supernet, the evolved system and its model, histories);
- `seconds`: wall time per phase;
- `save(out_dir)`: one folder, written atomically: `tree.json`,
  `search.json` (method, spec, scores, seconds) and the files the search
  declared (`files`: file name -> writer), such as `affinity.png`.

Artifacts and scores also read as attributes (`result.affinity`,
`result.branching`), artifacts first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from keras_branch.files import atomic_path, atomic_write_json
from keras_branch.spec import TreeSpec

# The files every saved search holds; a search's own files may not replace them.
COMMON_FILES = ("tree.json", "search.json")


@dataclasses.dataclass
class SearchResult:
    """The tree a search found, its scores and artifacts (see the module docstring).

    Attributes:
        method: the search (`"affinity"`, `"ltb"`, `"evolution"`).
        spec: the `TreeSpec` found.
        scores: JSON-able measurements of the search.
        artifacts: the objects the search made (not saved as such).
        seconds: wall time per phase of the search.
        files: file name -> `writer(path)`, the search's own files in `save`.

    Example:
    >>> result = SearchResult("affinity", TreeSpec.shared(["a", "b"], 2), {"cost": 0.5}, {}, {})
    >>> result.cost
    0.5
    """

    method: str
    spec: TreeSpec
    scores: dict[str, Any]
    artifacts: dict[str, Any]
    seconds: dict[str, float]
    files: dict[str, Callable[[str], Any]] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields (dataclass fields are set
        # in __init__); guard the fields so a half-built copy cannot recurse.
        if name.startswith("_") or name in ("artifacts", "scores"):
            raise AttributeError(name)
        if name in self.artifacts:
            return self.artifacts[name]
        if name in self.scores:
            return self.scores[name]
        raise AttributeError(
            f"{type(self).__name__} of method {self.method!r} has no field, artifact or score "
            f"{name!r}; artifacts: {sorted(self.artifacts)}, scores: {sorted(self.scores)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """`search.json`'s content: method, spec, scores and seconds."""
        return {"method": self.method, "spec": self.spec.to_dict(), "scores": self.scores,
                "seconds": self.seconds}

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
        """Writes the search as one folder, atomically (it appears whole or not at all).

        Args:
            out_dir: the folder to create.
            overwrite: replace an existing keras_branch folder there.

        Returns:
            `out_dir`, as a string.
        """
        clash = sorted(set(self.files) & set(COMMON_FILES))
        if clash:
            raise ValueError(f"A search's own files may not be named {clash}.")
        with atomic_path(out_dir, overwrite=overwrite) as tmp:
            os.makedirs(tmp)
            self.spec.save(os.path.join(tmp, "tree.json"))
            atomic_write_json(os.path.join(tmp, "search.json"), self.to_dict())
            for name, write in self.files.items():
                write(os.path.join(tmp, name))
        return os.fspath(out_dir)
