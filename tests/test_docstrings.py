"""Every docstring example of keras_branch runs and says what the code does.

The modules are found on disk: every module of `keras_branch`,
`keras_branch.zoo` and `keras_branch.export` (the repository's `zoo/` and
`export/`) whose source holds a `>>>` example. They are imported by dotted
name with `importlib.import_module`, because some attributes shadow their
module (`keras_branch.search.learn_to_branch` is the function).

An example sees its module's names and, where the module lacks them, `keras`,
`np`, `tf`, the names in `keras_branch.__all__` (`Task`, `TreeSpec`,
`backbones`, `build_model`, ...), `planted_groups` and `load_data`. Examples
run in a temporary working directory laid out like the repository's parent:
`../shared` is the shared data folder, so the Omniglot path the docstrings use
resolves; docstrings that need Omniglot are skipped when it is absent.

An example that cannot run fast carries `# doctest: +SKIP` and its docstring
says why, as "not run as a doctest: <reason>" (checked below). Docstrings
that take longer than a few seconds are listed in `SLOW` and run with
`--runslow`.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_branch
import keras_branch.export
import keras_branch.zoo
from keras_branch.data import load_data, planted_groups

from conftest import OMNIGLOT_ZIP

PACKAGES = ("keras_branch", "keras_branch.zoo", "keras_branch.export")

#: docstring name -> why it is slow; these run only with --runslow.
SLOW = {
    "keras_branch.search.learn_to_branch.learn_to_branch":
        "about 30 s: the planted benchmark's search on 4000 samples",
    # One short training each, but a first fit compiles its train step (10-40 s on 2 cores).
    "keras_branch.zoo": "trains the planted-affinity entry for one epoch",
    "keras_branch.zoo.api.train": "trains the planted-affinity entry for one epoch",
    "keras_branch.callbacks.TensorBoardLogger": "trains a small MLP for one epoch",
    "keras_branch.soft_ordering_model.fit_soft_ordering": "trains a soft-ordering model for one epoch",
}

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
SKIP_REASON = re.compile(r"not\s+run\s+as\s+a\s+doctest:\s*\S")


def _common_names() -> dict:
    names = {name: getattr(keras_branch, name) for name in keras_branch.__all__}
    names.update(keras=keras, np=np, tf=tf, planted_groups=planted_groups, load_data=load_data)
    return names


def _modules_with_examples() -> list[str]:
    """Dotted names of the modules whose source holds a `>>>` example, found on disk."""
    found = set()
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts or ">>>" not in path.read_text(encoding="utf-8"):
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.add(".".join([package, *parts]))
    return sorted(found)


MODULES = _modules_with_examples()


def _docstring_tests(module) -> list[doctest.DocTest]:
    """The module's own docstring examples (not those of objects it imports)."""
    finder = doctest.DocTestFinder()
    tests = []
    for test in finder.find(module, module.__name__):
        if test.examples and test.filename and Path(test.filename) == Path(module.__file__):
            tests.append(test)
    return tests


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory whose `../shared` is the shared data folder."""
    shared = OMNIGLOT_ZIP.parents[2]
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _run(tests: list[doctest.DocTest], module) -> tuple[list[str], int, list[str]]:
    """Runs docstring tests; returns (failure reports, examples attempted, skipped names)."""
    reports: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    skipped = []
    for test in tests:
        if "shared/data/omniglot" in test.docstring and not OMNIGLOT_ZIP.exists():
            skipped.append(test.name)
            continue
        test.globs = {**_common_names(), **vars(module)}
        runner.run(test, out=reports.append)
    result = runner.summarize(verbose=False)
    return reports, result.attempted, skipped


def test_modules_are_found():
    # Guards the discovery: the known homes of examples are all in the list.
    for name in ("keras_branch.spec", "keras_branch.layers.branch_point",
                 "keras_branch.search.learn_to_branch", "keras_branch.zoo",
                 "keras_branch.zoo.api", "keras_branch.export", "keras_branch.export.tflite"):
        assert name in MODULES, f"{name} has examples but was not found"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, workdir):
    module = importlib.import_module(name)
    tests = [t for t in _docstring_tests(module) if t.name not in SLOW]
    if not tests:
        pytest.skip(f"{name}: only slow docstrings (run with --runslow)")
    reports, attempted, skipped = _run(tests, module)
    assert not reports, f"docstring examples of {name} failed:\n" + "".join(reports)
    if skipped and attempted == 0:
        pytest.skip(f"Omniglot data not found at {OMNIGLOT_ZIP}: {skipped}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_docstring_examples(name, workdir):
    # The longest importable prefix holding the docstring: a module's own
    # docstring is named like the module, an object's after its module.
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        tests = [t for t in _docstring_tests(module) if t.name == name]
        if tests:
            break
    assert tests, f"{name} (listed in SLOW) has no docstring examples"
    reports, attempted, _ = _run(tests, module)
    assert not reports, f"docstring examples of {name} failed:\n" + "".join(reports)
    assert attempted > 0


def test_skipped_examples_say_why():
    unexplained = []
    for name in MODULES:
        for test in _docstring_tests(importlib.import_module(name)):
            skips = [e for e in test.examples if e.options.get(doctest.SKIP)]
            if skips and not SKIP_REASON.search(test.docstring or ""):
                unexplained.append(f"{test.name} (line {test.lineno})")
    assert not unexplained, (
        "docstrings with `# doctest: +SKIP` examples must say why, as "
        f"'not run as a doctest: <reason>': {unexplained}"
    )
