"""Task affinity by representation similarity analysis (RSA).

For every task a short "probe" network (the backbone with one head) is
trained from one shared initialisation. The same K held-out inputs go through
every probe; at each stage d the activations give a representation
dissimilarity matrix `RDM_t^d[a, b] = 1 - pearson(f_a, f_b)`, and the
affinity of tasks i and j is the Spearman rank correlation of the strict
upper triangles of their RDMs:

    A[d, i, j] = spearman(triu(RDM_i^d), triu(RDM_j^d))

Reference:
    Vandenhende et al., "Branched Multi-Task Networks: Deciding What Layers
    To Share", BMVC 2020 (arXiv 1904.02920); Dwivedi & Roig, "Representation
    Similarity Analysis for Efficient Task Taxonomy & Transfer Learning",
    CVPR 2019.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_branch.backbones import Backbone
from keras_branch.build import block_name, build_model
from keras_branch.checks import check_int
from keras_branch.compiling import compile_model
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.evaluation import evaluate
from keras_branch.files import atomic_write_text, strict_json
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec

# === RSA arithmetic ===


def rdm(features: np.ndarray) -> np.ndarray:
    """Representation dissimilarity matrix: 1 - Pearson correlation of rows.

    Args:
        features: [K, ...] activations of K inputs (flattened per input).

    Returns:
        [K, K] matrix. A constant row (e.g. all-zero ReLU output) has no
        correlation; it is treated as uncorrelated (dissimilarity 1).
    """
    f = np.asarray(features, dtype="float64").reshape(len(features), -1)
    centred = f - f.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = centred / safe[:, None]
    corr = unit @ unit.T
    constant = norms == 0
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    np.fill_diagonal(corr, 1.0)
    return 1.0 - np.clip(corr, -1.0, 1.0)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a vector, ties sharing their average rank."""
    x = np.asarray(values, dtype="float64").ravel()
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts_mask = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_mask) - 1
    starts = np.flatnonzero(starts_mask)
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(x))
    ranks[order] = average[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks."""
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def rdm_affinity(rdms: np.ndarray) -> np.ndarray:
    """[T, T] Spearman correlations of the strict upper triangles of T RDMs."""
    rdms = np.asarray(rdms, dtype="float64")
    k = rdms.shape[-1]
    rows, cols = np.triu_indices(k, 1)
    ranks = np.stack([rankdata(m[rows, cols]) for m in rdms])
    return np.corrcoef(ranks)


# === The affinity object ===


class TaskAffinity:
    """Affinity tensor A [stages, tasks, tasks] with its task names.

    Args:
        values: the affinities (symmetric per stage, 1 on the diagonal).
        tasks: task names, in the order of the tensor's task axes.
        info: how it was measured (probe epochs, inputs, seed, ...).
    """

    def __init__(self, values: Any, tasks: Sequence[str], info: Mapping[str, Any] | None = None):
        array = np.asarray(values, dtype="float64")
        if array.ndim != 3 or array.shape[1] != array.shape[2]:
            raise SearchError(
                f"Affinity `values` must have shape [stages, tasks, tasks]. Received shape {array.shape}."
            )
        if len(tasks) != array.shape[1]:
            raise SearchError(
                f"Affinity has {array.shape[1]} tasks but {len(tasks)} task names were given."
            )
        if not np.all(np.isfinite(array)):
            raise SearchError("Affinity `values` contain NaN or infinite entries.")
        self.values = array
        self.tasks = list(tasks)
        self.info = dict(info or {})

    @property
    def num_stages(self) -> int:
        return self.values.shape[0]

    def order(self) -> list[int]:
        """Task order that puts similar tasks together (average linkage on mean 1 - A)."""
        return cluster_order(1.0 - self.values.mean(axis=0))

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "values": self.values.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskAffinity:
        if not isinstance(data, Mapping) or "tasks" not in data or "values" not in data:
            raise SearchError("An affinity file needs `tasks` and `values`.")
        try:
            values = np.asarray(data["values"], dtype="float64")
        except (TypeError, ValueError):
            raise SearchError("Affinity `values` must be a nested list of numbers.") from None
        return cls(values, data["tasks"], data.get("info"))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, strict_json(self.to_dict(), os.fspath(path), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskAffinity:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise SearchError(f"Affinity file does not exist: {os.fspath(path)!r}") from None
        except ValueError as err:
            raise SearchError(f"Affinity file {os.fspath(path)!r} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return f"TaskAffinity(stages={self.num_stages}, tasks={self.tasks})"


def average_linkage(dissim: np.ndarray, num_clusters: int = 1) -> list[list[int]]:
    """Average-linkage agglomerative clustering of a [n, n] dissimilarity into `num_clusters`.

    The two clusters of least mean dissimilarity merge (the first pair on a
    tie) until `num_clusters` are left; each cluster lists its members in
    merge order (leaf order).

    Example:
    >>> average_linkage(np.array([[0, 1, 9], [1, 0, 9], [9, 9, 0]]), 2)
    [[0, 1], [2]]
    """
    d = np.asarray(dissim, dtype="float64")
    clusters: list[list[int]] = [[i] for i in range(len(d))]
    while len(clusters) > max(num_clusters, 1):
        best, pair = np.inf, (0, 1)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                value = d[np.ix_(clusters[a], clusters[b])].mean()
                if value < best:
                    best, pair = value, (a, b)
        clusters[pair[0]] += clusters.pop(pair[1])
    return clusters


def cluster_order(dissim: np.ndarray) -> list[int]:
    """Leaf order of average-linkage agglomerative clustering."""
    return average_linkage(dissim, 1)[0]


# === Measuring affinity with probe networks ===


def _held_out_inputs(data: MultiTaskData, split: str, num_inputs: int, seed: int) -> np.ndarray:
    x = data.split(split).x
    if num_inputs > len(x):
        raise SearchError(
            f"`num_inputs`={num_inputs} exceeds the {len(x)} samples of split {split!r}."
        )
    pick = np.random.default_rng(seed).permutation(len(x))[:num_inputs]
    return x[np.sort(pick)]


def task_affinity(
    data: MultiTaskData,
    backbone: Backbone,
    tasks: Sequence[str] | None = None,
    probe_epochs: int = 5,
    num_inputs: int = 256,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    split: str = "validation",
    log: Callable[[str], None] | None = print,
) -> TaskAffinity:
    """Measures task affinity per stage with probe networks (RSA).

    Every probe is the backbone with one task head, starts from the same
    initial backbone weights, and trains `probe_epochs` epochs on that task's
    labelled training samples.

    Args:
        data: multi-task data with `train` and the held-out `split`.
        backbone: the staged backbone.
        tasks: names of the tasks to compare (default: all of `data`).
        probe_epochs: training length of each probe.
        num_inputs: K, the held-out inputs every probe sees.
        batch_size, learning_rate: probe training recipe.
        seed: seed of the shared initialisation and of the K inputs.
        split: where the K inputs come from.
        log: progress lines (None for silence).

    Returns:
        `TaskAffinity` with values [stages, tasks, tasks].

    Raises:
        SearchError: naming the task(s) without a single labelled training
            sample (every label missing). Their probes would learn nothing
            and their affinities would be noise that places them in the
            tree, so they are refused before any probe trains rather than
            skipped: the tree must route every task the data has. Drop
            such tasks from the data (or label some samples) and search again.
    """
    names = list(tasks) if tasks is not None else data.task_names
    unknown = [n for n in names if n not in data.task_names]
    if unknown:
        raise SearchError(f"Unknown task(s) {unknown}; data tasks are {data.task_names}.")
    if len(names) < 2:
        raise SearchError(f"Affinity needs at least 2 tasks. Received: {names}")
    counts = data.labelled_counts("train")
    unlabelled = [n for n in names if counts[n] == 0]
    if unlabelled:
        raise SearchError(
            f"Task(s) {unlabelled} of {data.name!r} have no labelled training sample (every "
            f"label missing): their probes would train on nothing. Remove them from the data "
            f"or label some samples."
        )
    for field, value in (("probe_epochs", probe_epochs), ("num_inputs", num_inputs)):
        check_int(value, field, minimum=1, error=SearchError)
    if num_inputs < 3:
        raise SearchError(f"`num_inputs` must be at least 3. Received: num_inputs={num_inputs}")
    by_name = {t.name: t for t in data.tasks}
    inputs = _held_out_inputs(data, split, num_inputs, seed)
    stages = backbone.num_stages
    shared_names = ["stem"] + [block_name(d, 0) for d in range(stages)]

    with seeded_layers(seed):
        reference = build_model(TreeSpec.shared([names[0]], stages), backbone, [by_name[names[0]]])
    initial = {
        layer.name: layer.get_weights() for layer in reference.layers if layer.name in shared_names
    }
    rdms = np.zeros((stages, len(names), num_inputs, num_inputs))
    metrics = {}
    for t, name in enumerate(names):
        start = time.perf_counter()
        # One seed for every probe: heads of equal shape start equal too, so
        # probes differ by their targets alone.
        task = by_name[name]
        with seeded_layers(seed + 1):
            probe = build_model(TreeSpec.shared([name], stages), backbone, [task], name="probe")
        for layer in probe.layers:
            if layer.name in initial:
                layer.set_weights(initial[layer.name])
        compile_model(probe, learning_rate=learning_rate)
        own = data.select_tasks([name])
        probe.fit(own.dataset("train", batch_size, shuffle=True, seed=seed),
                  epochs=probe_epochs, verbose=0, shuffle=False)
        if split in own.splits and len(own.split(split)):
            metrics[name] = evaluate(probe, own, split)[name]
        reader = keras.Model(
            probe.input, [probe.get_layer(block_name(d, 0)).output for d in range(stages)]
        )
        # A direct call: predict() in a loop over probes retraces every time.
        features = [np.asarray(f) for f in reader(inputs, training=False)]
        for d in range(stages):
            rdms[d, t] = rdm(features[d])
        if log:
            score = metrics.get(name, {})
            shown = ", ".join(f"{k} {v:.4f}" for k, v in score.items() if k in ("accuracy", "mse"))
            log(f"probe {t + 1}/{len(names)} {name}: {probe_epochs} epochs"
                f"{', ' + split + ' ' + shown if shown else ''} ({time.perf_counter() - start:.1f} s)")
    values = np.stack([rdm_affinity(rdms[d]) for d in range(stages)])
    info = {"probe_epochs": probe_epochs, "num_inputs": num_inputs, "seed": seed,
            "split": split, "backbone": backbone.name, "probe_metrics": metrics}
    return TaskAffinity(values, names, info)
