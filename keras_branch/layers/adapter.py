"""`Adapter`: a residual bottleneck that starts as the identity (muNet).

`y = x + Dense_C(gelu(Dense_r(LayerNorm(x))))` over the channel (last) axis.
The output kernel and bias start at zero, so inserting an adapter into a
trained path leaves its outputs unchanged until the adapter is trained.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_branch.checks import MAX_ADAPTER_WIDTH, check_int


def adapter_params(channels: int, dim: int) -> int:
    """Parameters of an `Adapter` of width `dim` on `channels` channels.

    LayerNorm (2C) + Dense C->r (C*r + r) + Dense r->C (r*C + C).

    Example:
    >>> adapter_params(64, 16)   # LayerNorm 128 + Dense(16) 1040 + Dense(64) 1088
    2256
    """
    return 2 * channels + channels * dim + dim + dim * channels + channels


@keras.saving.register_keras_serializable(package="keras_branch")
class Adapter(keras.layers.Layer):
    """A zero-initialised residual adapter on the last axis.

    Args:
        dim: bottleneck width, from 1 to `MAX_ADAPTER_WIDTH` (2**16).
        epsilon: LayerNorm epsilon.
        **kwargs: `keras.layers.Layer` arguments (name, dtype, trainable).

    Example:
    >>> layer = Adapter(8)
    >>> x = np.random.rand(2, 5, 5, 16).astype("float32")
    >>> bool(np.all(layer(x).numpy() == x))   # the identity before training
    True

    Reference:
        Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
        Tasks in Large-scale Multitask Learning Systems" (muNet), 2022;
        Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", 2019.
    """

    def __init__(self, dim: int, epsilon: float = 1e-6, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = check_int(dim, "dim", minimum=1, maximum=MAX_ADAPTER_WIDTH)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"Adapter {self.name!r} needs a known last axis. Received: input_shape={input_shape}"
            )
        self.norm = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm",
                                                    dtype=self.dtype_policy)
        self.down = keras.layers.Dense(self.dim, activation="gelu", name="down",
                                       dtype=self.dtype_policy)
        self.up = keras.layers.Dense(channels, kernel_initializer="zeros", name="up",
                                     dtype=self.dtype_policy)
        self.norm.build(input_shape)
        self.down.build((*input_shape[:-1], channels))
        self.up.build((*input_shape[:-1], self.dim))

    def call(self, inputs):
        return inputs + self.up(self.down(self.norm(inputs)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"dim": self.dim, "epsilon": self.epsilon})
        return config
