"""Run by tests/test_distribute.py in subprocesses (TF devices must be set first).

    python distributed_worker.py MODE OUT.npz [OUT_DIR]

MODE: `mirrored` (two logical CPUs: single-device fit, MirroredStrategy fit and
the custom loop under MirroredStrategy, with batch norm and SGD), `weighting`
(the same for the uncertainty and PCGrad weightings, on data with missing
labels), `worker`
(one worker of a MultiWorkerMirroredStrategy run from TF_CONFIG) or `single`
(the same training in one process).
"""

import json
import os
import sys

import tensorflow as tf

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE in ("mirrored", "weighting"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_branch import TreeSpec, backbones, build_model, distribute  # noqa: E402
from keras_branch.compiling import compile_model  # noqa: E402
from keras_branch.custom_loop import fit_custom_loop  # noqa: E402
from keras_branch.data import planted_groups  # noqa: E402
from keras_branch.results import save_run  # noqa: E402
from keras_branch.training import fit_spec, train  # noqa: E402

data = planted_groups(group_sizes=(2, 2), num_train=256, num_validation=64, num_test=64, seed=0)
names = data.task_names
spec = TreeSpec.from_partitions([[names], data.info["partition"], [[n] for n in names]])


def block():
    # No bias before batch norm: its true gradient is zero, and Adam or noise
    # would turn rounding noise into full steps.
    return keras.Sequential([keras.layers.Dense(16, use_bias=False),
                             keras.layers.BatchNormalization(), keras.layers.ReLU()])


bn_backbone = backbones.Backbone((100,), [block() for _ in range(3)], name="bn_mlp")


def sgd_run(strategy, weighting=None, run_data=data):
    keras.utils.set_random_seed(0)
    bb = distribute.prepare_backbone(bn_backbone, strategy)
    with strategy.scope():
        model = build_model(spec, bb, run_data.tasks)
        compile_model(model, optimizer=keras.optimizers.SGD(0.05), weighting=weighting)
    train(model, run_data, epochs=2, batch_size=32, seed=0, verbose=0, log=None)
    return model.get_weights()


def flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


if MODE == "mirrored":
    single = sgd_run(tf.distribute.get_strategy())
    mirrored_strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    mirrored = sgd_run(mirrored_strategy)
    loop = fit_custom_loop(spec, distribute.prepare_backbone(backbones.mlp(100, widths=(16, 16, 8)),
                                                             mirrored_strategy),
                           data, mirrored_strategy, epochs=2, batch_size=32, seed=0, log=None)
    reference = fit_spec(spec, backbones.mlp(100, widths=(16, 16, 8)), data, epochs=2,
                         batch_size=32, seed=0, verbose=0, log=None)
    np.savez(OUT, replicas=mirrored_strategy.num_replicas_in_sync,
             single=np.concatenate([w.ravel() for w in single]),
             mirrored=np.concatenate([w.ravel() for w in mirrored]),
             loop=np.concatenate([w.ravel() for w in loop.model.get_weights()]),
             fit=np.concatenate([w.ravel() for w in reference.model.get_weights()]))
elif MODE == "weighting":
    from keras_branch.data.multitask import MultiTaskData, Split  # noqa: E402

    # A third of each task's labels missing (NaN: regression), so a batch's
    # replicas see different tasks present.
    rng = np.random.default_rng(0)
    splits = {}
    for split, part in data.splits.items():
        labels = {name: np.where(rng.random(len(y)) < 0.33, np.nan, y).astype("float32")
                  for name, y in part.y.items()}
        splits[split] = Split(part.x, labels)
    sparse = MultiTaskData(data.tasks, splits, data.info)
    mirrored_strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    results = {"replicas": mirrored_strategy.num_replicas_in_sync,
               "equal": flat(sgd_run(tf.distribute.get_strategy(), None, sparse))}
    for name in ("uncertainty", "pcgrad"):
        results[f"{name}_single"] = flat(sgd_run(tf.distribute.get_strategy(), name, sparse))
        results[f"{name}_mirrored"] = flat(sgd_run(mirrored_strategy, name, sparse))
        loop = fit_custom_loop(spec, distribute.prepare_backbone(
            backbones.mlp(100, widths=(16, 16, 8)), mirrored_strategy), sparse, mirrored_strategy,
            epochs=2, batch_size=32, seed=0, log=None, weighting=name)
        reference = fit_spec(spec, backbones.mlp(100, widths=(16, 16, 8)), sparse, epochs=2,
                             batch_size=32, seed=0, verbose=0, log=None, weighting=name)
        results[f"{name}_loop"] = flat(loop.model.get_weights())
        results[f"{name}_fit"] = flat(reference.model.get_weights())
    np.savez(OUT, **results)
elif MODE == "fit_worker":
    # Keras' own fit under MultiWorkerMirroredStrategy (broken in Keras 3.15).
    strategy = distribute.get_strategy("multiworker")
    with strategy.scope():
        model = compile_model(build_model(spec, backbones.mlp(100, widths=(16, 16, 8)), data.tasks))
    train(model, data, epochs=1, batch_size=32, seed=0, verbose=0, log=None)
    np.savez(OUT, weights=np.concatenate([w.ravel() for w in model.get_weights()]))
else:
    strategy = distribute.get_strategy("multiworker" if MODE == "worker" else "none")
    # KB_WEIGHTING: a task weighting for the multi-worker loop and its single-process twin.
    result = fit_spec(spec, backbones.mlp(100, widths=(16, 16, 8)), data, epochs=2, batch_size=32,
                      seed=0, verbose=0, log=None, strategy=strategy,
                      weighting=os.environ.get("KB_WEIGHTING") or None)
    np.savez(OUT, weights=np.concatenate([w.ravel() for w in result.model.get_weights()]),
             chief=distribute.is_chief(strategy))
    if len(sys.argv) > 3 and distribute.is_chief(strategy):
        save_run(sys.argv[3], result, {"tf_config": json.loads(os.environ.get("TF_CONFIG", "{}"))})
