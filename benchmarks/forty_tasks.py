"""Every search at 40 tasks on planted groups (8 groups of 5): what each finds, and at what cost.

The data are `planted_groups(group_sizes=(5,) * 8, dim=100, seed=SEED)`
(`planted:groups=5-5-5-5-5-5-5-5`: 40 regression tasks, 4000 training
samples, every sample labelled for every task), whose right tree is known:
one trunk, one block per group at the group stage, one block per task at the
last. All methods use one backbone, `backbones.mlp(100, --stages)` (default
64-64-64-64-16: five stages, as Learning to Branch's 2-4-8-16-40 needs), and
one recipe, the demo's (`--epochs` 20, batch 64, Adam 1e-3).

Per seed, every method runs in its own Python process (`--in-process`
turns that off), so its peak memory is its own:

* `shared`: one training of the fully shared model (`fit_spec`, training
  split only, no scoring inside the timed call): the time unit of the
  `x shared` column and the root evolution grows from.
* `planted`: the planted tree, retrained: a reference row (no search).
* `rsa`: `affinity_search` with RSA probes (`--probe-epochs`, the demo's 3)
  under the budget that buys one block per stage, one per group at the
  group stage (the one before the last) and one per task at the last
  (`[1, 1, 1, 8, 40]` by default); grouping: the group stage's partition.
* `tag`: the same with `affinity="tag"` (lookahead affinity during one
  training of the shared model, `--epochs` long, every `--tag-every` steps).
* `ltb`: `learn_to_branch` with widths `--ltb-widths` (default 2, 4, 8, ...,
  the task count: 2-4-8-16-40 at 40 tasks, as the public CelebA setting)
  for `--ltb-epochs`; grouping: the stage whose width is closest to the
  number of groups (the 8-node stage by default).
* `evolution`: muNet `evolve` from the `shared` model as root, with a
  stated budget (`--evolve-passes` x tasks x `--evolve-candidates`
  candidates, each `--evolve-candidate-epochs` epochs on its task's training
  samples); its time in `x shared` includes the root's training (1.0x), as
  nothing else pretrained exists here; grouping: tasks whose deepest shared
  block is the same block (a task sharing no block stands alone).
* `soft_ordering`: `fit_soft_ordering` (a pool of `stages - 1` Dense layers
  of the first stage's width after a Dense encoder per task) under the
  recipe; it has no tree, so its grouping is an average-linkage clustering
  of the tasks' learned mixing weights into as many clusters as groups.

Columns: ARI (adjusted Rand index against the planted groups, 1.0: the
groups exactly), purity (the share of tasks in the planted group that is the
majority of their found group; 1.0: no found group mixes planted groups),
parameters and test MSE (mean over tasks) of the found tree retrained from
scratch under the recipe (`fit_spec`; identical trees are trained once per
seed; soft ordering: its own trained model), the search's wall time and its
ratio to the `shared` training of the same seed, and peak memory: the
process's peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`)
and how far the method raised it above the process's peak after imports,
data and a warm-up (in-process runs: the growth of one shared peak, a lower
bound).

Cheaper RSA probes: for the seeds `--cheap-seeds`, `task_affinity` with
fewer epochs and/or a random fraction of the training samples
(`--cheap EPOCHS:FRACTION,...`, the same K held-out inputs) is compared with
the full probes of `rsa`: Spearman correlation of the two affinity matrices'
upper triangles per stage, whether the tree search picks the same tree, and
the cheap tree's ARI.

Writes `OUT/forty_tasks.json` (the configuration, the machine, every row).

    python benchmarks/forty_tasks.py --seeds 0,1,2 --out /tmp/forty
    python benchmarks/forty_tasks.py --seeds 0 --methods rsa,tag --cheap 1:1.0 --out /tmp/f1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# The shared helpers live beside this file; a test loads this file by path,
# so the folder is not on sys.path by itself.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from keras_branch import TreeSpec, backbones  # noqa: E402
from keras_branch.data import MultiTaskData, planted_groups  # noqa: E402
from keras_branch.data.multitask import Split  # noqa: E402
from keras_branch.evaluation import evaluate, mean_metric  # noqa: E402
from keras_branch.files import atomic_path, atomic_write_json  # noqa: E402
from keras_branch.saving import load_branched_model  # noqa: E402
from keras_branch.search import (  # noqa: E402
    adjusted_rand_index,
    affinity_search,
    branch,
    budget_for_blocks,
    evolve,
    learn_to_branch,
    spearman,
    task_affinity,
)
from keras_branch.search.affinity import average_linkage  # noqa: E402
from keras_branch.search.learn_to_branch import default_widths  # noqa: E402
from keras_branch.search.partitions import labels_from_groups  # noqa: E402
from keras_branch.soft_ordering_model import fit_soft_ordering  # noqa: E402
from keras_branch.training import fit_spec  # noqa: E402
from keras_branch.zoo.measure import mean_and_std  # noqa: E402
from planted_common import group_blocks, machine, timed, warm_up  # noqa: E402

#: Search methods, in the order they run and print.
METHODS = ("rsa", "tag", "ltb", "evolution", "soft_ordering")

#: The run's settings (JSON-able; the command line overrides them).
DEFAULTS: dict[str, Any] = {
    "groups": [5] * 8,
    "dim": 100,
    "num_train": 4000,
    "num_validation": 1000,
    "num_test": 2000,
    "stages": [64, 64, 64, 64, 16],
    # The demo's recipe (keras_branch.demo): every training and retraining.
    "epochs": 20,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "probe_epochs": 3,
    "num_inputs": 256,
    "tag_every": 10,
    # None: affinity_search's default (the training's learning rate).
    "lookahead_lr": None,
    "ltb_widths": None,
    "ltb_epochs": 10,
    "evolve_scale": 0.5,
    "evolve_passes": 1,
    "evolve_candidates": 1,
    "evolve_candidate_epochs": 1,
    "cheap": [[1, 1.0], [1, 0.25]],
}

MIB = 1024.0  # ru_maxrss is in KiB on Linux


# === Scoring a grouping ===


def purity(found: Sequence[Sequence[str]], planted: Sequence[Sequence[str]]) -> float:
    """Share of tasks whose found group's majority planted group is their own (1.0: no group mixes)."""
    where = {name: g for g, members in enumerate(planted) for name in members}
    majority = 0
    for group in found:
        counts = np.bincount([where[name] for name in group], minlength=len(planted))
        majority += int(counts.max())
    return majority / sum(len(g) for g in found)


