"""keras-hub backbones, offline: a `keras_hub.models.ResNetBackbone` built from
constructor arguments (or a preset saved into tmp_path) is cut at its stage
outputs, routed by a TreeSpec, trained with `fit`, saved as `.keras` and exported
to SavedModel and TFLite."""

import doctest
import json

import keras
import keras_hub
import numpy as np
import pytest

from keras_branch import BackboneError, Task, TreeSpec, backbones, build_model, hub
from keras_branch.export import export_model
from keras_branch.testing import check_save_load, run_model_test

SHAPE = (32, 32, 3)
TASKS = [Task("digit", "multiclass", classes=4), Task("odd", "binary"), Task("size", "regression")]
NAMES = [t.name for t in TASKS]
# Stage 1 shared, stage 2 splits {digit, odd} from size, stage 3 one block each.
SPEC = TreeSpec.from_partitions([[NAMES], [["digit", "odd"], ["size"]], [[n] for n in NAMES]])
OUTPUT_SHAPES = {"digit": (None, 4), "odd": (None, 1), "size": (None, 1)}


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *SHAPE)).astype("float32")
    y = {"digit": rng.integers(0, 4, n).astype("int32"),
         "odd": rng.integers(0, 2, n).astype("int32"),
         "size": rng.standard_normal(n).astype("float32")}
    return x, y


def compile_tasks(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t.key: t.make_loss() for t in TASKS},
                  loss_weights={t.key: t.loss_weight for t in TASKS}, jit_compile=False)
    return model


def small_resnet(**overrides):
    """The default `keras_hub` backbone's network itself, built by keras-hub."""
    return keras_hub.models.ResNetBackbone(**{**hub.SMALL_RESNET, **overrides}, image_shape=SHAPE)


def test_cut_at_stage_outputs_covers_the_network_exactly():
    bb = backbones.get("keras_hub", SHAPE)
    net = small_resnet()
    assert bb.num_stages == len(net.pyramid_outputs) == 3
    assert [bb.stage_output_shape(d) for d in range(3)] == [
        tuple(t.shape[1:]) for t in net.pyramid_outputs.values()]
    # stem (input convs + first max-pool) plus one block per stage is the whole network
    assert bb.stem_params() + sum(bb.stage_params(d) for d in range(3)) == net.count_params()
    assert bb.stem_params() == 7 * 7 * 3 * 64 + 4 * 64


def test_tree_model_counts_trains_saves_and_exports(tmp_path):
    bb = backbones.get("keras_hub", SHAPE)
    x, y = batch()
    # shapes, config round trip, a training step and a .keras round trip (safe mode)
    model = run_model_test(lambda: build_model(SPEC, bb, TASKS), x, y, OUTPUT_SHAPES,
                           compile_fn=compile_tasks, atol=1e-5)
    blocks = {(d, b) for d in range(3) for b in SPEC.blocks(d)}
    assert len(blocks) == 1 + 2 + 3
    expected = (bb.stem_params() + sum(bb.stage_params(d) for d, _ in blocks)
                + (64 + 1) * 4 + (64 + 1) * 1 + (64 + 1) * 1)  # heads on 64 pooled features
    assert model.count_params() == SPEC.count_params(bb, TASKS) == expected

    # one step of model.fit: the loss is finite and every block learns
    before = {w.path: np.array(w) for w in model.trainable_weights}
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for name in ("stage1_block0", "stage2_block1", "stage3_block2"):
        kernel = next(w for w in model.get_layer(name).trainable_weights if "kernel" in w.path)
        assert not np.array_equal(before[kernel.path], np.array(kernel)), name

    check_save_load(model, x, atol=1e-5)
    # float32 artifacts against Keras: the library's float32 tolerance, 1e-5 max abs
    # difference (outputs are probabilities and a regression value of order 1; kernel
    # reassociation in TF/TFLite moves float32 results by ~1e-6 at these sizes).
    result = export_model(model, tmp_path / "export", formats="saved_model,tflite", check=True)
    assert result.passed, result.parity.format_table()
    assert {r.format for r in result.parity.rows} == {"saved_model", "tflite"}
    assert all(r.max_abs_diff <= 1e-5 for r in result.parity.rows)
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert manifest["signatures"] == ["serving_default", *NAMES]


