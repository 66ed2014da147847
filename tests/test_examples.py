"""Smoke tests: every example's main() runs on tiny settings and learns something."""

from pathlib import Path

from conftest import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    return load_script(EXAMPLES / f"{name}.py")


def test_custom_spec_example():
    results = load("custom_spec").main(epochs=2)
    assert set(results) == {"tree", "shared"}
    assert all(0 < v < 1.0 for v in results.values())  # better than predicting the mean


def test_own_fit_loop_example():
    logs = load("own_fit_loop").main(epochs=10)
    assert logs["sign_accuracy"] > 0.9 and logs["bucket_accuracy"] > 0.8
