"""Task affinity from one joint training: TAG's lookahead, measured per stage.

The fully shared model trains on every task. Every `every` steps, before the
step's update, for each stage d and each task i the parameters of stage d
alone take a lookahead SGD step on task i's loss,

    theta_d^{t+1|i} = theta_d^t - lookahead_lr * grad_{theta_d} L_i(X^t),

and every task j's loss on the same batch is compared before and after:

    Z^t[d, i -> j] = 1 - L_j(X^t; theta^{t+1|i}) / L_j(X^t; theta^t)

(positive: a step on i helps j). `Z[d]` is the mean of `Z^t[d]` over the
measured steps. TAG's paper takes the lookahead over all shared parameters
and gives one matrix; restricting it to one stage gives one matrix per stage,
the input the budgeted tree search needs (`keras_branch.search.tree_search`).

The lookahead rate defaults to the training's learning rate, as in TAG's
public code (the lookahead is the step the training would take). A rate far
above it leaves the first-order regime on small stages: on 40 planted tasks,
at 0.01 (Adam at 1e-3) the 16-unit last stage's self-affinity came out
negative for 15 to 40 of the 40 tasks (a step on a task's own loss raised it),
while at 1e-3 Z scaled with the rate as first order says.

From Z to a `TaskAffinity` (symmetric, 1 on the diagonal, in [-1, 1] like
the RSA affinity, so `1 - A` is the tree cost's dissimilarity), per stage d
(`affinity_from_z`; docs/tag.md has the measurements):

1. Path: `Zp[d] = Z[0] + ... + Z[d]`. Tasks in one block at stage d share
   every block before it (a tree's partitions are nested), so what they
   share is the path from the input through stage d; to first order a
   lookahead on several stages is the sum of the per-stage ones, so `Zp[d]`
   is the lookahead affinity of that path, and at the last stage it is TAG's
   whole-network matrix.
2. Symmetrise, `S = (Zp[d] + Zp[d]^T) / 2` (a tree shares a block both ways),
   and take the cosine `C[i, j] = clip(S[i, j] / sqrt(S[i, i] S[j, j]), -1, 1)`.
   To first order `Z[i -> j] ~ lr * g_i . g_j / L_j` (g_i: task i's gradient
   of the path), so C is about the cosine of the two tasks' gradients: free
   of the step size and of each task's gradient and loss scale. A task whose
   self-affinity `S[i, i]` is not positive (its own lookahead did not lower
   its loss on average: `lookahead_lr` too large, or no trainable weights)
   carries no information there: its C entries are 0, and
   `info["degenerate"]` names it.
3. Profiles over third tasks: `P[i, j]` = the correlation of rows i and j
   of C over the other tasks k (k != i, j): tasks are alike when they help
   and hurt the same other tasks, as RSA calls two tasks alike when their
   dissimilarity matrices correlate. Entries k = i, j are left out because
   they are not comparable (i's self-affinity against j's transfer to i).
   Lookahead cosines of related tasks are low and uneven (mean 0.5 within a
   planted group, some pairs near 0; about 0 across: a batch gradient
   carries each task's own residual); their correlation over third tasks is
   high and even (0.90-1.0 on average within a group). A correlation (not a
   cosine) so that a level every task shares does not make all tasks alike:
   on Omniglot every alphabet's step helps every other (cosines 0.56-0.81 at
   the first stage), and cosines of such rows are all about 1. With fewer
   than `MIN_THIRD_TASKS` (4) third tasks (6 tasks), P = C.
4. Weight by the path's part of the progress: `A = 1 - w (1 - P)` with
   `w[d, i, j] = sqrt(share[d, i] share[d, j])` and `share[d, i]` the part
   of task i's whole-network self-affinity made through stages 1..d
   (`path_shares`; 1 at the last stage). A dissimilarity then says how much
   of the two tasks' one-step progress goes through what they would share,
   and how differently it goes: every stage in the unit of the whole
   network's lookahead, so the tree search's stage costs compare like with
   like. Without it every stage counts fully, TAG's cross-group affinity is
   about 0 at every stage, and sharing the first block among all tasks costs
   as much as merging groups at the last stage; RSA's affinity instead rises
   toward the input (about 0.85 across planted groups at the first stage),
   because early layers serve every task. With the weights, TAG's across-group
   affinity is 0.72-0.93 on average at the first stage and falls with depth,
   as RSA's.

`affinity_from_z(z, profile=False, path=False)` gives the per-stage cosine C;
`info["z"]` keeps the raw mean Z, so any form can be recomputed.

Missing labels (-1, or NaN for regression; see `keras_branch.masked`): a
task's loss on a batch is the mean over its labelled samples, and a task
without a labelled sample in a measured batch takes part in no pair of that
batch (neither its row nor its column of `Z^t` counts). The mean of each
pair is over the steps where both tasks were present.

Measurement runs in inference mode (`training=False`: no dropout, batch
normalization on its moving statistics), so before and after differ by the
lookahead alone.

`split="half"` (not the default) fits each lookahead step on one half of the
batch and scores every task's loss on the other half, both ways round (two
folds, loss sums added): to first order `Z[i -> j] ~ lr g_i^A . g_j^B / L_j`
with g^A, g^B from disjoint samples, so a task's self-affinity no longer
includes its step's fit to the very samples it is scored on (with one batch
for both, `g_i . g_i` carries the batch's sampling noise, `|g|^2` of the
noise, which lowers every cosine). Measured on Omniglot-5 it raised the
lookahead cosines (stage 1: about 0.6 to 0.96) but left the pair structure
to noise at the benchmark's 108 lookaheads; docs/tag.md has the numbers.

Reference:
    Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
    Learning", NeurIPS 2021 (arXiv 2109.04617); Vandenhende et al.,
    "Branched Multi-Task Networks: Deciding What Layers To Share", BMVC 2020.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_branch import distribute
from keras_branch.backbones import Backbone
from keras_branch.build import block_name, build_model
from keras_branch.checks import check_int, check_number
from keras_branch.data.multitask import MultiTaskData
from keras_branch.errors import SearchError
from keras_branch.masked import MaskedLoss, label_mask
from keras_branch.search.affinity import TaskAffinity
from keras_branch.seeding import seeded_layers
from keras_branch.spec import TreeSpec

_SUM = tf.distribute.ReduceOp.SUM


def _any_batch_size(value: Any) -> tf.TensorSpec:
    value = tf.convert_to_tensor(value)
    return tf.TensorSpec([None, *value.shape[1:]], value.dtype)


def path_shares(z: np.ndarray) -> np.ndarray:
    """[stages, T]: the part of each task's one-step progress made through stages 1..d.

    `share[d, i] = sum_{d' <= d} max(Z[d', i, i], 0) / sum_{d'} max(Z[d', i, i], 0)`
    (0 at every stage for a task whose self-affinity is positive at none). To
    first order `Z[d, i, i] ~ lr |g_i^d|^2 / L_i`, and the per-stage terms add
    up to the lookahead over the whole network; so `share[d, i]` rises with d
    to 1 at the last stage.

    Args:
        z: mean lookahead affinities [stages, T, T].

    Returns:
        The shares, non-decreasing over the stages.

    Example:
    >>> path_shares(np.array([[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.0], [0.0, -0.1]]])).round(4).tolist()
    [[0.25, 1.0], [1.0, 1.0]]
    """
    own = np.maximum(np.diagonal(np.asarray(z, dtype="float64"), axis1=1, axis2=2), 0.0)
    total = own.sum(axis=0, keepdims=True)
    return np.divide(np.cumsum(own, axis=0), total, out=np.zeros_like(own), where=total > 0)


#: Third tasks a profile needs. Over n values the correlation of two unrelated
#: rows has density proportional to (1 - r^2)^((n - 4) / 2): over two values it
#: is +1 or -1, over three it is most likely near +1 or -1 (arcsine: |r| > 0.9
#: for 29% of unrelated pairs), and from four on it no longer favours the
#: extremes (uniform at four, peaked at 0 beyond). So at least four third tasks
#: (six tasks); with fewer the profile is the cosine itself.
MIN_THIRD_TASKS = 4


def _third_task_profiles(cosine: np.ndarray) -> np.ndarray:
    """Per stage, the correlation of rows i and j of `cosine` over the tasks k other than i and j."""
    num_tasks = cosine.shape[1]
    n = num_tasks - 2
    if n < MIN_THIRD_TASKS:
        return cosine
    diagonal = np.arange(num_tasks)
    off = cosine.copy()
    off[:, diagonal, diagonal] = 0.0
    # Sums over k != i, j from sums over all k: with the diagonal zeroed, row i
    # only has to drop its entry k = j (C[i, j]); the cross sum has no k = i or
    # k = j term left.
    sums = off.sum(axis=2)[:, :, None] - off                  # [D, i, j]: sum of row i
    squares = (off * off).sum(axis=2)[:, :, None] - off * off
    dots = off @ np.swapaxes(off, 1, 2)
    cov = dots - sums * np.swapaxes(sums, 1, 2) / n
    var = squares - sums * sums / n
    norms = np.sqrt(np.clip(var, 0.0, None) * np.clip(np.swapaxes(var, 1, 2), 0.0, None))
    defined = norms > 1e-12
    profiles = np.divide(cov, np.where(defined, norms, 1.0), out=np.zeros_like(cov), where=defined)
    # A row without variation over the third tasks has no pattern to compare: keep the cosine.
    return np.where(defined, np.clip(profiles, -1.0, 1.0), cosine)


def affinity_from_z(
    z: np.ndarray, profile: bool = True, path: bool = True
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """TAG's asymmetric Z [stages, T, T] as affinities: symmetric, 1 on the diagonal.

    Per stage d:

    1. with `path` (the default), the lookahead of the path from the input
       through stage d, `Zp[d] = Z[0] + ... + Z[d]` (first order, a lookahead
       on stages 1..d is the sum of the per-stage ones); otherwise `Zp[d] = Z[d]`;
    2. with `S = (Zp[d] + Zp[d]^T) / 2`, the lookahead cosine
       `C[i, j] = clip(S[i, j] / sqrt(S[i, i] S[j, j]), -1, 1)`, `C[i, i] = 1`;
       a task whose self-affinity `S[i, i]` is not positive gets
       `C[i, j] = 0` for every other task j;
    3. with `profile` (the default) and at least `MIN_THIRD_TASKS` third
       tasks, `P[i, j]` is the correlation of rows i and j of C over the
       third tasks k (k != i, j): two tasks are alike when they help and hurt
       the same other tasks (otherwise P = C);
    4. with `path`, `A[d, i, j] = 1 - w[d, i, j] (1 - P[i, j])`, where
       `w[d, i, j] = sqrt(share[d, i] share[d, j])` (`path_shares`) is the
       part of the two tasks' one-step progress made through the path;
       otherwise A = P.

    See the module docstring for why.

    Args:
        z: mean lookahead affinities, `z[d, i, j]` for a step on i seen by j.
        profile: compare the tasks' relations to third tasks (step 3).
        path: measure stage d through stages 1..d, weighted by their share
            of the whole network's lookahead (steps 1 and 4).

    Returns:
        `(values, degenerate)`: the affinities [stages, T, T] in [-1, 1] and
        the `(stage, task)` pairs whose self-affinity (of the path, with
        `path`) was not positive.

    Example:
    >>> z = np.array([[[0.75, -0.625], [-1.5, 0.75]]])
    >>> affinity_from_z(z, profile=False)[0][0].tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    >>> affinity_from_z(np.array([[[0.4, 0.1], [0.1, 0.1]]]), profile=False)[0][0].tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    >>> two_stages = np.array([[[0.1, 0.0], [0.0, 0.1]], [[0.3, 0.2], [0.2, 0.3]]])
    >>> affinity_from_z(two_stages, path=False)[0][:, 0, 1].round(4).tolist()
    [0.0, 0.6667]
    >>> affinity_from_z(two_stages)[0][:, 0, 1].round(4).tolist()   # 1 - 0.25, 1 - (1 - 0.2 / 0.4)
    [0.75, 0.5]
    """
    z = np.asarray(z, dtype="float64")
    if z.ndim != 3 or z.shape[1] != z.shape[2] or not np.all(np.isfinite(z)):
        raise SearchError(f"`z` must be a finite array of shape [stages, tasks, tasks]. "
                          f"Received shape {z.shape}.")
    measured = np.cumsum(z, axis=0) if path else z
    s = (measured + np.swapaxes(measured, 1, 2)) / 2.0
    self_affinity = np.diagonal(s, axis1=1, axis2=2)  # [stages, T]
    informative = self_affinity > 0
    scale = np.sqrt(np.where(informative, self_affinity, 1.0))
    values = np.clip(s / (scale[:, :, None] * scale[:, None, :]), -1.0, 1.0)
    values = np.where(informative[:, :, None] & informative[:, None, :], values, 0.0)
    diagonal = np.arange(z.shape[1])
    values[:, diagonal, diagonal] = 1.0
    if profile:
        values = _third_task_profiles(values)
    if path:
        share = path_shares(z)
        values = 1.0 - np.sqrt(share[:, :, None] * share[:, None, :]) * (1.0 - values)
    values[:, diagonal, diagonal] = 1.0
    degenerate = [(int(d), int(t)) for d, t in zip(*np.nonzero(~informative))]
    return values, degenerate


#: How a measured batch is used (`LookaheadMeter(split=...)`). None: each
#: task's step is fitted on the batch and every task's loss is scored on the
#: same batch. "half": two-fold, the step fitted on one half of the batch and
#: the losses scored on the other, both ways round.
SPLITS = (None, "half")
SPLIT_DEFAULT: str | None = None


def _check_split(split: str | None) -> str | None:
    """`split` if it is one of `SPLITS`, else a SearchError naming it."""
    if split not in SPLITS:
        raise SearchError(f"`split` must be one of {list(SPLITS)}. Received: {split!r}")
    return split


class LookaheadMeter:
    """Measures and accumulates TAG's per-stage lookahead affinity Z on batches.

    Args:
        model: a fully shared `BranchedModel` (`TreeSpec.shared`: one block
            per stage), built under `strategy.scope()` when a strategy is given.
        lookahead_lr: the SGD rate of the lookahead step.
        strategy: the `tf.distribute` strategy the model lives under (None:
            the default strategy). With more than one replica, batches must
            come from `strategy.experimental_distribute_dataset`.
        input_signature: the `(x, y)` batch spec (a distributed dataset's
            `element_spec`), so that one trace serves every batch size;
            default: made from the first batch with any batch size.
        split: one of `SPLITS`. None: each task's step is fitted on the batch
            and every task's loss scored on the same batch. `"half"`: two
            folds; the step fitted on the samples at even positions (of each
            replica's part of the batch) and the losses scored on the odd
            ones, then the other way round; `Z^t[i -> j] = 1 - (L'_j(odd) +
            L'_j(even)) / (L_j(odd) + L_j(even))` over loss sums. A task takes
            part in a batch's pairs only if it is labelled in both halves.

    Attributes:
        total: [stages, T, T] sum of `Z^t` over measured steps.
        pairs: [T, T] number of measured steps where both tasks were present.
        steps: number of measured batches.

    Example:
    >>> tasks = [Task("a", "regression"), Task("b", "regression")]
    >>> model = build_model(TreeSpec.shared(["a", "b"], 2), backbones.mlp(3, (4, 4)), tasks)
    >>> meter = LookaheadMeter(model, lookahead_lr=0.1)
    >>> x = np.ones((8, 3), "float32")
    >>> y = {"a": np.ones(8, "float32"), "b": np.full(8, np.nan, "float32")}
    >>> z, pairs = meter.measure(x, y)   # task b has no label in this batch
    >>> z.shape, pairs.tolist()
    ((2, 2, 2), [[True, False], [False, False]])
    """

    def __init__(self, model: keras.Model, lookahead_lr: float = 0.01,
                 strategy: tf.distribute.Strategy | None = None, input_signature: Any = None,
                 split: str | None = None):
        self.lookahead_lr = check_number(lookahead_lr, "lookahead_lr", minimum=0, error=SearchError)
        self.split = _check_split(split)
        spec = getattr(model, "spec", None)
        if not isinstance(spec, TreeSpec) or any(spec.blocks(d) != [0] for d in range(spec.num_stages)):
            raise SearchError("TAG measures a fully shared BranchedModel (TreeSpec.shared); "
                              f"received {type(model).__name__} with spec {spec}.")
        self.model = model
        self.strategy = distribute.get_strategy(strategy)
        self.tasks = list(model.tasks)
        self.num_stages = spec.num_stages
        num_tasks = len(self.tasks)
        self.total = np.zeros((self.num_stages, num_tasks, num_tasks))
        self.pairs = np.zeros((num_tasks, num_tasks), dtype=np.int64)
        self.steps = 0
        # Tasks of one kind and width share one loss call (a few ops instead of
        # a few per task: tracing and running the vectorized lookahead is faster).
        kinds: dict[tuple[str, int], list[int]] = {}
        for i, task in enumerate(self.tasks):
            kinds.setdefault((task.kind, task.units), []).append(i)
        self._kinds = [
            (units, members, MaskedLoss(kind, reduction=None,
                                        task=", ".join(self.tasks[i].name for i in members)))
            for (kind, units), members in kinds.items()
        ]
        self._order = np.argsort(np.concatenate([m for _, m, _ in self._kinds]))
        stages = [model.get_layer(block_name(d, 0)) for d in range(self.num_stages)]
        self._stage_vars = [list(layer.trainable_variables) for layer in stages]
        # The stage inputs and outputs of one forward pass; from stage d on, the
        # rest of the network (what a lookahead on stage d changes).
        self._reader = keras.Model(model.input, [[s.input for s in stages], model.output])
        self._tails = [keras.Model(s.input, model.output) for s in stages]
        self._signature = input_signature
        self._step: Callable | None = None

    def task_sums(self, y: dict[str, Any], outputs: dict[str, Any]) -> tf.Tensor:
        """[T] sums over the batch of each task's masked per-sample loss."""
        sums = []
        for units, members, loss in self._kinds:
            keys = [self.tasks[i].key for i in members]
            labels = tf.stack([tf.reshape(y[k], [-1]) for k in keys], axis=1)  # [B, n]
            predicted = tf.stack([tf.reshape(outputs[k], [-1, units]) for k in keys], axis=1)
            per_sample = loss(tf.reshape(labels, [-1]), tf.reshape(predicted, [-1, units]))
            sums.append(tf.reduce_sum(tf.reshape(tf.cast(per_sample, "float32"), [-1, len(keys)]), 0))
        return tf.gather(tf.concat(sums, 0), self._order)

    def _lookahead_sums(self, d: int, stage_input: tf.Tensor, y: dict[str, Any],
                        grads: list[tf.Tensor], before: tf.Tensor) -> tf.Tensor:
        """[T (step on i), T (loss of j)] loss sums after a lookahead on stage d."""
        variables = self._stage_vars[d]
        if not variables:
            return tf.tile(before[None, :], [len(self.tasks), 1])

        def after_step_on(task_grads):
            mapping = [(v, v - self.lookahead_lr * g) for v, g in zip(variables, task_grads)]
            with keras.StatelessScope(state_mapping=mapping):
                return self.task_sums(y, self._tails[d](stage_input, training=False))

        # One vectorized pass over the T lookahead weight sets instead of T passes.
        return tf.vectorized_map(after_step_on, grads)

    def _gradients(self, x: tf.Tensor, y: dict[str, Any]):
        """A forward pass on (x, y) and the T per-task gradients of its mean losses (all replicas).

        Returns `(stage_inputs, before, counts, jacobian)`: the stage inputs of
        this replica's x, its [T] loss sums and labelled counts, and per
        variable of the stages (in order) the [T, ...] gradients of the tasks'
        mean losses over every replica's labelled samples of the batch.
        """
        context = tf.distribute.get_replica_context()
        counts = tf.stack([tf.reduce_sum(label_mask(y[t.key], t.kind)) for t in self.tasks])
        global_counts = context.all_reduce(_SUM, counts)
        flat = [v for stage in self._stage_vars for v in stage]
        with tf.GradientTape() as tape:
            stage_inputs, outputs = self._reader(x, training=False)
            before = self.task_sums(y, outputs)
            means = tf.math.divide_no_nan(before, global_counts)  # L_i over labelled samples
        # Row i: the gradient of L_i; pfor computes the T of them in one pass.
        jacobian = tape.jacobian(means, flat, experimental_use_pfor=True) if flat else []
        jacobian = context.all_reduce(_SUM, jacobian) if flat else []
        return stage_inputs, before, counts, jacobian

    def _after(self, stage_inputs, y, jacobian, before) -> tf.Tensor:
        """[stages, T (step on i), T (loss of j)] loss sums of (stage_inputs, y) after each lookahead."""
        after, start = [], 0
        for d, variables in enumerate(self._stage_vars):
            grads = jacobian[start: start + len(variables)]
            start += len(variables)
            after.append(self._lookahead_sums(d, stage_inputs[d], y, grads, before))
        return tf.stack(after)

    def _replica_step(self, x: tf.Tensor, y: dict[str, Any]):
        if self.split is None:
            stage_inputs, before, counts, jacobian = self._gradients(x, y)
            return before, self._after(stage_inputs, y, jacobian, before), counts[None]
        # Two-fold: the step fitted on one half of the batch (the samples at even
        # positions of each replica's part, then the odd ones), the losses scored
        # on the other half; sums over the two halves. Halves by position parity
        # are the same on one device and across replicas with even parts.
        halves = [(x[h::2], {k: v[h::2] for k, v in y.items()}) for h in (0, 1)]
        measured = [self._gradients(hx, hy) for hx, hy in halves]
        before = measured[0][1] + measured[1][1]
        after = sum(self._after(measured[1 - h][0], halves[1 - h][1], measured[h][3], measured[1 - h][1])
                    for h in (0, 1))
        return before, after, tf.stack([measured[0][2], measured[1][2]])

    def _distributed_step(self, x, y):
        per_replica = self.strategy.run(self._replica_step, args=(x, y))
        return self.strategy.reduce(_SUM, per_replica, axis=None)

    def measure(self, x: Any, y: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Z of one batch at the model's current weights, added to the running totals.

        Args:
            x: the batch's inputs (a distributed value under a multi-replica strategy).
            y: `{task_key: labels}`, missing labels marked as in `keras_branch.masked`.

        Returns:
            `(z, pairs)`: this batch's `Z^t` [stages, T, T] (NaN for pairs not
            measured) and the [T, T] mask of measured pairs (both tasks labelled
            in the batch (in both halves with `split="half"`), with a positive
            loss). The model's weights are unchanged.
        """
        if self._step is None:
            if self._signature is None and not isinstance(x, tf.distribute.DistributedValues):
                self._signature = tf.nest.map_structure(_any_batch_size, (x, y))
            self._step = tf.function(self._distributed_step, input_signature=self._signature,
                                     reduce_retracing=True)
        before, after, counts = (np.asarray(v, dtype="float64") for v in self._step(x, y))
        # counts: [parts, T], one row per part of the batch (two halves with `split`).
        present = np.all(counts > 0, axis=0) & (before > 0)
        pairs = present[:, None] & present[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(pairs[None], 1.0 - after / before[None, None, :], np.nan)
        self.total += np.where(pairs[None], z, 0.0)
        self.pairs += pairs
        self.steps += 1
        return z, pairs

    @property
    def z(self) -> np.ndarray:
        """[stages, T, T] mean Z per pair over the steps that measured it (0 if none did)."""
        return self.total / np.maximum(self.pairs, 1)[None]


def _check_tag_data(data: MultiTaskData, tasks: Sequence[str] | None) -> list[str]:
    names = data.task_names if tasks is None else list(tasks)
    unknown = sorted(set(names) - set(data.task_names))
    if unknown:
        raise SearchError(f"Unknown task(s) {unknown}; data tasks are {data.task_names}.")
    if len(names) < 2:
        raise SearchError(f"Affinity needs at least 2 tasks. Received: {names}")
    labelled = data.labelled_counts("train")
    if any(labelled[n] == 0 for n in names):
        raise SearchError(
            f"Task(s) {[n for n in names if labelled[n] == 0]} of {data.name!r} have no labelled "
            f"training sample (every label missing): TAG would never measure them. Remove them "
            f"from the data or label some samples."
        )
    return names


def tag_affinity(
    data: MultiTaskData,
    backbone: Backbone,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    every: int = 10,
    lookahead_lr: float | None = None,
    seed: int = 0,
    strategy: str | tf.distribute.Strategy | None = None,
    log: Callable[[str], None] | None = print,
    tasks: Sequence[str] | None = None,
    split: str | None = SPLIT_DEFAULT,
) -> TaskAffinity:
    """Measures task affinity per stage during one training of the fully shared model (TAG).

    The fully shared `BranchedModel` trains with Adam on the sum of the
    tasks' masked losses (each weighted by `Task.loss_weight`) for `epochs`
    epochs; every `every` steps (the first step included), before the step's
    update, `LookaheadMeter` measures Z on the step's batch.

    Args:
        data: multi-task data; its `train` split is used.
        backbone: the staged backbone.
        epochs, batch_size, learning_rate: the joint training (global batch).
        every: measure the lookahead affinity every `every` steps (k).
        lookahead_lr: SGD rate of the lookahead steps (None: `learning_rate`,
            the step the training takes, as in TAG's public code).
        seed: seed of the initial weights and of the batch order.
        strategy: a `tf.distribute` strategy or its name (see
            `keras_branch.distribute.get_strategy`); None: the default one.
        log: progress lines (None for silence).
        tasks: names of the tasks to compare (default: all of `data`).
        split: None (the default): each lookahead step is fitted and scored
            on the whole batch; `"half"`: fitted on one half of the batch
            (samples at even or odd positions of each replica's part) and
            scored on the other, both ways round (`LookaheadMeter`).

    Returns:
        `TaskAffinity` [stages, tasks, tasks] made from Z by
        `affinity_from_z`; `info` holds `method: "tag"`, the settings, the
        raw mean `z`, the measured `pairs`, `measured_steps`, `degenerate`,
        `path_share` (per stage, the tasks' mean `path_shares`) and the
        training loss per epoch.

    Raises:
        SearchError: bad settings, or a task without any labelled training
            sample (refused before training, as `task_affinity` does).

    Example:
    >>> data = planted_groups(group_sizes=(2, 2), num_train=256, seed=0)
    >>> aff = tag_affinity(data, backbones.mlp(100, (16, 16)), epochs=2, every=2, log=None)
    >>> aff.values.shape, aff.info["method"]
    ((2, 4, 4), 'tag')

    Reference:
        Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
        Learning", NeurIPS 2021.
    """
    names = _check_tag_data(data, tasks)
    for field, value in (("epochs", epochs), ("batch_size", batch_size), ("every", every)):
        check_int(value, field, minimum=1, error=SearchError)
    check_number(learning_rate, "learning_rate", minimum=0, error=SearchError)
    if lookahead_lr is None:
        lookahead_lr = learning_rate
    check_number(lookahead_lr, "lookahead_lr", minimum=0, error=SearchError)
    check_int(seed, "seed", minimum=0, error=SearchError)
    _check_split(split)
    if tasks is not None:
        data = data.select_tasks(names)
    strategy = distribute.get_strategy(strategy)
    by_name = {t.name: t for t in data.tasks}
    with seeded_layers(seed), strategy.scope():
        model = build_model(TreeSpec.shared(names, backbone.num_stages),
                            distribute.prepare_backbone(backbone, strategy),
                            [by_name[n] for n in names])
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(model.trainable_variables)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # tf.data's autotuning held up the iterator's deletion, at random, until about
    # 20 s after its creation (TF 2.21, 2 cores); gathers from memory need no tuning.
    options.autotune.enabled = False
    dataset = data.epoch_dataset("train", batch_size, seed, 0, epochs).with_options(options)
    distributed = strategy.experimental_distribute_dataset(dataset)
    # One trace for every batch size (the last batch of an epoch is smaller).
    meter = LookaheadMeter(model, lookahead_lr, strategy, input_signature=distributed.element_spec,
                           split=split)
    weights = tf.constant([t.loss_weight for t in model.tasks], "float32")

    def replica_train(x, y):
        size = tf.distribute.get_replica_context().all_reduce(_SUM, tf.cast(tf.shape(x)[0], "float32"))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(weights * meter.task_sums(y, model(x, training=True))) / size
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    @tf.function(input_signature=distributed.element_spec)
    def train_step(x, y):
        return strategy.reduce(_SUM, strategy.run(replica_train, args=(x, y)), axis=None)

    batches = iter(distributed)
    steps, history = data.steps("train", batch_size), []
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for step in range(epoch * steps, (epoch + 1) * steps):
            x, y = next(batches)
            if step % every == 0:
                meter.measure(x, y)
            total += float(train_step(x, y))
        history.append(total / steps)
        if log:
            log(f"tag epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}, "
                f"{meter.steps} lookaheads so far ({time.perf_counter() - start:.1f} s)")
    values, degenerate = affinity_from_z(meter.z)
    if degenerate and log:
        log(f"tag: no self-affinity (affinities set to 0) at (stage, task) {degenerate}")
    info = {"method": "tag", "epochs": epochs, "batch_size": batch_size,
            "learning_rate": learning_rate, "every": every, "lookahead_lr": lookahead_lr,
            "split": split, "seed": seed, "backbone": backbone.name, "replicas": strategy.num_replicas_in_sync,
            "measured_steps": meter.steps, "loss": history,
            "normalisation": "path Zp[d] = Z[0] + ... + Z[d]; S = (Zp + Zp^T) / 2; "
                             "C = clip(S_ij / sqrt(S_ii S_jj), -1, 1); P = cosine of rows i, j "
                             "of C over third tasks; A = 1 - sqrt(share_i share_j) (1 - P), "
                             "share = path's part of the whole network's self-affinity",
            "path_share": path_shares(meter.z).mean(axis=1).tolist(),
            "degenerate": [[d, names[t]] for d, t in degenerate],
            "z": meter.z.tolist(), "pairs": meter.pairs.tolist()}
    return TaskAffinity(values, names, info)
