"""`keras-branch zoo`: list, show, train, evaluate and measure zoo entries.

    keras-branch zoo list
    keras-branch zoo show NAME
    keras-branch zoo train NAME [--data SOURCE] [--seed 0] [--out DIR] [--overwrite]
                               [--epochs N] [--batch-size N] [--learning-rate LR] [--recipe KEY=JSON ...]
    keras-branch zoo evaluate NAME --model MODEL.keras|MODEL.tflite [--data SOURCE] [--split test]
    keras-branch zoo measure NAME [--data SOURCE] [--seeds 0,1,2] [--out DIR] [--runs 300]
    keras-branch zoo card NAME      # regenerate README.md from entry.json + results.json

Input errors raise `KerasBranchError` (the main CLI prints one line, exit 2).
"""

from __future__ import annotations

import argparse

from keras_branch import zoo
from keras_branch.cli_args import (
    DATA_HELP,
    add_out_arguments,
    examples,
    key_values,
    positive_float,
    positive_int,
    seed,
)
from keras_branch.files import atomic_write_text
from keras_branch.zoo.registry import ZooError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `zoo` subcommand (with its own subcommands) to the CLI's subparsers.

    Args:
        subparsers: what `parser.add_subparsers()` returned.

    Returns:
        The `zoo` parser (its `func` default is `run`).

    Example:
    >>> parser = argparse.ArgumentParser(prog="keras-branch")
    >>> sub = parser.add_subparsers(dest="command", required=True)
    >>> zoo_parser = add_parser(sub)
    >>> parser.parse_args(["zoo", "show", "planted-affinity"]).name
    'planted-affinity'
    """
    p = subparsers.add_parser(
        "zoo", help="named model entries with measured cards",
        epilog=examples("keras-branch zoo list", "keras-branch zoo train planted-affinity --out run"))
    zsub = p.add_subparsers(dest="zoo_command", required=True)

    zsub.add_parser("list", help="every entry with its measured headline numbers",
                    epilog=examples("keras-branch zoo list"))

    show = zsub.add_parser("show", help="print an entry's card",
                           epilog=examples("keras-branch zoo show planted-affinity"))
    show.add_argument("name", help="the entry (see `keras-branch zoo list`)")

    data_help = f"{DATA_HELP}; default: the entry's built-in data, when it has one"
    train = zsub.add_parser(
        "train", help="train an entry with its recipe (one seed)",
        epilog=examples("keras-branch zoo train planted-affinity --epochs 5 --out run"))
    train.add_argument("name", help="the entry (see `keras-branch zoo list`)")
    train.add_argument("--data", default=None, help=data_help)
    train.add_argument("--seed", type=seed, default=0, help="initialisation and shuffling seed")
    add_out_arguments(train, "run folder to write (model.keras, metrics.json, ...); without it "
                      "the model is trained and scored but not saved", required=False)
    _add_recipe_arguments(train)

    ev = zsub.add_parser(
        "evaluate", help="score a trained model and compare with the card",
        epilog=examples("keras-branch zoo evaluate planted-affinity --model run/model.keras"))
    ev.add_argument("name", help="the entry (see `keras-branch zoo list`)")
    ev.add_argument("--model", required=True, help="the trained model's .keras file, or a .tflite file exported from it")
    ev.add_argument("--data", default=None, help=data_help)
    ev.add_argument("--split", default="test", help="the split to score")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")

    measure = zsub.add_parser(
        "measure", help="train every seed, measure, write results.json and the card",
        epilog=examples("keras-branch zoo measure planted-affinity --seeds 0,1,2 --out measured"))
    measure.add_argument("name", help="the entry (see `keras-branch zoo list`)")
    measure.add_argument("--data", default=None, help=data_help)
    measure.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    measure.add_argument("--out", default=None,
                         help="folder for results.json and README.md (default: the entry's own)")
    measure.add_argument("--runs", type=positive_int, default=300, help="timed LiteRT calls (median)")
    measure.add_argument("--threads", type=positive_int, default=1, help="LiteRT threads")
    _add_recipe_arguments(measure)

    card = zsub.add_parser("card", help="regenerate an entry's README.md from its files",
                           epilog=examples("keras-branch zoo card planted-affinity"))
    card.add_argument("name", help="the entry (see `keras-branch zoo list`)")

    p.set_defaults(func=run)
    return p


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="override the recipe's batch size")
    parser.add_argument("--learning-rate", type=positive_float, default=None,
                        help="override the recipe's learning rate")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=JSON",
                        help="override any recipe key (VALUE as JSON)")


def _recipe(args: argparse.Namespace) -> dict:
    recipe = key_values(args.recipe, "--recipe", ZooError)
    for key in ("epochs", "batch_size", "learning_rate"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    return recipe


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of ints; a `ZooError` naming the value otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ZooError(f"--seeds must be comma-separated integers. Received: {text!r}") from None
    if not seeds:
        raise ZooError(f"--seeds must name at least one seed. Received: {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    """Runs `keras-branch zoo ...` from parsed arguments.

    Returns:
        0. Input errors raise `KerasBranchError` (the main CLI turns them into status 2).
    """
    command = args.zoo_command
    if command == "list":
        print(zoo.format_list())
        return 0
    if command == "show":
        e = zoo.entry(args.name)
        print(e.card() or zoo.render_card(e, e.results()), end="")
        return 0
    if command == "card":
        import os

        e = zoo.entry(args.name)
        path = os.path.join(e.path, "README.md")
        atomic_write_text(path, zoo.render_card(e, e.results()))
        print(f"wrote {path}")
        return 0
    if command == "train":
        zoo.train(args.name, args.data, seed=args.seed, out=args.out, recipe=_recipe(args),
                  overwrite=args.overwrite)
        return 0
    if command == "evaluate":
        result = zoo.evaluate(args.name, args.model, args.data, split=args.split,
                              batch_size=args.batch_size)
        metric = result["metric"]
        width = max(len(t) for t in result["tasks"])
        for task, value in result["tasks"].items():
            print(f"{args.split} {task:<{width}}  {metric}={value:.4f}")
        print(f"this model: mean {args.split} {metric} {result['mean']:.4f}")
        card = result["card"]
        if card is None:
            print(f"card ({args.name}): not measured")
        else:
            seeds = ", ".join(f"seed {s} {v:.4f}" for s, v in card["seeds"].items())
            print(f"card ({args.name}): mean test {metric} {card['mean']:.4f} +- {card['std']:.4f} ({seeds})")
        return 0
    if command == "measure":
        recipe = _recipe(args)
        zoo.measure(args.name, args.data, seeds=parse_seeds(args.seeds), out=args.out,
                    recipe=recipe or None, runs=args.runs, threads=args.threads)
        return 0
    raise AssertionError(command)  # argparse refuses other commands
