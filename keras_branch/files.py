"""Atomic file and folder writing, and the rule for deleting: only what we made.

Nothing half-written is ever left behind (a temporary name, then a rename),
and keras_branch removes or replaces a folder only when the folder carries
its marker file (`OWNER_MARKER`), which it writes into every folder it
creates: a user's own folder given as an output, checkpoint or state path
is refused or left in place, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from keras_branch.errors import OutputError, OutputExistsError

# Written into every folder keras_branch creates; only such folders are ever removed.
OWNER_MARKER = ".keras-branch"


_CREATED, _BORROWED = "created", "borrowed"


def _marker(path: str) -> str | None:
    """The marker's state in folder `path` ("created" or "borrowed"), or None."""
    if not os.path.isdir(path) or os.path.islink(path):
        return None
    try:
        with open(os.path.join(path, OWNER_MARKER), encoding="utf-8") as f:
            state = f.readline().strip()
    except OSError:
        return None
    return _BORROWED if state == _BORROWED else _CREATED


def _mark(path: str, state: str = _CREATED) -> None:
    with open(os.path.join(path, OWNER_MARKER), "w", encoding="utf-8") as f:
        f.write(f"{state}\nwritten by keras_branch, which removes only folders it marked\n")


def is_owned_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder (not a link) that keras_branch created."""
    return _marker(os.fspath(path)) == _CREATED


def claim_folder(path: str | os.PathLike, field: str = "folder") -> str:
    """Makes `path` a working folder (checkpoints, search state) without taking a user's folder.

    A missing path is created and marked as keras_branch's own, so
    `remove_owned_folder` deletes it later. A folder claimed before is
    reused (that is how a killed run resumes). An existing empty folder is
    borrowed: used, and emptied again by `remove_owned_folder`, but never
    deleted. Anything else (a file, a folder with someone else's files) is
    refused.

    Args:
        path: the folder.
        field: how the error message names it (e.g. "--checkpoint-dir").

    Returns:
        `path` as a string.

    Raises:
        OutputExistsError: `path` is a file, or a non-empty folder that
            keras_branch did not claim.
    """
    path = os.fspath(path)
    if not path:
        raise OutputExistsError(f"{field} must be a folder path. Received: {path!r}")
    if _marker(path) is not None:
        return path
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise OutputExistsError(f"{field} exists and is not a folder: {path!r}")
        if os.listdir(path):
            raise OutputExistsError(
                f"{field} is a folder keras-branch did not create and it is not empty: "
                f"{path!r}; give a new or empty folder."
            )
        _mark(path, _BORROWED)
        return path
    os.makedirs(path)
    _mark(path)
    return path


def remove_owned_folder(path: str | os.PathLike) -> bool:
    """Undoes `claim_folder`: deletes a folder keras_branch created, empties one it borrowed.

    Any other path is left as it is.

    Returns:
        True when something was removed.
    """
    path = os.fspath(path)
    state = _marker(path)
    if state == _CREATED:
        shutil.rmtree(path, ignore_errors=True)
    elif state == _BORROWED:
        # The folder was empty when it was claimed: everything in it is ours.
        for name in os.listdir(path):
            _remove(os.path.join(path, name))
    return state is not None


def _remove(entry: str) -> None:
    """Deletes a file, link or folder (a folder with everything in it); a missing one is fine."""
    if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(entry)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    """Writes `text` to `path` through a temporary file and a rename (see `atomic_path`)."""
    path = os.fspath(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def strict_json(data: Any, what: str, indent: int | None = 2) -> str:
    """`data` as standard JSON text: NaN and infinity are refused, never written.

    Python's `json` writes them as the tokens `NaN` and `Infinity`, which
    standard JSON (RFC 8259) and most readers other than Python refuse.

    Args:
        data: JSON-ready data.
        what: the file or object being written, for the message.
        indent: as `json.dumps`.

    Returns:
        The JSON text.

    Raises:
        OutputError: naming `what` and where in `data` a non-finite number is.

    Example:
    >>> strict_json({"loss": float("nan")}, "m.json")
    Traceback (most recent call last):
    ...
    keras_branch.errors.OutputError: Cannot write 'm.json' as standard JSON: ["loss"] is nan (JSON has no NaN or infinity).
    """
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        where, value = _first_non_finite(data)
        raise OutputError(f"Cannot write {what!r} as standard JSON: {where or 'the value'} is "
                          f"{value!r} (JSON has no NaN or infinity).") from None


def _first_non_finite(data: Any, where: str = "") -> tuple[str, Any]:
    """The place (`["a"][0]`) and value of the first NaN or infinity in `data`, else ("", None)."""
    if isinstance(data, float) and not math.isfinite(data):
        return where, data
    if isinstance(data, dict):
        items = ((f"[{json.dumps(str(k))}]", v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(data))
    else:
        return "", None
    for step, value in items:
        found = _first_non_finite(value, where + step)
        if found[0]:
            return found
    return "", None


def atomic_write_json(path: str | os.PathLike, data: Any, overwrite: bool = True) -> None:
    """Writes `data` as indented standard JSON to `path`, atomically (see `atomic_path`).

    Raises:
        OutputError: `data` holds NaN or infinity (see `strict_json`);
            nothing is written then.
    """
    text = strict_json(data, os.fspath(path))
    atomic_write_text(path, text + "\n", overwrite=overwrite)


def _temp_prefix(stem: str) -> str:
    # The writer's pid is part of the name, so a later run can tell a
    # temporary left by a killed process from one still being written.
    return f".{stem}.kbtmp-"


# The temporaries this process is writing now (`atomic_path`), by path.
_WRITING: set[str] = set()


def _remove_stale_temporaries(parent: str, stem: str, suffix: str) -> None:
    """Removes temporaries of `atomic_path` for the same target whose writer is gone.

    The writer is gone when no process has its pid, or when the pid is this
    process's own but this process is not writing that temporary (a killed
    run whose pid came back, as happens in containers).
    """
    prefix, end = _temp_prefix(stem), f".tmp{suffix}"
    for name in os.listdir(parent):
        if not (name.startswith(prefix) and name.endswith(end)):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        entry = os.path.join(parent, name)
        pid = int(pid_text)
        if (pid == os.getpid() and entry not in _WRITING) or not _process_alive(pid):
            _remove(entry)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The temporary name keeps the final suffix (Keras checks that a model file
    ends in `.keras`). A folder written there gets keras_branch's marker
    (`OWNER_MARKER`). On an exception the temporary file or folder is removed
    and `path` is left as it was. Temporaries for the same `path` left by a
    process that was killed mid-write (`.NAME.kbtmp-PID-*.tmp[SUFFIX]`,
    whose PID no longer runs, or is this process's own) are removed first;
    nothing else beside `path` is touched.

    With `overwrite`, an existing file at `path` is replaced, and so is an
    existing folder that keras_branch created; any other folder is refused.
    """
    path = os.fspath(path)
    if not path:
        raise OutputExistsError(f"The output path is empty. Received: {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(
                f"Output path exists: {path!r}; choose another or ask to overwrite it."
            )
        if os.path.isdir(path) and not os.path.islink(path) and not is_owned_folder(path):
            raise OutputExistsError(
                f"Output path is a folder keras-branch did not create: {path!r}; it is "
                f"never replaced, even with overwrite. Choose another path."
            )
    base = os.path.basename(path)
    stem, suffix = os.path.splitext(base)
    _remove_stale_temporaries(parent, stem, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(stem)}{os.getpid()}-",
                               suffix=f".tmp{suffix}", dir=parent)
    os.close(fd)
    os.remove(tmp)  # the writer creates it (a file or a folder)
    _WRITING.add(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            _mark(tmp)
        if is_owned_folder(path):
            shutil.rmtree(path)
        elif os.path.lexists(path) and os.path.isdir(tmp):
            os.remove(path)  # a file (or link) replaced by a folder: overwrite was asked for
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _WRITING.discard(tmp)
