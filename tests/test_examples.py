"""Smoke tests: every example's main() runs on tiny settings and learns something."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_spec_example():
    results = load("custom_spec").main(epochs=2)
    assert set(results) == {"tree", "shared"}
    assert all(0 < v < 1.0 for v in results.values())  # better than predicting the mean


def test_own_fit_loop_example():
    logs = load("own_fit_loop").main(epochs=10)
    assert logs["sign_accuracy"] > 0.9 and logs["bucket_accuracy"] > 0.8
