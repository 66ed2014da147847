"""keras_branch: decide which layers a multi-task network should share.

The spine: a `TreeSpec` (which block every task uses at every stage) plus a
`Backbone` and `Task`s become a functional Keras model (`build_model`) that
trains with `model.fit` and saves as `.keras`.
"""

from keras_branch import backbones
from keras_branch import hub  # noqa: F401  registers the "keras_hub" backbone
from keras_branch.backbones import Backbone
from keras_branch.build import BranchedModel, build_model
from keras_branch.layers import BranchPoint, SoftOrdering
from keras_branch.errors import (
    BackboneError,
    DataError,
    ExportError,
    KerasBranchError,
    ModelFileError,
    OutputError,
    OutputExistsError,
    SearchError,
    SpecError,
    TaskError,
)
from keras_branch.masked import MaskedLoss, MaskedMetric
from keras_branch.spec import TreeSpec
from keras_branch.soft_ordering_model import SoftOrderingModel
from keras_branch.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneError",
    "BranchPoint",
    "BranchedModel",
    "DataError",
    "ExportError",
    "KerasBranchError",
    "MaskedLoss",
    "MaskedMetric",
    "ModelFileError",
    "OutputError",
    "OutputExistsError",
    "SearchError",
    "SoftOrdering",
    "SoftOrderingModel",
    "SpecError",
    "Task",
    "TaskError",
    "TreeSpec",
    "backbones",
    "build_model",
]
