"""Train a hand-written tree on planted task groups and compare it with a shared trunk.

    python examples/custom_spec.py --epochs 20
"""

import argparse

from keras_branch import TreeSpec, backbones
from keras_branch.data import planted_groups
from keras_branch.evaluation import format_metrics, mean_metric
from keras_branch.training import fit_spec

SPEC = {
    "tasks": ["g0_t0", "g0_t1", "g1_t0", "g1_t1"],
    "routes": {"g0_t0": [0, 0, 0], "g0_t1": [0, 0, 1], "g1_t0": [0, 1, 2], "g1_t1": [0, 1, 3]},
}


def main(epochs: int = 20, seed: int = 0) -> dict[str, float]:
    data = planted_groups(group_sizes=(2, 2), seed=seed)
    backbone = backbones.mlp(data.input_shape[0], widths=(64, 64, 32))
    results = {}
    for label, spec in (("tree", TreeSpec.from_dict(SPEC)),
                        ("shared", TreeSpec.shared(SPEC["tasks"], 3))):
        run = fit_spec(spec, backbone, data, epochs=epochs, batch_size=64, seed=seed, verbose=0)
        print(f"== {label}: {spec.count_params(backbone, data.tasks):,} parameters")
        print(format_metrics(run.metrics["test"]))
        results[label] = mean_metric(run.metrics["test"], "mse")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
