"""`keras-branch evolve`: muNet evolution from the command line.

    keras-branch evolve --root MODEL.keras --data SOURCE --scale 0.9 --out DIR
        [--root-task NAME | --stages L1,L2,...] [--tasks a,b] [--passes 2]
        [--candidates 16] [--candidate-epochs 3] [--state DIR]
    keras-branch evolve --system DIR --add-task NAME[,NAME] --data SOURCE --out DIR2

The search state is written to `--state` (default `OUT.state`) after every
candidate; rerunning the same command after a crash or a kill resumes there
and keeps every candidate already scored.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import argparse
import os

import keras

from keras_branch import backbones
from keras_branch.cli_args import (
    DATA_HELP,
    examples,
    finite_float,
    fraction,
    non_negative_int,
    parse_budget,
    positive_int,
    probability,
    seed,
)
from keras_branch.data import load_data
from keras_branch.errors import ModelFileError, OutputExistsError, SearchError
from keras_branch.evaluation import format_metrics
from keras_branch.files import remove_owned_folder
from keras_branch.saving import load_branched_model
from keras_branch.search.evolution.loop import evolve
from keras_branch.search.evolution.candidates import CANDIDATE_HPARAMS, CANDIDATE_STARTS, FINAL_STARTS
from keras_branch.search.evolution.mutations import ADAPTER_STAGES, CLONE_RULES, DEPTH_MOVES, NORM_RULES
from keras_branch.search.evolution.system import EvolvedSystem

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `evolve` subcommand to the CLI's subparsers.

    Args:
        subparsers: what `parser.add_subparsers()` returned.

    Returns:
        The `evolve` parser (its `func` default is `run`).

    Example:
    >>> parser = argparse.ArgumentParser(prog="keras-branch")
    >>> evolve_parser = add_parser(parser.add_subparsers())
    >>> parser.parse_args(["evolve", "--root", "root.keras", "--data", "planted",
    ...                    "--out", "system"]).out
    'system'
    """
    p = subparsers.add_parser(
        "evolve", help="grow a trained root into a multi-task system (muNet evolution)",
        epilog=examples("keras-branch evolve --root run/model.keras --data planted --out system",
                        "keras-branch evolve --system system --add-task g2_t0 --data planted "
                        "--out system2"),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", help="the trained root: a .keras file")
    source.add_argument("--system", help="an evolved system folder to add tasks to")
    p.add_argument("--root-task", help="with a keras_branch root: whose path is the root "
                   "(default: its first task)")
    p.add_argument("--stages", help="with a plain Keras root: comma-separated names of the "
                   "layers that end each stage")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--tasks", help="comma-separated tasks to evolve (default: every data task "
                   "the system lacks)")
    p.add_argument("--add-task", help="with --system: comma-separated tasks to add")
    p.add_argument("--scale", type=fraction, default=0.9,
                   help="scale factor s in (0, 1]: score = quality * s ** (params / root params)")
    p.add_argument("--passes", type=positive_int, help="rounds over the tasks (default 2; 1 with --system)")
    p.add_argument("--candidates", type=positive_int, default=16, help="candidates per task visit")
    p.add_argument("--candidate-epochs", type=positive_int, default=3, help="training epochs per candidate")
    p.add_argument("--candidate-start", choices=CANDIDATE_STARTS, default="inherited",
                   help="where a candidate's own components start: inherited (its parent's "
                        "trained weights, muNet; default) or equal (what its parent started "
                        "from: every candidate trains --candidate-epochs from the visit's start)")
    p.add_argument("--candidate-hparams", choices=CANDIDATE_HPARAMS, default="own",
                   help="the learning rate and batch size candidates train at: own (each "
                        "path's, moved by mutations, muNet; default) or final (--final-learning-"
                        "rate and --final-batch-size where given; they then never mutate)")
    p.add_argument("--final-epochs", type=non_negative_int, default=0,
                   help="epochs the installed path of each visit trains on (cosine schedule; "
                        "0: none)")
    p.add_argument("--final-learning-rate", type=finite_float(0.0),
                   help="the final training's peak rate (default: each path's own)")
    p.add_argument("--final-batch-size", type=positive_int,
                   help="the final training's batch size (default: each path's own)")
    p.add_argument("--final-start", choices=FINAL_STARTS, default="inherited",
                   help="where the final training starts: inherited (the candidates' trained "
                        "weights; default) or root (the path's own blocks from the root's, "
                        "adapters and head fresh)")
    p.add_argument("--finalists", type=positive_int, default=1,
                   help="with --final-epochs: how many of a visit's best distinct paths get "
                        "the final training; the best after it is installed (default 1)")
    p.add_argument("--mutation-prob", type=probability, default=0.2,
                   help="probability of each mutation of a candidate")
    p.add_argument("--clones", choices=CLONE_RULES, default="suffix",
                   help="suffix: a clone at stage d clones every later stage too (default); "
                        "layer: only the drawn stages (muNet)")
    p.add_argument("--depth-moves", choices=DEPTH_MOVES, default="shape",
                   help="shape: a depth mutation reaches only depths whose head input has the "
                        "full depth's size (default); any: every depth (muNet)")
    p.add_argument("--adapters", choices=ADAPTER_STAGES, default="between",
                   help="between: an adapter mutation inserts only after stages that feed another "
                        "stage, not before the head (default); any: after every stage (muNet)")
    p.add_argument("--norms", choices=NORM_RULES, default="frozen",
                   help="frozen: a block a path shares runs its own batch norms, frozen with it "
                        "(default, muNet); task: the task trains its own copies of them")
    p.add_argument("--budget", type=parse_budget,
                   help="the most parameters the system may hold: a count (e.g. 350000) or a "
                        "multiple of the fully shared model (e.g. 2.4x); default no limit")
    p.add_argument("--seed", type=seed, default=0, help="mutation, initialisation and shuffling seed")
    p.add_argument("--state", help="search state folder (default: OUT.state): a new or empty "
                   "folder, or an interrupted search's to resume; one with other files is refused")
    p.add_argument("--out", required=True, help="system folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs `keras-branch evolve` with parsed arguments.

    Args:
        args: what the `evolve` parser returned.

    Returns:
        0 (errors are raised as keras_branch errors, which the CLI reports).

    Example (not run as a doctest: it needs a trained root model and evolves for minutes):
    >>> run(parser.parse_args(["evolve", "--root", "root.keras", "--data", "planted",
    ...                        "--out", "system"]))  # doctest: +SKIP
    """
    if os.path.lexists(args.out) and not args.overwrite:
        raise OutputExistsError(f"--out exists: {args.out!r}; pass --overwrite to replace it.")
    if args.system:
        if not args.add_task:
            raise SearchError("--system needs --add-task NAME (the task(s) to add).")
        root = EvolvedSystem.load(args.system)
        tasks = args.add_task.split(",")
        known = [t for t in tasks if t in root.task_names]
        if known:
            raise SearchError(f"--add-task {known} already in the system {args.system!r}.")
        passes = 1 if args.passes is None else args.passes
    else:
        if args.add_task:
            raise SearchError("--add-task goes with --system DIR, not --root.")
        root = _load_root(args.root, args.stages)
        tasks = args.tasks.split(",") if args.tasks else None
        passes = 2 if args.passes is None else args.passes
    shape = root.backbone.input_shape if isinstance(root, EvolvedSystem) else _input_shape(root)
    data = load_data(args.data, image_size=shape[0] if len(shape) == 3 else 32)
    state = args.state or f"{os.path.normpath(args.out)}.state"
    result = evolve(
        root, tasks, data, scale=args.scale, passes=passes, candidates=args.candidates,
        candidate_epochs=args.candidate_epochs, candidate_start=args.candidate_start,
        candidate_hparams=args.candidate_hparams,
        mutation_prob=args.mutation_prob,
        clones=args.clones, depth_moves=args.depth_moves, adapters=args.adapters, norms=args.norms,
        budget=args.budget,
        final_epochs=args.final_epochs, final_learning_rate=args.final_learning_rate,
        final_batch_size=args.final_batch_size, final_start=args.final_start,
        finalists=args.finalists, seed=args.seed, root_task=args.root_task, state_dir=state, out_dir=args.out,
        overwrite=args.overwrite,
    )
    print(str(result.system.spec))
    for split, metrics in result.metrics.items():
        print(format_metrics(metrics, split))
    params = result.system.describe()["params_per_task"]
    print("parameters per task: " + ", ".join(f"{t} {p:,.0f}" for t, p in params.items()))
    remove_owned_folder(state)  # the system folder is complete (only a folder we created)
    print(f"saved to {args.out}")
    return 0


def _input_shape(root) -> tuple[int, ...]:
    if isinstance(root, keras.Model):
        return tuple(root.input_shape[1:])
    return tuple(root.input_shape)


def _load_root(path: str, stages: str | None):
    if stages is None:
        return load_branched_model(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"--root file does not exist: {path!r}")
    try:
        model = keras.saving.load_model(path)
    except Exception as err:  # Keras raises many types for a bad file
        raise ModelFileError(f"Cannot load --root {path!r}: {type(err).__name__}: {err}") from None
    return backbones.from_keras_model(model, stages.split(","))
