"""Registered Keras layers of keras_branch.

* `BranchPoint`: learnable parent choice between two layers of a tree
  (Learning to Branch; Gumbel-softmax in training, argmax at inference).
* `UsageBalance`: the regulariser on a BranchPoint's logits that keeps
  every parent in use (against all children collapsing onto one).
* `Adapter`: a zero-initialised residual bottleneck that evolution (muNet)
  inserts into a task's path.
* `SoftOrdering`: one pool of shared layers mixed per task and depth (soft
  layer ordering; also parallel and permuted orderings).
* `ConvBlock`: a convnet4 block (conv, batch norm, ReLU, max-pool) that can
  serve at several depths of a pool, with one batch norm per depth.

All are registered under the package name `keras_branch`, so `.keras` files
holding them load under `safe_mode=True` once `keras_branch` is imported.
"""

from keras_branch.layers.adapter import Adapter
from keras_branch.layers.branch_point import BranchPoint, UsageBalance
from keras_branch.layers.conv_block import ConvBlock
from keras_branch.layers.soft_ordering import SoftOrdering

__all__ = ["Adapter", "BranchPoint", "ConvBlock", "SoftOrdering", "UsageBalance"]