def test_local_preset_keeps_its_weights_in_every_branch(tmp_path):
    net = small_resnet()
    rng = np.random.default_rng(1)
    # non-initial weights everywhere, batch-norm statistics included
    net.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) ** 2
                     for w in net.get_weights()])
    preset = tmp_path / "my_resnet"
    net.save_to_preset(str(preset))

    bb = backbones.get("keras_hub", SHAPE, preset=str(preset))
    model = build_model(SPEC, bb, TASKS)
    for d in range(3):
        for b in SPEC.blocks(d):
            block = model.get_layer(f"stage{d + 1}_block{b}")
            for layer in (layer for layer in block.layers if layer.weights):
                want = net.get_layer(layer.name).get_weights()
                for got, exp in zip(layer.get_weights(), want, strict=True):
                    np.testing.assert_array_equal(got, exp)
    # the cut network computes what the preset's network computes
    x, _ = batch(4)
    y = bb.make_stem()(x, training=False)
    for d in range(3):
        y = bb.make_stage(d)(y, training=False)
    np.testing.assert_allclose(np.asarray(y), np.asarray(net(x, training=False)), atol=1e-5)


def test_resnet_v2_with_its_final_norm_in_the_last_stage():
    two = {"stackwise_num_filters": [64, 64], "stackwise_num_blocks": [1, 1],
           "stackwise_num_strides": [1, 2], "use_pre_activation": True}
    bb = backbones.get("keras_hub", SHAPE, **two)
    net = small_resnet(**two)
    assert bb.num_stages == 2
    assert bb.stem_params() + bb.stage_params(0) + bb.stage_params(1) == net.count_params()
    last = [layer["name"] for layer in bb.stage_configs[1]["config"]["layers"]]
    assert last[-2:] == ["post_bn", "post_relu"]


def test_zoo_flop_count_sees_every_convolution_of_the_cut_network():
    from keras_branch.zoo import count_flops

    net = small_resnet()
    model = build_model(TreeSpec.shared(NAMES, 3), backbones.get("keras_hub", SHAPE), TASKS)
    convs = 0
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):  # no bias in keras-hub's ResNet
            kh, kw = layer.kernel_size
            h, w, cout = layer.output.shape[1:]
            convs += 2 * kh * kw * layer.input.shape[-1] * cout * h * w
    heads = sum(2 * 64 * t.units + t.units for t in TASKS)
    assert count_flops(model) == convs + heads


@pytest.mark.parametrize("kwargs, fragment", [
    ({"class_name": "NoSuchBackbone"}, "class_name='NoSuchBackbone'"),
    ({"class_name": "BertTokenizer"}, "class_name='BertTokenizer'"),
    ({"preset": "/no/such/preset"}, "preset='/no/such/preset'"),
    ({"preset": "kaggle://keras/resnetv2/keras/resnet_50_imagenet"}, "nothing is downloaded"),
    ({"stackwise_num_filters": [32, 64, 64]}, "keras-hub refused ResNetBackbone"),
    ({"stage_outputs": ["P2", "no_such_layer"]}, "'no_such_layer'"),
    ({"image_shape": [32, 32, 3]}, "image_shape=[32, 32, 3]"),
])
def test_bad_arguments_name_the_field_and_value(kwargs, fragment):
    with pytest.raises(BackboneError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        backbones.get("keras_hub", SHAPE, **kwargs)


def test_preset_directory_without_config_is_refused(tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        hub.keras_hub_backbone(SHAPE, preset=tmp_path)


def test_docstring_examples():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(hub, globs=vars(hub).copy()):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 5
