"""`BranchPoint`: a learnable choice of parent for every child node.

Learning to Branch makes a tree differentiable: every node (child) of layer
l picks one node (parent) of layer l-1 through a categorical distribution
with learnable logits. During training the choice is relaxed with a
Gumbel-softmax sample, so the logits receive gradients; at inference it is
the deterministic argmax, i.e. a fixed selection of one parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_branch.checks import check_int, check_number

# Keeps -log(-log U) finite: U is drawn from [_EPS, 1 - _EPS).
_EPS = 1e-6


def _positive_int(value: Any, field: str) -> int:
    return check_int(value, field, minimum=1)


def _positive_float(value: Any, field: str) -> float:
    return check_number(value, field, minimum=0)


@keras.saving.register_keras_serializable(package="keras_branch")
class UsageBalance(keras.regularizers.Regularizer):
    """Penalises parents that no child uses: `strength * (log P - H(mean_j softmax(scale * theta_j)))`.

    The penalty is 0 when the children's expected use of the P parents is
    uniform and grows as choices pile onto few parents. Without it a
    routing search collapses the way mixtures of experts do: the parent
    that happens to train first serves every child best, so every child
    picks it, and the other parents are left untrained. It acts on the
    children's average distribution only, so it never asks one child to
    stay undecided.

    Args:
        strength: weight of the penalty (>= 0).
        scale: the logits' multiplier (`BranchPoint.logit_scale`).

    Reference:
        Shazeer et al., "Outrageously Large Neural Networks: The
        Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017 (importance
        loss).
    """

    def __init__(self, strength: float = 0.0, scale: float = 1.0):
        self.strength = float(strength)
        self.scale = float(scale)

    def __call__(self, logits):
        num_parents = logits.shape[-1]
        probs = ops.softmax(ops.cast(logits, "float32") * self.scale, axis=-1)
        usage = ops.mean(probs, axis=0)
        entropy = -ops.sum(usage * ops.log(ops.maximum(usage, 1e-12)))
        return self.strength * (float(np.log(num_parents)) - entropy)

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength, "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_branch")
class BranchPoint(keras.layers.Layer):
    """Routes P parent tensors to C children through learned parent choices.

    Child j receives `sum_i d[j, i] * parents[i]`. In training (`training`
    truthy) `d[j]` is a Gumbel-softmax sample of the logits `theta[j]`:
    `d[j] = softmax((log_softmax(theta[j]) + g) / tau)` with
    `g = -log(-log U)`, `U ~ Uniform(0, 1)`, or its straight-through hard
    version (one-hot forward, soft gradient) when `hard=True`. At inference
    (`training` falsy) child j is exactly parent `argmax(theta[j])`: a fixed
    selection, so an exported model holds no mixing at all.

    The temperature `tau` is a non-trainable variable (`layer.temperature`)
    that a callback anneals during training (`keras_branch.callbacks.
    TemperatureScheduler`). A second non-trainable flag,
    `layer.uniform_mixing`, makes training mix all parents equally (weight
    1/P): the warm-up of the search, during which the logits get no gradient.

    Args:
        num_children: C, the number of child nodes (>= 1).
        num_parents: P, the number of parent tensors the layer takes (>= 1).
        temperature: initial temperature tau (> 0).
        hard: straight-through hard samples in training.
        seed: seed of the Gumbel noise (an int for reproducible samples).
        logits_initializer: initializer of the [C, P] logits variable; the
            default zeros makes every parent equally likely at the start.
        logit_scale: the logits are `logit_scale * layer.logits` (> 0). With
            Adam, whose steps do not depend on the gradient's scale, this
            multiplies the logits' effective learning rate by `logit_scale`
            while the network weights keep theirs: the search needs the
            branching logits to move much faster than one shared learning
            rate allows.
        balance: strength of `UsageBalance` on the logits (0: none): a
            penalty on parents left unused by every child, against the
            collapse of all children onto the parent that trained first.
        shared_noise: every child uses the same Gumbel draw per parent
            (common random numbers). Each child's sample keeps its
            distribution; children with equal logits then route alike, so
            children differ only where their logits do.
        per_example: draw an independent sample for every example of the
            batch (routing [batch, C, P]) instead of one per batch (as the
            public reference implementation does). Lower-variance
            gradients for the logits, at the cost of a per-example mixture.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list of P tensors of one shape.
        training: Gumbel-softmax sampling when truthy; argmax selection when
            falsy or None.

    Returns:
        A list of C tensors of the parents' shape.

    Example:
    >>> a, b = keras.Input((4,)), keras.Input((4,))
    >>> children = BranchPoint(num_children=3, num_parents=2, seed=0)([a, b])
    >>> len(children), tuple(children[0].shape)
    (3, (None, 4))

    Reference:
        Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning",
        ICML 2020, arXiv:2006.01895. Jang, Gu, Poole, "Categorical
        Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    def __init__(
        self,
        num_children: int,
        num_parents: int,
        temperature: float = 1.0,
        hard: bool = False,
        seed: int | None = None,
        logits_initializer: Any = "zeros",
        logit_scale: float = 1.0,
        per_example: bool = False,
        balance: float = 0.0,
        shared_noise: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_children = _positive_int(num_children, "num_children")
        self.num_parents = _positive_int(num_parents, "num_parents")
        self.initial_temperature = _positive_float(temperature, "temperature")
        if not isinstance(hard, (bool, np.bool_)):
            raise ValueError(f"`hard` must be a bool. Received: hard={hard!r}")
        self.hard = bool(hard)
        self.seed = None if seed is None else check_int(seed, "seed")
        self.logits_initializer = keras.initializers.get(logits_initializer)
        self.logit_scale = _positive_float(logit_scale, "logit_scale")
        if not isinstance(per_example, (bool, np.bool_)):
            raise ValueError(
                f"`per_example` must be a bool. Received: per_example={per_example!r}"
            )
        self.per_example = bool(per_example)
        self.balance = check_number(balance, "balance", minimum=0, inclusive=True)
        if not isinstance(shared_noise, (bool, np.bool_)):
            raise ValueError(
                f"`shared_noise` must be a bool. Received: shared_noise={shared_noise!r}"
            )
        self.shared_noise = bool(shared_noise)
        # Keras' own pattern (Dropout, GaussianNoise): the generator lives in
        # the layer, so seeded layers repeat their noise sequence exactly.
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        shapes = self._parent_shapes(input_shape)
        first = tuple(shapes[0])
        for i, shape in enumerate(shapes[1:], start=1):
            if not _same_shape(first[1:], tuple(shape)[1:]):
                raise ValueError(
                    f"BranchPoint {self.name!r}: all parents must have one shape. "
                    f"Received: parent 0 has shape {first}, parent {i} has shape "
                    f"{tuple(shape)}."
                )
        self.logits = self.add_weight(
            name="logits",
            shape=(self.num_children, self.num_parents),
            initializer=self.logits_initializer,
            # With one parent there is no choice to learn (the softmax of one
            # logit is 1 and its gradient 0), so the logits are not trainable.
            trainable=self.num_parents > 1,
            regularizer=(
                UsageBalance(self.balance, self.logit_scale)
                if self.balance > 0 and self.num_parents > 1 else None
            ),
            dtype=self.variable_dtype,
        )
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=False,
            dtype="float32",
        )
        self.uniform_mixing = self.add_weight(
            name="uniform_mixing",
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="float32",
        )

    def _parent_shapes(self, input_shape) -> list:
        # A single shape is a tuple of ints/None; a list of parents is a list of those.
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not all(
            isinstance(s, (list, tuple)) for s in input_shape
        ):
            raise ValueError(
                f"BranchPoint {self.name!r} takes a list of {self.num_parents} parent "
                f"tensor(s). Received: input shape {input_shape!r}"
            )
        if len(input_shape) != self.num_parents:
            raise ValueError(
                f"BranchPoint {self.name!r} was built for num_parents="
                f"{self.num_parents} but received {len(input_shape)} parent tensor(s)."
            )
        return list(input_shape)

    # === Routing ===

    def scaled_logits(self):
        """The logits theta = `logit_scale * layer.logits`, float32 [C, P]."""
        return ops.cast(self.logits, "float32") * self.logit_scale

    def probabilities(self):
        """`softmax(theta)`: each child's distribution over parents, [C, P]."""
        if self.num_parents == 1:
            return ops.ones((self.num_children, 1), dtype="float32")
        return ops.softmax(self.scaled_logits(), axis=-1)

    def parent_indices(self) -> np.ndarray:
        """Each child's most likely parent (the inference choice), int [C]."""
        return np.argmax(keras.ops.convert_to_numpy(self.logits), axis=-1)

    def routing(self, training: bool = False, batch_size=None):
        """The [C, P] routing matrix `d` one call would use.

        In training mode this draws a fresh Gumbel-softmax sample (advancing
        the seed generator), of shape [batch_size, C, P] when `batch_size`
        is given; otherwise it is the one-hot argmax.
        """
        logits = self.scaled_logits()
        if self.num_parents == 1:
            shape = (self.num_children, 1) if batch_size is None else (batch_size, self.num_children, 1)
            return ops.ones(shape, dtype="float32")
        if not training:
            return ops.one_hot(ops.argmax(logits, axis=-1), self.num_parents, dtype="float32")
        shape = ops.shape(logits) if batch_size is None else (batch_size, *ops.shape(logits))
        if self.shared_noise:  # one draw per parent, the same for every child
            shape = (*shape[:-2], 1, shape[-1])
        u = keras.random.uniform(
            shape, minval=_EPS, maxval=1.0 - _EPS, seed=self.seed_generator
        )
        gumbel = -ops.log(-ops.log(u))
        log_p = ops.log_softmax(logits, axis=-1)
        soft = ops.softmax((log_p + gumbel) / self.temperature, axis=-1)
        if self.hard:
            # Straight-through: the forward pass uses the one-hot sample,
            # the backward pass the gradient of the soft one.
            one_hot = ops.one_hot(ops.argmax(soft, axis=-1), self.num_parents, dtype=soft.dtype)
            soft = soft + ops.stop_gradient(one_hot - soft)
        uniform = ops.full(ops.shape(soft), 1.0 / self.num_parents, dtype=soft.dtype)
        return ops.where(self.uniform_mixing > 0.5, uniform, soft)

    def call(self, inputs, training=None):
        stacked = ops.stack(list(inputs), axis=0)  # [P, batch, ...]
        if not training:
            # Exact selection: a gather, not a multiply-add with zeros, so a
            # child equals its parent bit for bit (even with inf/NaN in the
            # other parents) and an exported graph holds a plain selection.
            # The argmax is read from the variable inside the graph, so a
            # traced inference function follows the logits as they train.
            chosen = ops.argmax(self.logits, axis=-1)
            return [ops.take(stacked, chosen[j], axis=0) for j in range(self.num_children)]
        if self.per_example:
            batch = ops.shape(stacked)[1]
            d = ops.cast(self.routing(training=True, batch_size=batch), stacked.dtype)  # [B, C, P]
            rank = len(stacked.shape)
            out = []
            for j in range(self.num_children):
                dj = ops.transpose(d[:, j, :])  # [P, B]
                dj = ops.reshape(dj, (self.num_parents, batch) + (1,) * (rank - 2))
                out.append(ops.sum(dj * stacked, axis=0))
            return out
        d = ops.cast(self.routing(training=True), stacked.dtype)  # [C, P]
        mixed = ops.tensordot(d, stacked, axes=[[1], [0]])  # [C, batch, ...]
        return [mixed[j] for j in range(self.num_children)]

    def compute_output_shape(self, input_shape):
        shapes = self._parent_shapes(input_shape)
        return [tuple(shapes[0]) for _ in range(self.num_children)]

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_children": self.num_children,
                "num_parents": self.num_parents,
                "temperature": self.initial_temperature,
                "hard": self.hard,
                "seed": self.seed,
                "logits_initializer": keras.initializers.serialize(self.logits_initializer),
                "logit_scale": self.logit_scale,
                "per_example": self.per_example,
                "balance": self.balance,
                "shared_noise": self.shared_noise,
            }
        )
        return config


def _same_shape(a: Sequence, b: Sequence) -> bool:
    """Equal ranks and equal sizes where both are known."""
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))

