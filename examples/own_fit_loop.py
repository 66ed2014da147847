"""Use only `build_model`: your own arrays, missing labels, plain `model.fit`.

Two tasks on one input; half the samples are labelled for one task only
(label -1 marks "not labelled for this task").

    python examples/own_fit_loop.py
"""

import argparse

import keras
import numpy as np

from keras_branch import Task, TreeSpec, backbones, build_model
from keras_branch.compiling import compile_model


def main(epochs: int = 10, seed: int = 0) -> dict[str, float]:
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 16)).astype("float32")
    parity = (x[:, 0] > 0).astype("int32")
    bucket = np.digitize(x[:, 1], [-0.5, 0.5]).astype("int32")
    parity[1000:] = -1  # the second half is labelled for "bucket" only
    tasks = [Task("sign", "binary"), Task("bucket", "multiclass", classes=3)]
    spec = TreeSpec.from_partitions([[["sign", "bucket"]], [["sign"], ["bucket"]]])
    model = compile_model(build_model(spec, backbones.mlp(16, widths=(32, 16)), tasks))
    model.fit(x, {"sign": parity, "bucket": bucket}, epochs=epochs, batch_size=64, verbose=0)
    logs = model.evaluate(x[:1000], {"sign": parity[:1000], "bucket": bucket[:1000]},
                          return_dict=True, verbose=0)
    print(f"sign accuracy {logs['sign_accuracy']:.3f}, bucket accuracy {logs['bucket_accuracy']:.3f}")
    return logs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.epochs)