def grouping_scores(found: Sequence[Sequence[str]], planted: Sequence[Sequence[str]]) -> dict:
    """ARI and purity of `found` against `planted` (both lists of groups of names)."""
    names = sorted(n for group in planted for n in group)
    ari = adjusted_rand_index(labels_from_groups(names, found), labels_from_groups(names, planted))
    return {"ari": float(ari), "purity": purity(found, planted),
            "found": [list(g) for g in found]}


def deepest_shared_grouping(spec: TreeSpec) -> list[list[str]]:
    """Tasks grouped by the deepest block each shares with another task (alone if none).

    An evolved system need not be a tree (a block may be shared by tasks
    that went separate ways before it), so the grouping is read per task:
    its deepest stage whose block has another user, and that block.
    """
    users: dict[tuple[int, int], int] = {}
    for task in spec.tasks:
        for d, block in enumerate(spec.used_route(task)):
            users[(d, block)] = users.get((d, block), 0) + 1
    groups: dict[tuple, list[str]] = {}
    for task in spec.tasks:
        shared = [(d, b) for d, b in enumerate(spec.used_route(task)) if users[(d, b)] > 1]
        groups.setdefault(max(shared) if shared else ("alone", task), []).append(task)
    return list(groups.values())


def euclidean_linkage(points: np.ndarray, num_clusters: int) -> list[list[int]]:
    """Average-linkage agglomerative clustering of rows (Euclidean) into `num_clusters` clusters."""
    diff = points[:, None, :] - points[None, :, :]
    return average_linkage(np.sqrt((diff**2).sum(-1)), num_clusters)


def mixing_grouping(mixing: dict[str, Any], num_groups: int) -> list[list[str]]:
    """Tasks clustered by their soft-ordering mixing weights (each flattened [D, D])."""
    names = list(mixing)
    points = np.stack([np.asarray(mixing[n], dtype="float64").ravel() for n in names])
    return [[names[i] for i in c] for c in euclidean_linkage(points, min(num_groups, len(names)))]


def closest_stage(widths: Sequence[int], target: int) -> int:
    """The stage whose width is closest to `target` (the shallower on a tie)."""
    return min(range(len(widths)), key=lambda d: (abs(widths[d] - target), d))


