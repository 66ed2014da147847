"""zoo/ and export/ install inside the keras_branch namespace, never as bare names."""

import importlib.metadata
from pathlib import Path


def test_only_keras_branch_is_a_top_level_package():
    # Beside the package, one module: the console script's launcher, which must not
    # import keras_branch (and with it TensorFlow) before it has quieted TensorFlow.
    top_level = importlib.metadata.distribution("keras-branch").read_text("top_level.txt")
    assert sorted(top_level.split()) == ["keras_branch", "keras_branch_launcher"]


def test_zoo_and_export_live_under_keras_branch():
    import keras_branch.export
    import keras_branch.zoo

    assert Path(keras_branch.zoo.__file__).parent.name == "zoo"
    assert Path(keras_branch.export.__file__).parent.name == "export"


def test_every_source_package_is_declared():
    # A package missing from setup.cfg's `packages` is left out of a non-editable install.
    import configparser

    repo = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(repo / "setup.cfg")
    declared = set(config["options"]["packages"].split())
    roots = {"keras_branch": repo / "keras_branch", "keras_branch.zoo": repo / "zoo",
             "keras_branch.export": repo / "export"}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    assert found == declared


def test_console_script_is_declared():
    scripts = importlib.metadata.distribution("keras-branch").entry_points
    assert {(e.name, e.value) for e in scripts if e.group == "console_scripts"} == {
        ("keras-branch", "keras_branch_launcher:main")
    }


def test_the_launcher_imports_neither_tensorflow_nor_keras_branch():
    import subprocess
    import sys

    code = ("import sys, keras_branch_launcher; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'keras_branch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _required_distributions(name: str) -> set[str]:
    """Every distribution `name` pulls in, as installed (markers evaluated, no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [canonicalize_name(name)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            requires = importlib.metadata.requires(current) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a marker-free optional the platform skipped
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_install_pulls_keras_hub_but_neither_keras_cv_nor_keras_core():
    pulled = _required_distributions("keras-branch")
    assert {"tensorflow", "keras", "keras-hub"} <= pulled
    assert not pulled & {"keras-cv", "keras-core"}
