import keras
import numpy as np
import pytest

from keras_branch import Backbone, BackboneError, backbones


def test_mlp_counts():
    bb = backbones.mlp(10, widths=(8, 4))
    assert bb.num_stages == 2
    assert [bb.stage_params(0), bb.stage_params(1)] == [88, 36]
    assert bb.feature_size() == 4 and bb.stem_params() == 0


def test_convnet4_counts_and_shapes():
    bb = backbones.convnet4((32, 32, 1), filters=64)
    # conv 3x3 without bias + batch norm (4 x filters, 2 of them moving stats)
    assert bb.stage_params(0) == 3 * 3 * 1 * 64 + 4 * 64
    assert bb.stage_params(1) == 3 * 3 * 64 * 64 + 4 * 64
    assert bb.stage_input_shape(3) == (4, 4, 64)
    assert bb.output_shape() == (2, 2, 64)
    assert bb.feature_size() == 256


def test_make_stage_gives_fresh_weights_with_given_name():
    bb = backbones.mlp(6, widths=(5,))
    one, two = bb.make_stage(0, name="s1_b0"), bb.make_stage(0, name="s1_b1")
    one.build((None, 6))
    two.build((None, 6))
    assert (one.name, two.name) == ("s1_b0", "s1_b1")
    assert not np.array_equal(one.kernel.numpy(), two.kernel.numpy())


def test_config_round_trip():
    bb = backbones.convnet4((28, 28, 1), filters=[8, 8, 16, 16])
    again = Backbone.from_config(bb.get_config())
    assert again.get_config() == bb.get_config()
    assert [again.stage_params(d) for d in range(4)] == [bb.stage_params(d) for d in range(4)]


def test_cut_keras_application_copies_weights():
    net = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    bb = backbones.from_keras_model(net, ["block_3_expand_relu", "block_6_expand_relu", "out_relu"])
    assert bb.num_stages == 3 and bb.pooling == "avg"
    total = bb.stem_params() + sum(bb.stage_params(d) for d in range(3))
    assert total == net.count_params()
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    y = x
    for d in range(3):
        y = bb.make_stage(d, name=f"s{d}")(y, training=False)
    np.testing.assert_allclose(np.asarray(y), np.asarray(net(x, training=False)), atol=1e-5)


def test_keras_application_from_local_weights(tmp_path):
    net = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    path = tmp_path / "mnv2.weights.h5"
    net.save_weights(path)
    bb = backbones.keras_application("MobileNetV2", (32, 32, 3), weights=str(path))
    first = bb.make_stage(0, name="s0")
    np.testing.assert_array_equal(first.get_weights()[0], net.get_layer("Conv1").get_weights()[0])
    with pytest.raises(BackboneError, match="Weights file does not exist"):
        backbones.keras_application("MobileNetV2", (32, 32, 3), weights=str(tmp_path / "none.h5"))


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: backbones.get("vgg99", (8,)), "Unknown backbone 'vgg99'"),
        (lambda: backbones.get("mlp", (8, 8, 1)), "needs flat inputs"),
        (lambda: backbones.get("convnet4", (8,)), "needs image inputs"),
        (lambda: backbones.mlp(4, widths=(4, 0)), "Received: (4, 0)"),
        (lambda: Backbone((4,), []), "non-empty list of stage layers"),
        (lambda: Backbone((0,), [keras.layers.Dense(2)]), "Received: (0,)"),
        (lambda: Backbone((4,), [keras.layers.Dense(2)], pooling="sum"), "Received: pooling='sum'"),
        (lambda: Backbone((4,), ["dense"]), "must be a Keras layer"),
        (lambda: Backbone((4,), [keras.layers.Dense(2), keras.layers.Conv2D(2, 3)]).stage_params(1),
         "do not chain"),
        (lambda: backbones.from_keras_model(
            keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None),
            ["no_such_layer"]), "names layer 'no_such_layer'"),
    ],
)
def test_bad_backbones(call, fragment):
    with pytest.raises(BackboneError) as err:
        call()
    assert fragment in str(err.value)


def test_a_seed_gives_the_same_weights_on_the_first_build_as_later():
    # The backbone's first shape analysis builds throwaway layers; it must not
    # move the random state a seeded build draws from.
    from keras_branch import Task, TreeSpec, build_model

    tasks = [Task("a", "regression"), Task("b", "binary")]

    def weights(bb):
        keras.utils.set_random_seed(3)
        return build_model(TreeSpec.shared(["a", "b"], 2), bb, tasks).get_weights()

    bb = backbones.mlp(6, widths=(5, 4))
    first, second = weights(bb), weights(bb)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