def upper_spearman(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per stage, Spearman correlation of two [stages, T, T] affinities' strict upper triangles."""
    rows, cols = np.triu_indices(a.shape[-1], 1)
    return [spearman(a[d][rows, cols], b[d][rows, cols]) for d in range(len(a))]


# === The jobs (each in its own process unless --in-process) ===


def make_data(config: dict, seed: int) -> MultiTaskData:
    """The planted groups of `config` for one seed (the same data in every process)."""
    return planted_groups(group_sizes=config["groups"], dim=config["dim"],
                          num_train=config["num_train"], num_validation=config["num_validation"],
                          num_test=config["num_test"], seed=seed)


def make_backbone(config: dict):
    """The MLP every method routes (`config["stages"]` units per stage)."""
    return backbones.mlp(config["dim"], config["stages"])


def without(data: MultiTaskData, split: str) -> MultiTaskData:
    """The data without one split (`fit` then neither validates on it nor scores it)."""
    splits = {k: v for k, v in data.splits.items() if k != split}
    return MultiTaskData(data.tasks, splits, data.info, data.name)


def subsample(data: MultiTaskData, fraction: float, seed: int) -> MultiTaskData:
    """The data with a random `fraction` of its training samples (other splits unchanged)."""
    train = data.split("train")
    keep = max(1, int(round(fraction * len(train))))
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:keep])
    splits = dict(data.splits)
    splits["train"] = Split(train.x[pick], {k: v[pick] for k, v in train.y.items()})
    return MultiTaskData(data.tasks, splits, data.info, data.name)


def recipe(config: dict, seed: int) -> dict:
    """The training recipe of every training and retraining (`fit_spec` keywords)."""
    return {"epochs": config["epochs"], "batch_size": config["batch_size"],
            "learning_rate": config["learning_rate"], "seed": seed}


def tree_budget(config: dict, data: MultiTaskData, bb) -> int:
    """Parameters of one block per stage, one per group at the group stage, one per task at the last."""
    return budget_for_blocks(bb, data.tasks, group_blocks(bb.num_stages, config["groups"]))


def job_shared(config, seed, data, bb, job):
    """One training of the fully shared model; its test MSE; the model kept as evolution's root."""
    run, seconds = timed(fit_spec, TreeSpec.shared(data.task_names, bb.num_stages), bb,
                         without(without(data, "validation"), "test"), verbose=0,
                         eval_splits=(), log=None, **recipe(config, seed))
    test = mean_metric(evaluate(run.model, data, "test"), "mse")
    if job.get("root"):
        run.model.save(job["root"])
    return {"seconds": seconds, "test_mse": test, "params": int(run.model.count_params())}


def job_affinity(config, seed, data, bb, job):
    """`affinity_search` with RSA probes or TAG under the group-stage budget."""
    kind = job["kind"]
    num_inputs = min(config["num_inputs"], len(data.split("validation")))
    result, seconds = timed(
        affinity_search, data, bb, tree_budget(config, data, bb), affinity=kind,
        probe_epochs=config["probe_epochs"], num_inputs=num_inputs, seed=seed,
        batch_size=config["batch_size"], learning_rate=config["learning_rate"],
        epochs=config["epochs"], every=config["tag_every"],
        lookahead_lr=config["lookahead_lr"], log=None,
    )
    out = {"seconds": seconds, "spec": result.spec.to_dict(), "phases": dict(result.seconds)}
    if kind == "rsa":  # the reference of the cheap probes
        out["affinity"] = result.artifacts["affinity"].values.tolist()
    return out


def ltb_widths(config: dict, num_stages: int) -> list[int]:
    """Learning to Branch's supernet widths: as given, or 2, 4, 8, ... then one node per task."""
    widths = config["ltb_widths"]
    return list(widths) if widths else default_widths(num_stages, sum(config["groups"]))


def job_ltb(config, seed, data, bb, job):
    """Learning to Branch with the stated widths."""
    result, seconds = timed(
        learn_to_branch, data, bb, widths=ltb_widths(config, bb.num_stages),
        epochs=config["ltb_epochs"], seed=seed, batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
    )
    return {"seconds": seconds, "spec": result.spec.to_dict(),
            "widths": result.scores["settings"]["widths"]}


