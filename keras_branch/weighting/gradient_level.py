"""Gradient-level weightings: GradNorm, PCGrad and CAGrad.

These need one gradient per task of the parameters that tasks share: the
step (`keras_branch.weighting.step`) takes T backward passes, all-reduces
the per-task gradients of the shared parameters over the replicas, and hands
them to the weighting as a [T, N] matrix (zero where a task does not use a
parameter, so in a tree each block's gradient mixes only the tasks that
share it). Parameters one task uses alone get that task's gradient, times
its weight.

The pure functions (`project_conflicting`, `conflict_averse`,
`gradnorm_step`) are the methods' maths on plain tensors; the classes hold
settings and state.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_branch.checks import check_int, check_number
from keras_branch.errors import WeightingError
from keras_branch.weighting.base import Weighting, masked_mean


def project_conflicting(grads: tf.Tensor, present: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """PCGrad's surgery: each task's gradient loses its component along every
    other task's gradient it conflicts with (negative dot product).

    Args:
        grads: [T, N] per-task gradients.
        present: [T] 1.0 for tasks in the batch (absent tasks neither project
            nor are projected on).
        order: [T, T] int: row i is the order in which task i visits the
            tasks (i itself is skipped).

    Returns:
        [N], the sum of the projected gradients of the present tasks.

    Example (the two-task case of the paper's figure):
    >>> g = tf.constant([[1.0, 0.0], [-1.0, 1.0]])
    >>> project_conflicting(g, tf.ones([2]), tf.constant([[0, 1], [1, 0]])).numpy()
    array([0.5, 1.5], dtype=float32)
    """
    num_tasks = grads.shape[0]
    norms2 = tf.reduce_sum(tf.square(grads), axis=1)
    own = tf.range(num_tasks)
    projected = grads
    for k in range(num_tasks):
        other = order[:, k]
        g_other = tf.gather(grads, other)
        dot = tf.reduce_sum(projected * g_other, axis=1)
        other_norm2 = tf.gather(norms2, other)
        conflict = (dot < 0) & (other != own) & (tf.gather(present, other) > 0) & (other_norm2 > 0)
        coefficient = tf.where(conflict, dot / tf.where(conflict, other_norm2, 1.0), 0.0)
        projected = projected - coefficient[:, None] * g_other
    return tf.reduce_sum(present[:, None] * projected, axis=0)


def conflict_averse(grads: tf.Tensor, present: tf.Tensor, c: float, steps: int = 21) -> tf.Tensor:
    """CAGrad: the update that maximises the worst task's improvement within a
    ball of radius c * |g0| around the average gradient g0.

    Solves the dual over task weights w on the simplex,
    `min_w w.G g0 + c |g0| |G^T w|`, by the reference code's 21 steps of SGD
    (learning rate 25, momentum 0.5) on softmax logits, with the Gram matrix
    normalised by the mean gradient norm; the update is
    `(g0 + c |g0| / |g_w| g_w) / (1 + c^2)`, returned times the number of
    present tasks (so c = 0 gives the plain sum, as equal weighting).

    Args:
        grads: [T, N] per-task gradients.
        present: [T] 1.0 for tasks in the batch; the others are left out.
        c: the radius (0 <= c < 1; the paper uses 0.4 on dense prediction).
        steps: SGD steps of the dual.

    Returns:
        [N].

    Example:
    >>> g = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> conflict_averse(g, tf.ones([2]), c=0.0).numpy()
    array([1., 1.], dtype=float32)

    Reference:
        Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for
        Multi-task Learning", NeurIPS 2021.
    """
    count = tf.maximum(tf.reduce_sum(present), 1.0)
    pair = present[:, None] * present[None, :]
    gram = tf.matmul(grads, grads, transpose_b=True) * pair
    scale = masked_mean(tf.sqrt(tf.linalg.diag_part(gram) + 1e-4), present)
    gram = gram / tf.square(scale)
    gram_g0 = tf.reduce_sum(gram * present[None, :], axis=1) / count   # G_i . g0
    g0_g0 = tf.reduce_sum(gram_g0 * present) / count
    radius = tf.sqrt(g0_g0 + 1e-4) * c
    absent = (1.0 - present) * -1e9

    def objective(logits):
        w = tf.nn.softmax(logits + absent)
        return tf.reduce_sum(w * gram_g0) + radius * tf.sqrt(
            tf.reduce_sum(w[:, None] * gram * w[None, :]) + 1e-4)

    logits = tf.zeros_like(present)
    velocity = tf.zeros_like(present)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = objective(logits)
        velocity = 0.5 * velocity + tape.gradient(value, logits)
        logits = logits - 25.0 * velocity
    w = tf.nn.softmax(logits + absent)
    gw_norm = tf.sqrt(tf.reduce_sum(w[:, None] * gram * w[None, :]) + 1e-4)
    lam = radius / (gw_norm + 1e-4)
    coefficients = (present / count + w * lam) / (1.0 + c * c)
    return count * tf.reduce_sum(coefficients[:, None] * grads, axis=0)


def gradnorm_step(weights: tf.Tensor, norms: tf.Tensor, losses: tf.Tensor,
                  initial_losses: tf.Tensor, present: tf.Tensor, alpha: float,
                  learning_rate: float) -> tf.Tensor:
    """One GradNorm update of the task weights.

    With G_t = w_t |g_t| (g_t: task t's gradient of the shared parameters),
    r_t = (L_t / L_t(0)) / mean(L / L(0)) and the target
    `mean(G) * r_t ** alpha` (held constant), the weights take a step down the
    gradient of `sum_t |G_t - target_t|`, which is `sign(G_t - target_t) |g_t|`,
    divided by the mean |g| so the step does not depend on the loss's scale;
    then they are clipped at 1e-3 and rescaled so the present tasks' weights
    keep their sum. Absent tasks are left as they were.

    Args:
        weights, norms, losses, initial_losses, present: [T] each.
        alpha: the restoring force's strength.
        learning_rate: the step size.

    Returns:
        The new weights, [T].

    Example: task 0's gradient is twice task 1's, equal loss ratios: the
    target is the mean G = 1.5, so task 0's weight goes down and task 1's up.
    >>> gradnorm_step(tf.ones([2]), tf.constant([2.0, 1.0]), tf.ones([2]), tf.ones([2]),
    ...               tf.ones([2]), alpha=1.5, learning_rate=0.1).numpy()
    array([0.8965517, 1.1034483], dtype=float32)
    """
    grad_norm_products = weights * norms
    ratio = losses / tf.maximum(initial_losses, 1e-12)
    relative = ratio / tf.maximum(masked_mean(ratio, present), 1e-12)
    target = masked_mean(grad_norm_products, present) * tf.pow(relative, alpha)
    step = tf.sign(grad_norm_products - target) * norms / tf.maximum(masked_mean(norms, present), 1e-12)
    moved = tf.maximum(weights - learning_rate * step, 1e-3)
    total_before = tf.reduce_sum(present * weights)
    total_after = tf.maximum(tf.reduce_sum(present * moved), 1e-12)
    return tf.where(present > 0, moved * total_before / total_after, weights)


@keras.saving.register_keras_serializable(package="keras_branch")
class PCGrad(Weighting):
    """Projecting conflicting gradients, on the parameters tasks share.

    Each task visits the others in a random order (from `seed` and the step
    number, the same on every replica).

    Args:
        seed: the seed of the visiting orders.

    Reference:
        Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for
        Multi-Task Learning", NeurIPS 2020.

    Example:
    >>> PCGrad(seed=1).uses_task_gradients
    True
    """

    method = "pcgrad"
    uses_task_gradients = True

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.seed = check_int(seed, "pcgrad seed", minimum=0, error=WeightingError)

    def build_state(self, num_tasks):
        self.steps = self.add_state("steps", (), 0.0)

    def combine_gradients(self, grads, weights, losses, present):
        num_tasks = len(self.task_keys)
        noise = tf.random.stateless_uniform(
            [num_tasks, num_tasks], seed=tf.stack([tf.constant(self.seed, tf.int64),
                                                   tf.cast(self.steps, tf.int64)]))
        return project_conflicting(weights[:, None] * grads, present, tf.argsort(noise, axis=1))

    def update_state(self, losses, present, step):
        self.steps.assign_add(1.0)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_branch")
class CAGrad(Weighting):
    """Conflict-averse gradient descent on the parameters tasks share.

    Args:
        c: the radius around the average gradient, 0 <= c < 1 (0 is equal
            weighting; the paper uses 0.4 on dense prediction).

    Reference:
        Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for
        Multi-task Learning", NeurIPS 2021.

    Example:
    >>> CAGrad(c=0.4).c
    0.4
    """

    method = "cagrad"
    uses_task_gradients = True

    def __init__(self, c: float = 0.4, **kwargs: Any):
        super().__init__(**kwargs)
        self.c = check_number(c, "cagrad c", minimum=0, inclusive=True, error=WeightingError)
        if self.c >= 1:
            raise WeightingError(f"cagrad: `c` must be below 1. Received: c={c!r}")

    def combine_gradients(self, grads, weights, losses, present):
        return conflict_averse(weights[:, None] * grads, present, self.c)

    def get_config(self):
        return {**super().get_config(), "c": self.c}


@keras.saving.register_keras_serializable(package="keras_branch")
class GradNorm(Weighting):
    """GradNorm: weights learned so the tasks' gradient norms on the shared
    parameters train at balanced rates (see `gradnorm_step`).

    The norms are taken over every parameter two or more tasks share (the
    LibMTL choice; the paper uses the last shared layer). The weights start
    at 1 and keep their sum.

    Args:
        alpha: the strength of the pull toward balanced training rates
            (the paper's alpha; 1.5 on NYUv2).
        learning_rate: the weights' step size.

    Reference:
        Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient
        Normalization for Adaptive Loss Balancing in Deep Multitask
        Networks", ICML 2018.

    Example:
    >>> w = GradNorm(alpha=1.5); w.attach(["a", "b"]); w.current_weights()
    [1.0, 1.0]
    """

    method = "gradnorm"
    uses_task_gradients = True

    def __init__(self, alpha: float = 1.5, learning_rate: float = 0.025, **kwargs: Any):
        super().__init__(**kwargs)
        self.alpha = check_number(alpha, "gradnorm alpha", minimum=0, inclusive=True,
                                  error=WeightingError)
        self.learning_rate = check_number(learning_rate, "gradnorm learning_rate", minimum=0,
                                          error=WeightingError)

    def build_state(self, num_tasks):
        self.weights_state = self.add_state("task_weights", (num_tasks,), 1.0)
        self.initial_losses = self.add_state("initial_losses", (num_tasks,))
        self.has_initial = self.add_state("has_initial", (num_tasks,))

    def task_weights(self, losses, present):
        return tf.convert_to_tensor(self.weights_state)

    def update_state(self, losses, present, step):
        first = (present > 0) & (self.has_initial <= 0)
        initial = tf.where(first, losses, self.initial_losses)
        self.initial_losses.assign(initial)
        self.has_initial.assign(tf.maximum(self.has_initial, present))
        norms = tf.norm(step["grads"], axis=1)
        self.weights_state.assign(gradnorm_step(
            step["weights"], norms, losses, initial, present, self.alpha, self.learning_rate))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "learning_rate": self.learning_rate}
