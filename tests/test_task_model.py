"""TaskModel.fit builds its training state first, so TensorFlow traces the step once."""

import numpy as np
import pytest
import tensorflow as tf

from keras_branch import TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model
from keras_branch.data import planted_groups
from keras_branch.seeding import seeded_layers
from keras_branch.task_model import TaskModel

DATA = planted_groups(group_sizes=(2, 1), num_train=96, num_validation=32, num_test=32, dim=12,
                      seed=0)


def _model(weighting=None):
    spec = TreeSpec.from_partitions([[DATA.task_names], [DATA.task_names[:2], DATA.task_names[2:]]])
    with seeded_layers(0):
        model = build_model(spec, backbones.mlp(12, (8, 8)), DATA.tasks)
    return compile_model(model, weighting=weighting)


def _fit(model, monkeypatch, build=True):
    """Fits two epochs and returns (history, weights, how many times the step was traced)."""
    traced = []
    step = model.train_step
    monkeypatch.setattr(model, "train_step", lambda data: (traced.append(1), step(data))[1])
    if not build:  # Keras' own way: the state is created while tracing the first step
        monkeypatch.setattr(model, "build_training_state", lambda *args: False)
    dataset = DATA.epoch_dataset("train", 32, 0, 0, 2, None)
    history = model.fit(dataset, epochs=2, steps_per_epoch=DATA.steps("train", 32), verbose=0)
    return history.history, [np.array(w) for w in model.get_weights()], len(traced)


@pytest.mark.parametrize("weighting", [None, "uncertainty"])
def test_fit_traces_its_step_once_and_trains_as_keras_does(monkeypatch, weighting):
    history, weights, traced = _fit(_model(weighting), monkeypatch)
    assert traced == 1
    reference, reference_weights, reference_traced = _fit(_model(weighting), monkeypatch, build=False)
    assert reference_traced == 2  # what the eager build saves
    # The zero sample left no trace: same losses and metrics, same weights, bit for bit.
    assert history == reference
    for a, b in zip(weights, reference_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_build_training_state_from_arrays_and_when_it_does_nothing():
    train = DATA.split("train")
    model = _model()
    assert model.build_training_state(train.x, train.y)
    assert model.optimizer.built
    assert not model.build_training_state(train.x, train.y)  # built already
    # Not compiled, no labels, or under a strategy: left to Keras.
    spec = TreeSpec.shared(DATA.task_names, num_stages=1)
    assert not build_model(spec, backbones.mlp(12, (8,)), DATA.tasks).build_training_state(train.x, train.y)
    assert not _model().build_training_state(train.x)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        mirrored = _model()
    assert not mirrored.build_training_state(train.x, train.y)
    assert isinstance(mirrored, TaskModel) and not mirrored.optimizer.built


def test_data_that_does_not_fit_the_model_gets_keras_own_error():
    train = DATA.split("train")
    wrong = np.zeros((len(train), 5), "float32")  # the model takes 12 features
    model = _model()
    assert not model.build_training_state(wrong, train.y)
    assert not model.optimizer.built
    with pytest.raises(ValueError, match=r"expected shape=\(None, 12\), found shape=\(.*, 5\)"):
        model.fit(wrong, train.y, epochs=1, verbose=0)