def job_evolution(config, seed, data, bb, job):
    """muNet evolution from the shared model (the root) to every task, under the stated budget."""
    root = load_branched_model(job["root"])
    result, seconds = timed(
        evolve, root, None, data, scale=config["evolve_scale"], passes=config["evolve_passes"],
        candidates=config["evolve_candidates"],
        candidate_epochs=config["evolve_candidate_epochs"], seed=seed, log=None,
    )
    return {"seconds": seconds, "spec": result.spec.to_dict(),
            "system_test_mse": mean_metric(result.scores["metrics"]["test"], "mse")}


def job_soft_ordering(config, seed, data, bb, job):
    """Soft layer ordering trained under the recipe; its mixing weights and test MSE."""
    run, seconds = timed(
        fit_soft_ordering, without(without(data, "validation"), "test"), "soft",
        depth=bb.num_stages - 1, width=config["stages"][0], verbose=0, eval_splits=(),
        log=None, **recipe(config, seed),
    )
    return {"seconds": seconds, "params": int(run.model.count_params()),
            "test_mse": mean_metric(evaluate(run.model, data, "test"), "mse"),
            "mixing": {k: np.asarray(v).tolist() for k, v in run.model.mixing_weights().items()}}


def job_cheap_rsa(config, seed, data, bb, job):
    """Probes with fewer epochs and/or a fraction of the training samples, and their tree."""
    probe_data = subsample(data, job["fraction"], seed) if job["fraction"] < 1 else data
    num_inputs = min(config["num_inputs"], len(data.split("validation")))
    affinity, seconds = timed(task_affinity, probe_data, bb, probe_epochs=job["epochs"],
                              num_inputs=num_inputs, batch_size=config["batch_size"],
                              learning_rate=config["learning_rate"], seed=seed, log=None)
    tree = branch(affinity, bb, data.tasks, tree_budget(config, data, bb))
    return {"seconds": seconds, "spec": tree.spec.to_dict(), "affinity": affinity.values.tolist()}


def job_retrain(config, seed, data, bb, job):
    """Each spec trained from scratch under the recipe: parameters and test MSE."""
    trained = {}
    for key, spec in job["specs"].items():
        run, seconds = timed(fit_spec, TreeSpec.from_dict(spec), bb, without(data, "validation"),
                             verbose=0, eval_splits=("test",), log=None, **recipe(config, seed))
        trained[key] = {"test_mse": mean_metric(run.metrics["test"], "mse"),
                        "params": int(run.model.count_params()), "seconds": seconds}
    return {"trained": trained}


JOBS: dict[str, Callable] = {
    "shared": job_shared, "rsa": job_affinity, "tag": job_affinity, "ltb": job_ltb,
    "evolution": job_evolution, "soft_ordering": job_soft_ordering,
    "cheap_rsa": job_cheap_rsa, "retrain": job_retrain,
}

_WARM = False


def peak_mib() -> float:
    """This process's peak resident set so far, MiB (`ru_maxrss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def run_job(job: dict) -> dict:
    """Runs one job here; adds its peak memory (MiB) and the growth of the peak it caused."""
    global _WARM
    config, seed = job["config"], job["seed"]
    data, bb = make_data(config, seed), make_backbone(config)
    # TensorFlow's one-off start-up costs belong to no timed method (retraining is not timed).
    if not _WARM and job["kind"] != "retrain":
        warm_up()
        _WARM = True
    before = peak_mib()
    result = JOBS[job["kind"]](config, seed, data, bb, job)
    result["peak_mib"] = peak_mib()
    result["peak_growth_mib"] = result["peak_mib"] - before
    return result


def call(job: dict, isolate: bool, workdir: str) -> dict:
    """Runs a job in a fresh Python process (isolate) or here; returns its result."""
    if not isolate:
        return run_job(job)
    name = f"{job['kind']}_{job['seed']}_{len(os.listdir(workdir))}"
    job_path = os.path.join(workdir, name + ".job.json")
    result_path = os.path.join(workdir, name + ".result.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump({**job, "result": result_path}, f)
    log_path = os.path.join(workdir, name + ".log")
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.call([sys.executable, os.path.abspath(__file__), "--worker", job_path],
                             stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"job {job['kind']} (seed {job['seed']}) failed with exit status "
                           f"{rc}:\n{tail}")
    with open(result_path, encoding="utf-8") as f:
        return json.load(f)


def worker(job_path: str) -> int:
    """Entry point of a job's process: runs it and writes its result as JSON."""
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    atomic_write_json(job["result"], run_job(job))
    return 0


# === One seed ===


