"""The main job on built-in data: planted task groups -> tree -> fit -> report -> save.

`keras-branch demo` runs it; it takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from keras_branch import backbones
from keras_branch.data.planted import planted_groups
from keras_branch.spec import TreeSpec
from keras_branch.training import (
    EpochLogger,
    TrainResult,
    fit_spec,
    format_metrics,
    mean_metric,
    save_run,
)


def run_demo(
    out_dir: str | os.PathLike = "keras_branch_demo",
    epochs: int = 20,
    seed: int = 0,
    baselines: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains the planted tree on planted task groups and saves the run.

    The tree shares stage 1 among all 8 tasks, stage 2 within each planted
    group (3, 3 and 2 tasks), and gives every task its own stage 3. With
    `baselines`, the fully shared and the independent networks are trained
    under the same recipe and compared.

    Args:
        out_dir: where the run folder is written (replaced if present).
        epochs: training epochs.
        seed: data and initialisation seed.
        baselines: also train the shared and independent networks.
        log: where report lines go.

    Returns:
        The tree's `TrainResult`.
    """
    start = time.perf_counter()
    data = planted_groups(seed=seed)
    names = data.task_names
    spec = TreeSpec.from_partitions([[names], data.info["partition"], [[n] for n in names]])
    backbone = backbones.mlp(data.input_shape[0], widths=(64, 64, 32))
    log(f"data: {data}")
    log(str(spec))

    def fit(s: TreeSpec, progress: bool) -> TrainResult:
        callbacks = [EpochLogger(data.tasks, log)] if progress else []
        return fit_spec(s, backbone, data, epochs=epochs, batch_size=64, seed=seed,
                        verbose=0, callbacks=callbacks)

    result = fit(spec, progress=True)
    log(format_metrics(result.metrics["test"], "test"))
    rows = [("planted tree", spec, result)]
    if baselines:
        for label, other in (("fully shared", TreeSpec.shared(names, 3)),
                             ("independent", TreeSpec.independent(names, 3))):
            log(f"training the {label} baseline ...")
            rows.append((label, other, fit(other, progress=False)))
    log(f"{'model':<14} {'parameters':>10} {'mean test mse':>14}")
    for label, s, r in rows:
        params = s.count_params(backbone, data.tasks)
        log(f"{label:<14} {params:>10,} {mean_metric(r.metrics['test'], 'mse'):>14.4f}")
    config = {"command": "demo", "data": "planted", "seed": seed, "epochs": epochs,
              "batch_size": 64, "backbone": backbone.get_config()}
    save_run(out_dir, result, config, overwrite=True)
    log(f"saved to {os.fspath(out_dir)}/ (model.keras, spec.json, history.json, "
        f"metrics.json, config.json)")
    log(f"demo finished in {time.perf_counter() - start:.1f} s")
    return result
