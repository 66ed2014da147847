"""The resumable search state: one JSON file plus a weights file per kept candidate.

`SearchState` keeps, per task visit, the population (root, other tasks'
paths, kept children), how many candidates were scored and which block ids
the visit's clones took; and the whole candidate log. With a folder it writes
`state.json` after every candidate (weights first, then the state that refers
to them), so a run killed at any point and rerun with the same arguments
resumes where it stopped and keeps every scored candidate.

Folder layout: `state.json`, `system.npz` (the system at the last finished
visit), `candidates/{pass}_{task index}_{entry id}.npz`.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_branch.errors import SearchError
from keras_branch.files import atomic_write_json, claim_folder
from keras_branch.search.evolution.selection import score
from keras_branch.search.evolution.system import EvolvedSystem, TaskPath, owned_by
from keras_branch.search.evolution.weights import load_weights, save_weights
from keras_branch.tasks import Task

__all__ = ["STATE_FILE", "SearchState", "Visit"]

#: The state file inside a state folder.
STATE_FILE = "state.json"

#: A task visit: (pass, index of the task in the visiting order).
Visit = tuple[int, int]


class SearchState:
    """The search state, in memory and (with a folder) on disk.

    Args:
        directory: the state folder, or None to keep the state in memory
            only. A folder holding `state.json` is resumed (its config must
            equal `config`); otherwise it must be new or empty.
        config: the search's arguments; a resumed folder must match them.
        system: the system the search starts from (replaced by the saved
            one when resuming).
        say: progress lines.

    Example (not run as a doctest: `evolve` creates it from its settings and system):
    >>> state = SearchState("run.state", config, system, print)  # doctest: +SKIP
    >>> system = state.system  # the resumed system, if any  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike | None, config: dict[str, Any],
                 system: EvolvedSystem, say: Callable[[str], None]):
        self.dir = None if directory is None else os.fspath(directory)
        self.config = config
        self.say = say
        self.system = system
        self.visits: dict[str, dict] = {}
        self.history: list[dict] = []
        self.current: Visit | None = None
        self._memory: dict[str, dict] = {}
        if self.dir is not None and os.path.isfile(os.path.join(self.dir, STATE_FILE)):
            self._resume()
        elif self.dir is not None:
            claim_folder(self.dir, "evolution state folder")
            save_weights(os.path.join(self.dir, "system.npz"), system.weights)
            self._write()

    # --- persistence ---

    def _resume(self) -> None:
        with open(os.path.join(self.dir, STATE_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        if saved["config"] != json.loads(json.dumps(self.config)):
            raise SearchError(
                f"State folder {self.dir!r} belongs to another search "
                f"({saved['config']}); use another --state folder or remove it."
            )
        self.visits = saved["visits"]
        self.history = saved["history"]
        self.system = EvolvedSystem.from_meta(
            saved["system"], load_weights(os.path.join(self.dir, "system.npz"))
        )
        done = sum(1 for record in self.history if "final" not in record)
        self.say(f"resuming from {self.dir}: {done} candidate(s) already scored")

    def _write(self) -> None:
        if self.dir is None:
            return
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_json(os.path.join(self.dir, STATE_FILE), {
            "config": self.config, "visits": self.visits, "history": self.history,
            "system": self.system.describe(),
        })

    # --- visits ---

    @staticmethod
    def _key(visit: Visit) -> str:
        return f"{visit[0]}:{visit[1]}"

    def finished(self, visit: Visit) -> bool:
        """Whether `visit` installed its best path already."""
        return self.visits.get(self._key(visit), {}).get("finished", False)

    def done_in_visit(self, visit: Visit) -> int:
        """How many candidates of `visit` were scored."""
        return self.visits.get(self._key(visit), {}).get("done", 0)

    def population(self, visit: Visit, task: Task) -> list[dict]:
        """The population of `visit` (made on the first call), and `visit` becomes current.

        A new population holds the root path, every task's installed path and,
        for `task`'s own path (a later pass), its weights and its score, with
        the size term recomputed as other tasks may share its blocks now.

        Args:
            visit: (pass, task index).
            task: the task visited.

        Returns:
            The population (the state's own list: the search appends to it).
        """
        self.current = visit
        key = self._key(visit)
        if key not in self.visits:
            system = self.system
            seeds = [{"id": "root", "path": TaskPath.root(system.backbone.num_stages).to_dict(),
                      "score": None, "children": 0, "trained": False}]
            for other in system.task_names:
                own = other == task.name
                entry = {"id": f"task:{other}", "path": system.path(other).to_dict(),
                         "score": None, "children": 0, "trained": own}
                if own:
                    # Its adapters and head carry over; its quality stands, its
                    # size term is recomputed as other tasks may share its blocks now.
                    self._memory[f"{key}/{entry['id']}"] = {
                        n: w for n, w in system.weights.items() if owned_by(n, task)
                    }
                    quality = system.scores[other]["quality"]
                    params = system.accounted_params(task, system.path(other))
                    entry.update(quality=quality, params=params,
                                 score=score(quality, params, system.root_params,
                                             self.config["scale"]))
                seeds.append(entry)
            self.visits[key] = {"population": seeds, "done": 0, "finished": False, "ids": {}}
            if self.dir is not None:
                for entry in seeds:
                    if entry["trained"]:
                        save_weights(self._weights_path(key, entry["id"]),
                                     self._memory[f"{key}/{entry['id']}"])
        return self.visits[key]["population"]

    def taken_ids(self, stage: int) -> set[int]:
        """Block ids of `stage` that candidates of the current visit took."""
        ids = self.visits[self._key(self.current)]["ids"]
        return set(ids.get(str(stage), []))

    def claim_ids(self, path: TaskPath) -> None:
        """Marks the block ids `path` uses as taken in the current visit."""
        ids = self.visits[self._key(self.current)]["ids"]
        for d, b in enumerate(path.route[: path.depth]):
            ids.setdefault(str(d), [])
            if b not in ids[str(d)]:
                ids[str(d)].append(b)

    def _weights_path(self, key: str, entry_id: str) -> str:
        name = f"{key.replace(':', '_')}_{entry_id.replace(':', '_')}.npz"
        return os.path.join(self.dir, "candidates", name)

    def load_weights(self, entry_id: str, visit: Visit,
                     started: bool = False) -> dict[str, list[np.ndarray]]:
        """The weights of a kept entry of `visit` (empty if it has none).

        With `started`, the weights it started from, where `record` kept them
        (the components that were not freshly initialised).
        """
        key = self._key(visit)
        entry_id = _started(entry_id) if started else entry_id
        memory = self._memory.get(f"{key}/{entry_id}")
        if memory is not None:
            return memory
        if self.dir is None:
            return {}
        path = self._weights_path(key, entry_id)
        return load_weights(path) if os.path.isfile(path) else {}

    def record(self, visit: Visit, record: dict, entry: dict | None, weights: dict | None,
               started: dict | None = None) -> None:
        """Logs a scored candidate and, when kept (`entry`), its weights; then writes the state.

        `started`, with a kept entry: the weights it started from (None
        values, fresh components, are left out), kept beside its weights
        for `load_weights(..., started=True)`.
        """
        key = self._key(visit)
        if entry is not None:
            stored = {entry["id"]: weights}
            if started is not None:
                stored[_started(entry["id"])] = {n: w for n, w in started.items() if w is not None}
            for entry_id, values in stored.items():
                self._memory[f"{key}/{entry_id}"] = values
                if self.dir is not None:
                    # Weights first, then the state that refers to them.
                    save_weights(self._weights_path(key, entry_id), values)
        self.visits[key]["done"] += 1
        self.history.append(record)
        self._write()

    def finish(self, visit: Visit, system: EvolvedSystem) -> None:
        """Marks `visit` finished with `system` (its best path installed); then writes the state."""
        self.system = system
        key = self._key(visit)
        self.visits[key]["finished"] = True
        # Nothing reads a finished visit's candidates again: free their weights.
        for name in [n for n in self._memory if n.startswith(f"{key}/")]:
            del self._memory[name]
        if self.dir is not None:
            save_weights(os.path.join(self.dir, "system.npz"), system.weights)
        self._write()


def _started(entry_id: str) -> str:
    """Where the weights a kept entry started from are kept (`SearchState.record`)."""
    return f"{entry_id}.start"