def run_seed(config: dict, seed: int, methods: Sequence[str], cheap: bool, isolate: bool,
             workdir: str, log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Every method on one seed: the table's rows and the cheap-probe rows."""
    data = make_data(config, seed)
    planted = data.info["partition"]
    num_stages = len(config["stages"])
    group_stage = num_stages - 2
    base = {"config": config, "seed": seed}
    root = os.path.join(workdir, f"root_{seed}.keras")
    shared = call({**base, "kind": "shared", "root": root if "evolution" in methods else None},
                  isolate, workdir)
    results = {}
    for method in methods:
        log(f"seed {seed}: {method} ...")
        results[method] = call({**base, "kind": method, "root": root}, isolate, workdir)
    cheap_rows = []
    if cheap and "rsa" in results:
        full = np.asarray(results["rsa"]["affinity"])
        for epochs, fraction in config["cheap"]:
            log(f"seed {seed}: cheap RSA probes, {epochs} epochs, {fraction:g} of the training data ...")
            out = call({**base, "kind": "cheap_rsa", "epochs": epochs, "fraction": fraction},
                       isolate, workdir)
            spec = TreeSpec.from_dict(out["spec"])
            cheap_rows.append({
                "seed": seed, "epochs": epochs, "fraction": fraction, "seconds": out["seconds"],
                "full_seconds": results["rsa"]["phases"]["probes"],
                "spearman": upper_spearman(np.asarray(out["affinity"]), full),
                "same_tree": spec == TreeSpec.from_dict(results["rsa"]["spec"]),
                "blocks": spec.blocks_per_stage(),
                "ari": grouping_scores(spec.partition(group_stage), planted)["ari"],
                "peak_mib": out["peak_mib"],
            })
            log(format_cheap_rows(cheap_rows[-1:], header=False))

    # Retrain every found tree (and the planted one) once, in one process.
    planted_spec = TreeSpec.from_partitions(
        [[data.task_names]] * group_stage + [planted, [[n] for n in data.task_names]])
    specs = {"planted": planted_spec}
    specs.update({m: TreeSpec.from_dict(r["spec"]) for m, r in results.items() if "spec" in r})
    unique = {}
    for spec in specs.values():
        unique.setdefault(spec.canonical().to_json(), spec.to_dict())
    log(f"seed {seed}: retraining {len(unique)} distinct trees ...")
    trained = call({**base, "kind": "retrain", "specs": unique}, isolate, workdir)["trained"]

    def retrained(spec: TreeSpec) -> dict:
        """The retraining of `spec` (trees with the same sharing were trained once)."""
        return trained[spec.canonical().to_json()]

    rows = [
        {"method": "shared", "seed": seed, "grouping": "one trunk (reference)", "ari": None,
         "purity": None, "params": shared["params"], "test_mse": shared["test_mse"],
         "seconds": shared["seconds"], "ratio": 1.0, "peak_mib": shared["peak_mib"],
         "peak_growth_mib": shared["peak_growth_mib"]},
        {"method": "planted", "seed": seed,
         "grouping": f"stage {group_stage + 1}, planted (reference)",
         **grouping_scores(planted, planted), "params": retrained(planted_spec)["params"],
         "test_mse": retrained(planted_spec)["test_mse"], "seconds": None, "ratio": None,
         "peak_mib": None, "peak_growth_mib": None, "spec": planted_spec.to_dict()},
    ]
    for method, out in results.items():
        row = {"method": method, "seed": seed, "seconds": out["seconds"],
               "peak_mib": out["peak_mib"], "peak_growth_mib": out["peak_growth_mib"]}
        if method == "soft_ordering":
            row.update(grouping=f"mixing weights, {len(planted)} clusters (no tree)",
                       **grouping_scores(mixing_grouping(out["mixing"], len(planted)), planted),
                       params=out["params"], test_mse=out["test_mse"])
        else:
            spec = TreeSpec.from_dict(out["spec"])
            if method == "ltb":
                stage = closest_stage(out["widths"], len(planted))
                found = spec.partition(stage)
                label = f"stage {stage + 1} ({out['widths'][stage]} nodes)"
                row["widths"] = out["widths"]
            elif method == "evolution":
                found, label = deepest_shared_grouping(spec), "deepest shared block"
                row["system_test_mse"] = out["system_test_mse"]
            else:
                found = spec.partition(group_stage)
                label = f"stage {group_stage + 1} ({len(planted)} blocks bought)"
            again = retrained(spec)
            row.update(grouping=label, **grouping_scores(found, planted),
                       blocks=spec.blocks_per_stage(), spec=spec.to_dict(),
                       params=again["params"], test_mse=again["test_mse"],
                       retrain_seconds=again["seconds"])
        # Evolution's root is the shared model: its training is part of the cost.
        total = row["seconds"] + (shared["seconds"] if method == "evolution" else 0.0)
        row["ratio"] = total / shared["seconds"]
        rows.append(row)
    for row in rows:
        log(format_rows([row], header=False))
    return rows, cheap_rows


# === Tables ===


def _num(value, fmt: str) -> str:
    """A table cell: `value` formatted, or "-" when there is none."""
    return "-" if value is None else format(value, fmt)


COLUMNS = ("method", "seed", "grouping read at", "ARI", "purity", "parameters", "test MSE",
           "search s", "x shared", "peak RSS MiB", "+RSS MiB")


def format_rows(rows: Sequence[dict], header: bool = True) -> str:
    """The main table (Markdown), one row per method and seed."""
    lines = []
    if header:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|---|---:|---|" + "---:|" * 8]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['grouping']} | {_num(r['ari'], '.3f')} | "
            f"{_num(r['purity'], '.3f')} | {r['params']:,} | {r['test_mse']:.4f} | "
            f"{_num(r['seconds'], '.1f')} | {_num(r['ratio'], '.2f')} | "
            f"{_num(r['peak_mib'], '.0f')} | {_num(r['peak_growth_mib'], '.0f')} |")
    return "\n".join(lines)


