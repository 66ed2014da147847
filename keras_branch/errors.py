"""The library's own error types.

Every problem with what a user handed us (a spec, a task list, a data path,
a label) is raised as a subclass of `KerasBranchError`, with a message that
names the field and the value received. The CLI turns these into a one-line
message and exit status 2; anything else escaping is a bug in keras_branch.
"""


class KerasBranchError(ValueError):
    """Base class of every error keras_branch raises about its input."""


class SpecError(KerasBranchError):
    """A TreeSpec (or its JSON) is malformed or does not fit its backbone."""


class TaskError(KerasBranchError):
    """A task definition is invalid (name, kind, number of classes)."""


class DataError(KerasBranchError):
    """A data set is missing, malformed, or has labels outside a task's range."""


class BackboneError(KerasBranchError):
    """A backbone definition is invalid or cannot be cut into stages."""


class OutputExistsError(KerasBranchError):
    """An output path exists and overwriting was not asked for."""


class OutputError(KerasBranchError):
    """An output cannot be written as asked (e.g. NaN in a file that must be standard JSON)."""


class ModelFileError(KerasBranchError):
    """A model file is missing, unreadable, or not a keras_branch model."""


class SearchError(KerasBranchError):
    """A search got input it cannot work with (budget, affinity tensor, settings)."""


class ExportError(KerasBranchError):
    """A model cannot be exported as asked (format, tasks, target path, ops)."""


class TrainingError(KerasBranchError):
    """Training went wrong in a way the inputs caused (e.g. the loss became NaN)."""


class WeightingError(KerasBranchError):
    """A task weighting is unknown or got settings it cannot take (name, weights, tasks)."""
