"""Model cards: the `README.md` of a zoo entry, generated from `entry.json` + `results.json`.

One function (`render_card`) writes every card, so a card never disagrees
with its measurements: a test regenerates each committed card and compares
byte for byte. Regenerate after editing an entry with
`keras-branch zoo card NAME` (or `measure`, which also re-measures).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from keras_branch.tasks import REGRESSION

METRIC_WORDS = {
    "mse": "test MSE (standardised targets; lower is better)",
    "error": "test error (1 - accuracy; lower is better)",
}


def headline(results: dict[str, Any] | None) -> str:
    """`"0.1357 +- 0.0021 mse"`, or `"not measured"`.

    Example:
    >>> headline({"mean": 0.1357, "std": 0.0021, "metric": "mse"})
    '0.1357 +- 0.0021 mse'
    """
    if not results:
        return "not measured"
    return f"{results['mean']:.4f} +- {results['std']:.4f} {results['metric']}"


def _spec_lines(entry) -> list[str]:
    if entry.spec is None:
        return [f"Model: `{entry.kind}` with `{json.dumps(entry.model_args or {})}`."]
    spec = entry.make_spec()
    lines = ["```", str(spec), "```"]
    return lines


def _parity_text(results: Mapping[str, Any]) -> str:
    if results["parity_passed"]:
        return "all formats within tolerance"
    rows = (results.get("parity") or {}).get("rows", [])
    failed = [f"{r['format']} {r['task']} ({r['statistic']} {r['value']:.3g} > {r['tolerance']:.3g})"
              for r in rows if not r["passed"]]
    return "out of tolerance: " + ("; ".join(failed) if failed else "per-format detail not recorded in this measurement")


def render_card(entry, results: dict[str, Any] | None) -> str:
    """The card of an entry, as Markdown.

    Args:
        entry: the `ZooEntry`.
        results: its measurements (`results.json`), or None when not measured.

    Returns:
        The full `README.md` text (ends with a newline).

    Example:
    >>> from keras_branch import zoo
    >>> e = zoo.entry("planted-affinity")
    >>> render_card(e, e.results()) == e.card()
    True
    """
    lines = [f"# {entry.name}", "", entry.description, ""]
    # the source the card's own measuring command names, for the one-seed commands
    named = re.search(r"--data (\S+)", entry.reproduce)
    data = (results or {}).get("data") or (named and named.group(1)) or entry.data_default or "SOURCE"
    backbone_args = json.dumps(entry.backbone.get("args") or {}, sort_keys=True)
    lines += [
        "| | |",
        "|---|---|",
        f"| data | `{entry.data}`" + (f" (default source `{entry.data_default}`)" if entry.data_default else "")
        + (f", images {entry.image_size}x{entry.image_size}" if entry.image_size else "") + " |",
        f"| tasks | {len(entry.tasks)} ({', '.join(sorted({t['kind'] for t in entry.tasks}))}) |",
        f"| input shape | {tuple(entry.input_shape)} |",
        f"| backbone | `{entry.backbone['name']}` {backbone_args} |",
        f"| kind | `{entry.kind}` |",
        f"| how the sharing was found | {entry.method} |",
        "",
        "## Sharing",
        "",
        *_spec_lines(entry),
        "",
        "## Training recipe",
        "",
        "| hyperparameter | value |",
        "|---|---|",
        *[f"| {k} | `{json.dumps(v)}` |" for k, v in entry.recipe.items()],
        "",
        "Everything else is the library's default (Adam, masked per-task losses summed "
        "with each task's `loss_weight`).",
        "",
        "## Results",
        "",
    ]
    if results is None:
        lines += [
            "**Not measured.** No numbers are claimed for this entry yet.",
            "",
        ]
    else:
        lines += _results_lines(entry, results)
    if entry.notes:
        lines += ["## Notes", "", entry.notes, ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        results["command"] if results else entry.reproduce,
        "```",
        "",
        "This trains every seed with the recipe above, evaluates on the test split, "
        "exports seed 0's model to TFLite and times it, then rewrites `results.json` and "
        "this card. Load the model in Python with `keras_branch.zoo.get("
        f"\"{entry.name}\", weights=PATH_OR_URL)`.",
        "",
        "One seed, trained, exported and scored as a phone would run it (compare with "
        "the seed-0 column above):",
        "",
        "```",
        f"keras-branch zoo train {entry.name} --data {data} --seed 0 --out run",
        "keras-branch export run/model.keras --out run/export --formats tflite",
        f"keras-branch zoo evaluate {entry.name} --model run/export/model.tflite --data {data}",
        "```",
        "",
    ]
    return "\n".join(lines)


def cpu_words(machine: dict[str, Any]) -> str:
    """The CPU of a `machine_info()` record with its widest vector extension, e.g. "AMD EPYC (AVX2)".

    Records written before `simd` existed give the model alone.
    """
    return machine["cpu"] + (f" ({machine['simd'].upper()})" if machine.get("simd") else "")


def _results_lines(entry, results: dict[str, Any]) -> list[str]:
    metric = results["metric"]
    seeds = results["seeds"]
    machine = results["machine"]
    lines = [
        f"Mean {METRIC_WORDS.get(metric, metric)} over tasks, seeds {', '.join(map(str, seeds))}: "
        f"**{results['mean']:.4f} +- {results['std']:.4f}** (std over seeds, n - 1).",
        "",
    ]
    if results.get("recipe_overrides"):
        lines += [f"Measured with recipe overrides `{json.dumps(results['recipe_overrides'])}`.", ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| parameters | {results['params']:,} |",
        f"| FLOPs per sample | {results['flops']:,} |",
        *[f"| `{fmt}` size | {size:,} bytes |" for fmt, size in results["tflite_bytes"].items()],
        f"| LiteRT latency, batch 1 | {results['litert_ms']:.4f} ms (float32 file, "
        f"{results['litert_threads']} thread, median of {results['latency_runs']}) |",
        f"| TFLite parity with Keras | {_parity_text(results)} |",
        f"| training time per seed | {', '.join(f'{s:.1f}' for s in results['train_seconds'])} s |",
        f"| data source | `{results['data']}` |",
        "",
        f"Per task, test {metric}:",
        "",
        "| task | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---:|" * (len(seeds) + 1),
    ]
    task_names = list(results["per_seed"][str(seeds[0])]["tasks"])
    for task in task_names:
        values = [results["per_seed"][str(s)]["tasks"][task] for s in seeds]
        lines.append(f"| {task} | " + " | ".join(f"{v:.4f}" for v in values)
                     + f" | {sum(values) / len(values):.4f} |")
    lines.append("| **mean** | " + " | ".join(
        f"**{results['per_seed'][str(s)]['mean']:.4f}**" for s in seeds)
        + f" | **{results['mean']:.4f}** |")
    lines += [
        "",
        f"Machine: {cpu_words(machine)}, {machine['cpu_cores']} cores, "
        f"{machine.get('memory') or 'memory unknown'}, GPU {machine['gpu']}; {machine['os']}, "
        f"Python {machine['python']}, TensorFlow {machine['tensorflow']}, Keras "
        f"{machine['keras']}"
        f"{'; code ' + machine['code'] if machine.get('code') else ''}; measured {machine['date']}.",
        "",
    ]
    return lines


def headline_metric(tasks) -> str:
    """The metric a card leads with: `"error"` (1 - accuracy) or `"mse"` when every task regresses."""
    return "mse" if all(t.kind == REGRESSION for t in tasks) else "error"


def task_values(metrics: dict[str, dict[str, float]], tasks, metric: str) -> dict[str, float]:
    """Per task, `metric` from `{task: {metric: value}}` (error = 1 - accuracy for classifiers)."""
    result = {}
    for task in tasks:
        values = metrics[task.name]
        if metric in values:
            result[task.name] = float(values[metric])
        else:  # regression tasks in a mixed entry report their primary metric
            result[task.name] = float(values[task.primary_metric])
    return result