CHEAP_COLUMNS = ("seed", "probe epochs", "training fraction", "probes s", "x full probes",
                 "Spearman per stage", "same tree", "tree", "ARI")


def format_cheap_rows(rows: Sequence[dict], header: bool = True) -> str:
    """The cheap-probe agreement table (Markdown)."""
    lines = []
    if header:
        lines += ["| " + " | ".join(CHEAP_COLUMNS) + " |", "|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['epochs']} | {r['fraction']:g} | {r['seconds']:.1f} | "
            f"{r['seconds'] / r['full_seconds']:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in r['spearman'])} | {'yes' if r['same_tree'] else 'no'} | "
            f"{r['blocks']} | {r['ari']:.3f} |")
    return "\n".join(lines)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per method over seeds: mean ARI, seeds at ARI 1.0, mean test MSE (std), mean time ratio."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        aris = [r["ari"] for r in group if r["ari"] is not None]
        mse, std = mean_and_std([r["test_mse"] for r in group])
        ratios = [r["ratio"] for r in group if r["ratio"] is not None]
        peaks = [r["peak_mib"] for r in group if r["peak_mib"] is not None]
        out.append({
            "method": method, "seeds": len(group),
            "mean_ari": float(np.mean(aris)) if aris else None,
            "exact": sum(a == 1.0 for a in aris) if aris else None,
            "mean_purity": (float(np.mean([r["purity"] for r in group])) if aris else None),
            "mean_test_mse": mse, "std_test_mse": std,
            "mean_params": float(np.mean([r["params"] for r in group])),
            "mean_ratio": float(np.mean(ratios)) if ratios else None,
            "max_peak_mib": max(peaks) if peaks else None,
        })
    return out


def format_summary(summary: Sequence[dict]) -> str:
    """The per-method summary over seeds (Markdown)."""
    lines = ["| method | seeds | mean ARI | seeds at ARI 1.0 | mean purity | mean parameters | "
             "mean test MSE | std | mean x shared | max peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['seeds']} | {_num(s['mean_ari'], '.3f')} | "
            f"{_num(s['exact'], 'd')} | {_num(s['mean_purity'], '.3f')} | "
            f"{s['mean_params']:,.0f} | {s['mean_test_mse']:.4f} | {s['std_test_mse']:.4f} | "
            f"{_num(s['mean_ratio'], '.2f')} | {_num(s['max_peak_mib'], '.0f')} |")
    return "\n".join(lines)


