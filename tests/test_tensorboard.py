"""TensorBoard logs (per-task losses and metrics) and the recipe knobs of training."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_branch import TreeSpec, backbones
from keras_branch.cli import main
from keras_branch.compiling import check_recipe, make_optimizer
from keras_branch.data import planted_groups
from keras_branch.errors import DataError
from keras_branch.training import fit_spec


def read_scalars(log_dir):
    """{(run, tag): {step: value}} from every event file under log_dir."""
    scalars = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents*"), recursive=True):
        run = os.path.relpath(os.path.dirname(path), log_dir)
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault((run, value.tag), {})[event.step] = number
    return scalars


@pytest.fixture(scope="module")
def planted():
    return planted_groups(group_sizes=(2, 1), num_train=256, num_validation=64, num_test=64,
                          dim=20, kind="binary", seed=0)


def test_fit_spec_writes_per_task_scalars(planted, tmp_path):
    spec = TreeSpec.shared(planted.task_names, 2)
    run = fit_spec(spec, backbones.mlp(20, (8, 8)), planted, epochs=3, batch_size=64, verbose=0,
                   log=None, tensorboard=tmp_path / "tb", schedule="cosine", weighting="uncertainty")
    scalars = read_scalars(tmp_path / "tb")
    keys = run.model.task_keys if hasattr(run.model, "task_keys") else {}
    for name in planted.task_names:
        key = keys.get(name, name)
        for split in ("train", "validation"):
            for metric in ("loss", "accuracy", "auc"):
                tag = f"epoch_{key}_{metric}"
                assert sorted(scalars[(split, tag)]) == [0, 1, 2], (split, tag)
        # The logged values are Keras' history values.
        np.testing.assert_allclose(
            [scalars[("train", f"epoch_{key}_loss")][e] for e in range(3)],
            run.history[f"{key}_loss"], rtol=1e-6)
        np.testing.assert_allclose(
            [scalars[("validation", f"epoch_{key}_accuracy")][e] for e in range(3)],
            run.history[f"val_{key}_accuracy"], rtol=1e-6)
        # The weighting's per-task weight, once per epoch.
        np.testing.assert_allclose(
            [scalars[("train", f"epoch_{key}_weight")][e] for e in range(3)],
            run.history[f"{key}_weight"], rtol=1e-6)
    assert sorted(scalars[("train", "epoch_loss")]) == [0, 1, 2]
    lr = scalars[("train", "epoch_learning_rate")]
    assert lr[0] > lr[1] > lr[2]  # cosine decay


def test_cli_train_tensorboard_and_recipe_flags(tmp_path):
    spec = tmp_path / "spec.json"
    TreeSpec.shared(["g0_t0", "g0_t1", "g1_t0"], 2).save(spec)
    rc = main(["train", "--spec", str(spec), "--data", "planted:groups=2-1,train=200,seed=1",
               "--backbone", "mlp", "--backbone-arg", "widths=[8,8]", "--epochs", "2",
               "--schedule", "cosine", "--weight-decay", "0.01", "--warmup-epochs", "1",
               "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "run"),
               "--progress", "none"])
    assert rc == 0
    scalars = read_scalars(tmp_path / "tb")
    for name in ("g0_t0", "g0_t1", "g1_t0"):
        assert sorted(scalars[("train", f"epoch_{name}_loss")]) == [0, 1]
        assert sorted(scalars[("validation", f"epoch_{name}_mse")]) == [0, 1]
    import json
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["schedule"] == "cosine" and config["weight_decay"] == 0.01


def test_cli_train_refuses_bad_augment(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    TreeSpec.shared(["g0_t0", "g0_t1", "g1_t0"], 2).save(spec)
    base = ["train", "--spec", str(spec), "--data", "planted:groups=2-1,train=200,seed=1",
            "--backbone", "mlp", "--epochs", "1", "--progress", "none"]
    assert main(base + ["--augment", "{bad", "--out", str(tmp_path / "a")]) == 2
    assert "--augment" in capsys.readouterr().err
    assert main(base + ["--augment", '{"zoom": 2}', "--out", str(tmp_path / "b")]) == 2
    assert "zoom=2" in capsys.readouterr().err


def test_make_optimizer_defaults_and_schedules():
    opt = make_optimizer(1e-3)
    assert type(opt) is keras.optimizers.Adam
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(1e-3)
    opt = make_optimizer(1e-3, "cosine", weight_decay=0.01, epochs=10, steps_per_epoch=5,
                         warmup_epochs=2)
    assert isinstance(opt, keras.optimizers.AdamW)
    schedule = opt._learning_rate
    values = [float(schedule(step)) for step in (0, 5, 10, 30, 49)]
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert values[2] == pytest.approx(1e-3, rel=1e-5)  # end of warm-up
    assert values[2] > values[3] > values[4] > 0
    warm = make_optimizer(1e-3, "constant", epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert float(warm._learning_rate(30)) == pytest.approx(1e-3, rel=1e-5)


@pytest.mark.parametrize("kwargs, words", [
    ({"schedule": "linear"}, ["schedule", "'linear'"]),
    ({"weight_decay": -1.0}, ["weight_decay", "-1.0"]),
    ({"warmup_epochs": 1.5}, ["warmup_epochs", "1.5"]),
    ({"warmup_epochs": 5, "epochs": 5}, ["warmup_epochs", "5"]),
])
def test_bad_recipe_names_field_and_value(kwargs, words):
    with pytest.raises(DataError) as err:
        check_recipe(**kwargs)
    for word in words:
        assert word in str(err.value)
