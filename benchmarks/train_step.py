"""Training step time: a keras_branch model against the same network written by hand.

Both are the same 4-task tree over a 4-block convnet (stages 1-2 shared, two
blocks at stage 3, one per task at stage 4), trained with Adam on the same
batches. keras_branch adds masked losses and metrics; the hand-written model
uses Keras' own sparse cross-entropy and accuracy. The two are timed in
alternating rounds in one process (these machines are noisy); the table gives
the median step time of each and their ratio (goal: at most 1.05).

    python benchmarks/train_step.py
"""

from __future__ import annotations

import argparse
import platform
import time

import keras
import numpy as np

from keras_branch import Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model

TASKS = ["a", "b", "c", "d"]
CLASSES = 10


def branched_model(size: int, filters: int) -> keras.Model:
    spec = TreeSpec.from_partitions([[TASKS], [TASKS], [["a", "b"], ["c", "d"]], [[t] for t in TASKS]])
    tasks = [Task(t, "multiclass", classes=CLASSES) for t in TASKS]
    return compile_model(build_model(spec, backbones.convnet4((size, size, 1), filters=filters), tasks))


def hand_written(size: int, filters: int) -> keras.Model:
    def block(x, name):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
        return keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)

    inputs = keras.Input((size, size, 1))
    trunk = block(block(inputs, "s1"), "s2")
    groups = {"ab": block(trunk, "s3_ab"), "cd": block(trunk, "s3_cd")}
    outputs = {}
    for task in TASKS:
        x = block(groups["ab" if task in "ab" else "cd"], f"s4_{task}")
        x = keras.layers.Flatten()(x)
        outputs[task] = keras.layers.Dense(CLASSES, activation="softmax", name=task)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t: "sparse_categorical_crossentropy" for t in TASKS},
                  metrics={t: ["accuracy"] for t in TASKS}, jit_compile=False)
    return model


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def main(size: int = 32, filters: int = 32, batch: int = 64, steps: int = 20, rounds: int = 5) -> float:
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, size, size, 1)).astype("float32")
    y = {t: rng.integers(0, CLASSES, len(x)).astype("int32") for t in TASKS}
    models = {"keras_branch": branched_model(size, filters), "hand-written Keras": hand_written(size, filters)}
    assert models["keras_branch"].count_params() == models["hand-written Keras"].count_params()
    timers = {name: StepTimer() for name in models}
    for name, model in models.items():  # warm-up: tracing
        model.fit(x[:batch * 2], {t: v[:batch * 2] for t, v in y.items()}, batch_size=batch, verbose=0)
    for _ in range(rounds):
        for name, model in models.items():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[timers[name]])
    medians = {name: float(np.median(t.times)) for name, t in timers.items()}
    ratio = medians["keras_branch"] / medians["hand-written Keras"]
    print(f"train step, 4-task convnet tree {size}x{size}, {filters} filters, batch {batch}, "
          f"{rounds} alternating rounds of {steps} steps; {platform.processor() or platform.machine()}")
    print(f"{'model':<20} {'parameters':>10} {'median step ms':>15}")
    for name, model in models.items():
        print(f"{name:<20} {model.count_params():>10,} {1000 * medians[name]:>15.2f}")
    print(f"ratio keras_branch / hand-written: {ratio:.3f} (goal <= 1.05)")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    main(args.size, args.filters, args.batch, args.steps, args.rounds)