def describe(config: dict, methods: Sequence[str]) -> str:
    """The settings in words, printed above the tables."""
    tasks = sum(config["groups"])
    num_stages = len(config["stages"])
    candidates = config["evolve_passes"] * tasks * config["evolve_candidates"]
    lines = [
        f"planted groups {'-'.join(map(str, config['groups']))} ({tasks} regression tasks), "
        f"dim {config['dim']}, {config['num_train']} training samples; "
        f"MLP {'-'.join(map(str, config['stages']))}; recipe: {config['epochs']} epochs, "
        f"batch {config['batch_size']}, Adam {config['learning_rate']:g}",
        f"tree budget: blocks {group_blocks(num_stages, config['groups'])} per stage",
    ]
    if "rsa" in methods:
        lines.append(f"rsa: {config['probe_epochs']} probe epochs, {config['num_inputs']} inputs")
    if "tag" in methods:
        rate = config["lookahead_lr"]
        lines.append(f"tag: {config['epochs']} epochs, lookahead every {config['tag_every']} "
                     f"steps at rate {'the library default' if rate is None else format(rate, 'g')}")
    if "ltb" in methods:
        lines.append(f"ltb: widths {ltb_widths(config, num_stages)}, {config['ltb_epochs']} epochs")
    if "evolution" in methods:
        lines.append(
            f"evolution budget: {config['evolve_passes']} pass(es) x {tasks} tasks x "
            f"{config['evolve_candidates']} candidate(s) = {candidates} candidate trainings of "
            f"{config['evolve_candidate_epochs']} epoch(s) on one task's {config['num_train']} "
            f"samples ({candidates * config['evolve_candidate_epochs']} single-task epochs); "
            f"scale {config['evolve_scale']:g}; root: the shared model")
    if "soft_ordering" in methods:
        lines.append(f"soft_ordering: Dense({config['stages'][0]}) encoder per task, pool of "
                     f"{num_stages - 1} Dense({config['stages'][0]}), {config['epochs']} epochs")
    return "\n".join(lines)


# === Command line ===


def _ints(text: str, flag: str, separator: str = ",") -> list[int]:
    """Non-negative integers from a flag's text, or SystemExit naming the flag."""
    try:
        values = [int(v) for v in text.split(separator)]
    except ValueError:
        raise SystemExit(f"{flag} must be integers separated by {separator!r}. Received: {text!r}")
    if min(values) < 0:
        raise SystemExit(f"{flag} must be non-negative. Received: {text!r}")
    return values


