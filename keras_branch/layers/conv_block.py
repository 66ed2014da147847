"""`ConvBlock`: a convnet4 block that can serve at several depths of a pool.

Soft layer ordering applies every pool layer at every depth, and with
max-pooling in the block each depth works at half the previous
resolution. The convolution's weights do not depend on the resolution;
the normalisation does: the features a block sees at depth 1 and at depth
3 have different statistics, and one set of batch-norm moving averages fed
by all depths would normalise every depth wrongly at inference. A
`ConvBlock` therefore keeps one convolution and one `BatchNormalization`
per depth (its own statistics, scale and shift), and `SoftOrdering` tells
it the depth of every call.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_branch.checks import check_int


@keras.saving.register_keras_serializable(package="keras_branch")
class ConvBlock(keras.layers.Layer):
    """Conv2D 3x3 -> BatchNormalization of the depth -> ReLU -> MaxPooling2D 2x2.

    The convolution (no bias; batch norm's shift replaces it) is shared by
    all depths; depth d (0-based) has its own batch normalisation. With
    `depths=1` it is a convnet4 block, one normalisation whatever the
    depth (for a block that is used at one depth only).

    Args:
        filters: output channels.
        depths: how many depths have their own normalisation (>= 1).
        momentum: batch norm's moving-average momentum (0.9, as convnet4:
            with ~50 steps per epoch the default 0.99 trails the data).
        kernel_initializer: the convolution's initializer.
        tasks: 0 (default), or T: every task then has its own scale and
            shift per depth after the normalisation, `x * (1 + g[d, t]) +
            b[d, t]` (started at the identity; 2 * filters * depths * T
            parameters), selected per sample by the `routing` of the call.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: images [batch, height, width, channels] (any resolution).
        training: batch statistics (True) or moving averages.
        depth: which depth's normalisation to use (default 0; ignored
            when `depths=1`).
        routing: [batch, T] one-hot rows naming each sample's task (needed
            when `tasks` > 0; ignored otherwise).

    Example:
    >>> block = ConvBlock(8, depths=2)
    >>> x = np.zeros((1, 16, 16, 8), "float32")
    >>> tuple(block(x).shape), tuple(block(block(x), depth=1).shape)
    ((1, 8, 8, 8), (1, 4, 4, 8))
    """

    def __init__(
        self,
        filters: int,
        depths: int = 1,
        momentum: float = 0.9,
        kernel_initializer: Any = "glorot_uniform",
        tasks: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for field, value in (("filters", filters), ("depths", depths)):
            check_int(value, field, minimum=1)
        check_int(tasks, "tasks", minimum=0)
        self.tasks = int(tasks)
        self.filters = filters
        self.depths = depths
        self.momentum = float(momentum)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.conv = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False,
            kernel_initializer=self.kernel_initializer, name="conv",
        )
        self.norms = [
            keras.layers.BatchNormalization(momentum=momentum, name=f"norm_{d}")
            for d in range(depths)
        ]
        self.pool = keras.layers.MaxPooling2D(2, name="pool")

    def build(self, input_shape):
        channels = input_shape[-1]
        self.conv.build((None, None, None, channels))
        for norm in self.norms:
            norm.build((None, None, None, self.filters))
        if self.tasks:
            shape = (self.depths, self.tasks, self.filters)
            self.task_scale = self.add_weight(name="task_scale", shape=shape, initializer="zeros")
            self.task_shift = self.add_weight(name="task_shift", shape=shape, initializer="zeros")

    def call(self, inputs, training=None, depth: int = 0, routing=None):
        if self.depths == 1:
            depth = 0
        elif not 0 <= depth < self.depths:
            raise ValueError(
                f"ConvBlock {self.name!r} serves depths 0..{self.depths - 1}. Received: depth={depth!r}"
            )
        x = self.norms[depth](self.conv(inputs), training=training)
        if self.tasks:
            if routing is None:
                raise ValueError(
                    f"ConvBlock {self.name!r} has per-task scales (tasks={self.tasks}): "
                    f"call it with `routing` [batch, {self.tasks}] naming each sample's task."
                )
            routing = keras.ops.cast(routing, x.dtype)
            scale = keras.ops.matmul(routing, keras.ops.cast(self.task_scale[depth], x.dtype))
            shift = keras.ops.matmul(routing, keras.ops.cast(self.task_shift[depth], x.dtype))
            x = x * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
        return self.pool(keras.ops.relu(x))

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape(input_shape)
        return self.pool.compute_output_shape(shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "depths": self.depths,
                "momentum": self.momentum,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "tasks": self.tasks,
            }
        )
        return config
