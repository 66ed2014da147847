"""keras_branch.export: SavedModel and TFLite export with parity checks.

Installed as `keras_branch.export` (see setup.cfg), never as a bare `export`.

* `export_model(model, out_dir, formats, tasks=None, data=None, check=False)`:
  one atomic export folder with a SavedModel (a default signature with every
  task's output plus one signature per task, named by `Task.key`) and TFLite
  files (float32, float16, dynamic range, full int8), builtin ops only.
* `subset_model(model, tasks)`: only the blocks and heads some tasks need.
* `check_parity(model, files, x)`: every artifact against Keras, per task,
  with per-format tolerances (`TOLERANCES`; float16 in units of
  `float16_deviation`, int8 in `int8_steps`).
* `litert_runner`: runs a `.tflite` file with LiteRT and numpy only.

Example (an untrained model, two formats; `keras-branch export` writes all
four by default):
>>> from keras_branch import TreeSpec, backbones, build_model
>>> from keras_branch.data import planted_groups
>>> from keras_branch.export import export_model
>>> data = planted_groups(num_train=64, num_validation=32, num_test=64)
>>> model = build_model(TreeSpec.shared(data.task_names, num_stages=2),
...                     backbones.mlp(100, (8, 8)), data.tasks)
>>> result = export_model(model, "run/export", formats="saved_model,tflite", data=data,
...                       check=True)
>>> result.passed, result.files["tflite"]
(True, 'run/export/model.tflite')
"""

from keras_branch.export.api import (
    DEFAULT_FORMATS,
    FORMATS,
    ExportResult,
    check_inputs,
    export_demo_model,
    export_model,
    parse_formats,
)
from keras_branch.export.parity import (
    TOLERANCES,
    ParityResult,
    ParityRow,
    Tolerance,
    check_parity,
    float16_deviation,
    format_parity_table,
)
from keras_branch.export.saved_model import (
    DEFAULT_SIGNATURE,
    INPUT_NAME,
    export_saved_model,
    run_saved_model,
    signature_keys,
)
from keras_branch.export.subset import resolve_tasks, subset_model
from keras_branch.export.tflite import (
    TFLITE_FILES,
    TFLITE_FORMATS,
    calibration_inputs,
    convert_tflite,
    int8_output_scales,
    int8_steps,
    write_tflite,
)

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_SIGNATURE",
    "FORMATS",
    "INPUT_NAME",
    "TFLITE_FILES",
    "TFLITE_FORMATS",
    "TOLERANCES",
    "ExportResult",
    "ParityResult",
    "ParityRow",
    "Tolerance",
    "calibration_inputs",
    "check_inputs",
    "check_parity",
    "convert_tflite",
    "export_demo_model",
    "export_model",
    "export_saved_model",
    "float16_deviation",
    "format_parity_table",
    "int8_output_scales",
    "int8_steps",
    "parse_formats",
    "resolve_tasks",
    "run_saved_model",
    "signature_keys",
    "subset_model",
    "write_tflite",
]