def _cheap(text: str) -> list[list]:
    """`--cheap`'s variants as [epochs, fraction] pairs."""
    variants = []
    for item in filter(None, text.split(",")):
        epochs, _, fraction = item.partition(":")
        try:
            variant = [int(epochs), float(fraction or 1.0)]
        except ValueError:
            raise SystemExit(f"--cheap entries must be EPOCHS:FRACTION. Received: {item!r}")
        if variant[0] < 1 or not 0 < variant[1] <= 1:
            raise SystemExit(f"--cheap needs epochs >= 1 and a fraction in (0, 1]. Received: {item!r}")
        variants.append(variant)
    return variants


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    d = DEFAULTS
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset (shared and planted always run)")
    parser.add_argument("--groups", default="-".join(map(str, d["groups"])),
                        help="planted group sizes joined by '-'")
    parser.add_argument("--dim", type=int, default=d["dim"], help="input dimension")
    parser.add_argument("--num-train", type=int, default=d["num_train"], help="training samples")
    parser.add_argument("--num-validation", type=int, default=d["num_validation"],
                        help="validation samples (the probes' inputs, evolution's judge)")
    parser.add_argument("--num-test", type=int, default=d["num_test"], help="test samples")
    parser.add_argument("--stages", default=",".join(map(str, d["stages"])),
                        help="MLP units per stage")
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help="epochs of every training, TAG's and retraining")
    parser.add_argument("--probe-epochs", type=int, default=d["probe_epochs"],
                        help="RSA: training epochs of each probe (the demo's)")
    parser.add_argument("--num-inputs", type=int, default=d["num_inputs"],
                        help="RSA: held-out inputs every probe sees")
    parser.add_argument("--tag-every", type=int, default=d["tag_every"],
                        help="TAG: steps between lookaheads")
    parser.add_argument("--lookahead-lr", type=float, default=d["lookahead_lr"],
                        help="TAG: lookahead step size (None: affinity_search's default)")
    parser.add_argument("--ltb-widths",
                        help="LTB: nodes per stage, comma-separated (None: 2, 4, 8, ... then "
                             "one per task)")
    parser.add_argument("--ltb-epochs", type=int, default=d["ltb_epochs"],
                        help="LTB: search epochs (learn_to_branch's own default is 30)")
    parser.add_argument("--evolve-scale", type=float, default=d["evolve_scale"],
                        help="evolution: muNet's scale-control factor s")
    parser.add_argument("--evolve-passes", type=int, default=d["evolve_passes"],
                        help="evolution: rounds over the tasks")
    parser.add_argument("--evolve-candidates", type=int, default=d["evolve_candidates"],
                        help="evolution: candidates per task visit")
    parser.add_argument("--evolve-candidate-epochs", type=int,
                        default=d["evolve_candidate_epochs"],
                        help="evolution: training epochs of one candidate")
    parser.add_argument("--cheap", default=",".join(f"{e}:{f:g}" for e, f in d["cheap"]),
                        help="cheap RSA probe variants EPOCHS:FRACTION, comma-separated; '' for "
                             "none")
    parser.add_argument("--cheap-seeds",
                        help="seeds that measure the cheap probes, comma-separated (None: the first seed)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every method in this process (faster; peak memory then only "
                             "shows growth of one shared peak)")
    parser.add_argument("--out", help="folder for forty_tasks.json (refused if it exists)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (only a folder keras_branch wrote)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Runs the benchmark; prints the tables; returns (and with --out writes) the results."""
    args = parse_args(argv)
    if args.worker:
        raise SystemExit(worker(args.worker))
    say = log or (lambda line: print(line, flush=True))
    if args.out and os.path.lexists(args.out) and not args.overwrite:
        # Refused before an hour of training, not after.
        raise SystemExit(f"--out exists: {args.out!r}; pass --overwrite to replace it.")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    seeds = _ints(args.seeds, "--seeds")
    config = {
        **DEFAULTS, "groups": _ints(args.groups, "--groups", "-"), "dim": args.dim,
        "num_train": args.num_train, "num_validation": args.num_validation,
        "num_test": args.num_test, "stages": _ints(args.stages, "--stages"),
        "epochs": args.epochs, "probe_epochs": args.probe_epochs, "num_inputs": args.num_inputs,
        "tag_every": args.tag_every, "lookahead_lr": args.lookahead_lr,
        "ltb_widths": _ints(args.ltb_widths, "--ltb-widths") if args.ltb_widths else None,
        "ltb_epochs": args.ltb_epochs, "evolve_scale": args.evolve_scale,
        "evolve_passes": args.evolve_passes, "evolve_candidates": args.evolve_candidates,
        "evolve_candidate_epochs": args.evolve_candidate_epochs, "cheap": _cheap(args.cheap),
    }
    cheap_seeds = _ints(args.cheap_seeds, "--cheap-seeds") if args.cheap_seeds else seeds[:1]
    isolate = not args.in_process
    where = machine()
    say(f"machine: {where}")
    say(describe(config, methods))
    say("memory: " + ("each method in its own process; peak RSS = its process's "
                      "ru_maxrss, +RSS = above the process's peak after imports, data and "
                      "warm-up" if isolate else
                      "all methods in one process: +RSS = growth of the shared ru_maxrss peak "
                      "(a lower bound)"))
    start = time.perf_counter()
    rows, cheap_rows = [], []
    with tempfile.TemporaryDirectory(prefix="forty_tasks_") as workdir:
        for seed in seeds:
            seed_rows, seed_cheap = run_seed(config, seed, methods, seed in cheap_seeds, isolate,
                                             workdir, say)
            rows += seed_rows
            cheap_rows += seed_cheap
    summary = summarize(rows)
    table = format_rows(rows)
    say("")
    say(table)
    say("")
    say(format_summary(summary))
    if cheap_rows:
        say("")
        say("Cheaper RSA probes against the full ones (Spearman of the affinities' upper "
            "triangles per stage; tree: the search's blocks per stage under the same budget)")
        say(format_cheap_rows(cheap_rows))
    total = time.perf_counter() - start
    say(f"\ntotal time {total:.0f} s")
    result = {"config": config, "methods": methods, "seeds": seeds, "machine": where,
              "isolated": isolate, "memory": "resource.getrusage(RUSAGE_SELF).ru_maxrss",
              "rows": rows, "summary": summary, "cheap": cheap_rows, "total_seconds": total,
              "table": table}
    if args.out:
        with atomic_path(args.out, overwrite=args.overwrite) as tmp:
            os.makedirs(tmp)
            atomic_write_json(os.path.join(tmp, "forty_tasks.json"), result)
        say(f"wrote {os.path.join(args.out, 'forty_tasks.json')}")
    return result


if __name__ == "__main__":
    main()
