"""The shared test helper itself: it passes good objects and catches bad ones."""

import keras
import numpy as np
import pytest

from keras_branch.testing import run_layer_test, run_model_test


def test_layer_helper_passes_a_keras_layer():
    run_layer_test(keras.layers.Dense, {"units": 3}, (4, 5), (4, 3))


def test_layer_helper_catches_wrong_shapes():
    with pytest.raises(AssertionError, match="symbolic output shapes"):
        run_layer_test(keras.layers.Dense, {"units": 3}, (4, 5), (4, 2))


class ForgetfulDense(keras.layers.Dense):
    """get_config drops `units`: from_config would fail or differ."""

    def get_config(self):
        config = super().get_config()
        config["units"] = 1
        return config


def test_layer_helper_catches_config_that_does_not_round_trip():
    with pytest.raises(AssertionError, match="builds a different layer"):
        run_layer_test(ForgetfulDense, {"units": 3}, (4, 5), (4, 3))


def test_model_helper_catches_wrong_output_shapes():
    from keras_branch import Task, TreeSpec, backbones, build_model

    def make():
        return build_model(TreeSpec.shared(["y"], 1), backbones.mlp(4, widths=(3,)),
                           [Task("y", "regression")])

    x = np.ones((3, 4), "float32")
    y = {"y": np.zeros((3,), "float32")}
    with pytest.raises(AssertionError, match="symbolic output shapes"):
        run_model_test(make, x, y, {"y": (None, 3)})
