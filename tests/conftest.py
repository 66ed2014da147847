"""Test configuration: isolated KERAS_HOME, quiet TF, the --runslow flag."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Keras writes ~/.keras/keras.json on import; keep tests off the user's home,
# in a folder removed when this process ends (each xdist worker has its own).
if "KERAS_HOME" not in os.environ:
    os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras_home_")
    atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ZIP = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.fixture(scope="session")
def omniglot_zip() -> Path:
    if not OMNIGLOT_ZIP.exists():
        pytest.skip(f"Omniglot data not found at {OMNIGLOT_ZIP} (../shared beside the repo)")
    return OMNIGLOT_ZIP


def load_script(path: Path, name: str | None = None):
    """A script (a benchmark, an example) imported as a module by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
