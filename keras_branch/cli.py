"""`keras-branch`: a thin command line over the library.

Every subcommand parses its flags and calls public functions. Errors in the
user's input (`KerasBranchError`) print one line naming the field and value
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from keras_branch import backbones, distribute
from keras_branch.augment import check_config
from keras_branch.callbacks import EpochLogger
from keras_branch.cli_args import (
    DATA_HELP,
    OneLineParser,
    add_out_arguments,
    examples,
    key_values,
    non_negative_float,
    non_negative_int,
    parse_budget,
    positive_float,
    positive_int,
    seed,
)
from keras_branch.data import load_data
from keras_branch.demo import run_demo
from keras_branch.errors import (
    BackboneError,
    DataError,
    KerasBranchError,
    OutputExistsError,
    SearchError,
    SpecError,
    TrainingError,
)
from keras_branch.evaluation import evaluate, format_metrics
from keras_branch.export.cli import add_parser as add_export_parser
from keras_branch.files import atomic_write_json, remove_owned_folder
from keras_branch.results import save_run
from keras_branch.saving import load_task_model
from keras_branch.search import affinity_search
from keras_branch.search.evolution.cli import add_parser as add_evolve_parser
from keras_branch.search.learn_to_branch import (
    MIN_MARGIN,
    check_widths,
    format_branching,
    learn_to_branch,
    undecided,
)
from keras_branch.soft_ordering_model import fit_soft_ordering, format_mixing_weights
from keras_branch.spec import TreeSpec
from keras_branch.tasks import spec_tasks
from keras_branch.training import fit_spec
from keras_branch.weighting import parse_weighting
from keras_branch.zoo.cli import add_parser as add_zoo_parser


def _backbone_args(items: Sequence[str]) -> dict:
    return key_values(items, "--backbone-arg", BackboneError)


def _make_backbone(name: str, input_shape, args: dict):
    if name == "auto":
        name = "mlp" if len(input_shape) == 1 else "convnet4"
    try:
        return backbones.get(name, input_shape, **args)
    except TypeError as err:
        raise BackboneError(f"--backbone-arg does not fit backbone {name!r}: {err}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, epochs=args.epochs, seed=args.seed, probe_epochs=args.probe_epochs,
             baselines=not args.no_baselines)
    return 0


def _recipe_args(args: argparse.Namespace) -> dict:
    """The recipe flags of `train` as keyword arguments of `fit_spec` / `fit_soft_ordering`."""
    augment = None
    if args.augment is not None:
        try:
            augment = json.loads(args.augment)
        except json.JSONDecodeError as err:
            raise DataError(
                f"--augment must be a JSON object such as "
                f"'{{\"shift\": 0.1, \"rotation\": 10, \"zoom\": 0.1}}' ({err}). "
                f"Received: {args.augment!r}"
            ) from None
        augment = check_config(augment)
    return {"augment": augment, "schedule": args.schedule, "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs, "tensorboard": args.tensorboard,
            # Parsed now: a bad name or setting fails before any data is loaded.
            "weighting": parse_weighting(args.weighting)}


def _recipe_config(args: argparse.Namespace, recipe: dict) -> dict:
    """The recipe as the run's config.json records it (the weighting as given)."""
    return {**{k: v for k, v in recipe.items() if k not in ("tensorboard", "weighting")},
            "weighting": args.weighting}


def cmd_train(args: argparse.Namespace) -> int:
    _refuse_existing_out(args)
    recipe = _recipe_args(args)
    if args.model != "tree":
        return _train_soft_ordering(args, recipe)
    if not args.spec:
        raise SpecError("--spec is required with --model tree.")
    strategy = distribute.get_strategy(args.strategy)
    checkpoint_dir = args.checkpoint_dir or f"{os.path.normpath(args.out)}.checkpoint"
    spec = TreeSpec.load(args.spec)
    data = load_data(args.data, image_size=args.image_size)
    backbone = _make_backbone(args.backbone, data.input_shape, _backbone_args(args.backbone_arg))
    print(str(spec))
    print(f"parameters: {spec.count_params(backbone, spec_tasks(spec, data)):,}")
    try:
        result = fit_spec(
            spec, backbone, data, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, seed=args.seed,
            verbose={"keras": "auto", "short": 0, "none": 0}[args.progress],
            callbacks=[EpochLogger(data.tasks)] if args.progress == "short" else [],
            strategy=strategy, checkpoint_dir=checkpoint_dir,
            mixed_precision=args.mixed_precision, **recipe,
        )
    except TrainingError:
        # The checkpoints hold the diverged weights: resuming them would diverge again.
        remove_owned_folder(checkpoint_dir)
        raise
    if not distribute.is_chief(strategy):
        return 0  # the chief alone writes the run
    for split, metrics in result.metrics.items():
        print(format_metrics(metrics, split))
    config = {
        "command": "train", "spec": os.path.abspath(args.spec), "data": args.data,
        "image_size": args.image_size, "backbone": backbone.get_config(),
        "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "seed": args.seed, "strategy": args.strategy,
        "replicas": strategy.num_replicas_in_sync, "mixed_precision": args.mixed_precision,
        **_recipe_config(args, recipe),
    }
    save_run(args.out, result, config, overwrite=args.overwrite)
    # The run folder is complete: the crash-recovery state is no longer needed
    # (removed only if this program created the folder).
    remove_owned_folder(checkpoint_dir)
    print(f"saved to {args.out}")
    return 0


def _train_soft_ordering(args: argparse.Namespace, recipe: dict) -> int:
    data = load_data(args.data, image_size=args.image_size)
    ordering = {"soft-ordering": "soft", "parallel": "parallel", "permuted": "permuted"}[args.model]
    result = fit_soft_ordering(
        data, ordering=ordering, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed,
        verbose={"keras": "auto", "short": 0, "none": 0}[args.progress],
        callbacks=[EpochLogger(data.tasks)] if args.progress == "short" else [],
        **recipe,
    )
    for split, metrics in result.metrics.items():
        print(format_metrics(metrics, split))
    if ordering == "soft":
        print(format_mixing_weights(result.model))
    config = {"command": "train", "model": args.model, "data": args.data,
              "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "seed": args.seed,
              **_recipe_config(args, recipe)}
    save_run(args.out, result, config, overwrite=args.overwrite)
    print(f"saved to {args.out}")
    return 0


#: The `search` methods: affinity (RSA probes) and tag (TAG lookaheads) measure task
#: affinity for the same budgeted tree search; ltb trains a supernet.
SEARCH_METHODS = ("affinity", "tag", "ltb")
#: The `search` flags that only some methods take (every other flag serves all of
#: them). Each is None (or off) in the parser, so a flag given to a method that
#: does not read it is refused instead of silently ignored.
SEARCH_METHOD_FLAGS: dict[str, tuple[str, ...]] = {
    "--probe-epochs": ("affinity",),
    "--num-inputs": ("affinity",),
    "--search": ("affinity", "tag"),
    "--epochs": ("tag", "ltb"),
    "--learning-rate": ("tag", "ltb"),
    "--every": ("tag",),
    "--lookahead-lr": ("tag",),
    "--strategy": ("tag",),
    "--widths": ("ltb",),
    "--logits-learning-rate": ("ltb",),
    "--warmup-epochs": ("ltb",),
    "--per-example": ("ltb",),
    "--balance": ("ltb",),
}
#: Per method, the value of each of its flags left unset (the flags missing here
#: keep their library function's default: tag's --lookahead-lr is its
#: --learning-rate). TAG's recipe is the one docs/tag.md measured: 20 epochs,
#: Adam 1e-3, a lookahead every 10 steps.
SEARCH_DEFAULTS: dict[str, dict[str, object]] = {
    "affinity": {"probe_epochs": 5, "num_inputs": 256, "search": "auto"},
    "tag": {"epochs": 20, "learning_rate": 1e-3, "every": 10, "search": "auto",
            "strategy": "auto"},
    "ltb": {"epochs": 30, "learning_rate": 1e-3},
}
#: Strategies of `search --method tag`: not multiworker, where every worker would write --out.
SEARCH_STRATEGIES = tuple(s for s in distribute.STRATEGIES if s != "multiworker")


def _search_defaults(flag: str) -> str:
    """A flag's default for its help: "tag 20, ltb 30" where the methods differ, else "10"."""
    dest = flag[2:].replace("-", "_")
    values = {m: SEARCH_DEFAULTS[m][dest] for m in SEARCH_METHOD_FLAGS[flag]}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{m} {v}" for m, v in values.items())


def _resolve_search_flags(args: argparse.Namespace) -> None:
    """Refuses the flags `--method` does not take, then fills in that method's defaults.

    Also refuses a missing `--budget` for the affinity methods: all of this is
    the command line alone, checked before any data loads.
    """
    for flag, methods in SEARCH_METHOD_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        # `is`: `--balance 0` is given, and 0 == False.
        if value is None or value is False or args.method in methods:
            continue
        received = flag if value is True else f"{flag} {value}"
        raise SearchError(
            f"--method {args.method} does not take {flag} (a flag of --method "
            f"{' or '.join(methods)}). Received: {received}"
        )
    for dest, value in SEARCH_DEFAULTS[args.method].items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    if args.method != "ltb" and args.budget is None:
        raise SearchError(
            f"--method {args.method} needs --budget (parameters, or a multiple like 2x)."
        )


def _affinity_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `affinity_search` that measure `--method`'s affinity."""
    if args.method == "tag":
        return {"affinity": "tag", "epochs": args.epochs, "learning_rate": args.learning_rate,
                "every": args.every, "lookahead_lr": args.lookahead_lr,
                "strategy": args.strategy}
    return {"affinity": "rsa", "probe_epochs": args.probe_epochs, "num_inputs": args.num_inputs}


def cmd_search(args: argparse.Namespace) -> int:
    _resolve_search_flags(args)
    _refuse_existing_out(args)
    data = load_data(args.data, image_size=args.image_size)
    backbone = _make_backbone(args.backbone, data.input_shape, _backbone_args(args.backbone_arg))
    if args.method == "ltb":
        return _search_ltb(args, data, backbone)
    # affinity and tag: one path, only the affinity measurement differs.
    search = affinity_search(
        data, backbone, parse_budget(args.budget), seed=args.seed, method=args.search,
        batch_size=args.batch_size, **_affinity_options(args),
    )
    search.save(args.out, overwrite=args.overwrite)
    print(f"saved to {args.out} (tree.json, affinity.json, search.json, tree.png, "
          f"affinity.png, pareto.png); train it with: {_train_command(args)}")
    return 0


def _train_command(args: argparse.Namespace) -> str:
    """The `keras-branch train` line that trains the searched tree on the search's model.

    Carries the data, backbone, backbone arguments and image size, so run
    verbatim it builds the backbone the search measured (and budgeted).
    """
    import shlex

    argv = ["keras-branch", "train", "--spec", os.path.join(args.out, "tree.json"),
            "--data", args.data, "--backbone", args.backbone]
    for item in args.backbone_arg:
        argv += ["--backbone-arg", item]
    argv += ["--image-size", str(args.image_size), "--out", "RUN_DIR"]
    return shlex.join(argv)


def _search_ltb(args: argparse.Namespace, data, backbone) -> int:
    if args.budget is not None and args.widths:
        raise SearchError(
            f"--method ltb takes --widths or --budget, not both. "
            f"Received: --widths {args.widths!r} --budget {args.budget!r}"
        )
    widths = None
    if args.widths:
        try:
            widths = [int(w) for w in args.widths.split(",")]
        except ValueError:
            raise SearchError(
                f"--widths must be integers separated by commas (e.g. 1,3,8). "
                f"Received: --widths {args.widths!r}"
            ) from None
    # Unset flags keep learn_to_branch's defaults.
    options = {} if args.balance is None else {"balance": args.balance}
    if args.budget is not None:
        options["budget"] = parse_budget(args.budget)
    if widths is not None:
        check_widths(widths, backbone.num_stages, len(data.tasks), field="--widths")
    result = learn_to_branch(
        data, backbone, widths=widths, epochs=args.epochs, seed=args.seed,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        logits_learning_rate=args.logits_learning_rate, warmup_epochs=args.warmup_epochs,
        per_example=args.per_example, verbose=2, **options,
    )
    print(format_branching(result.supernet))
    for line in undecided(result.branching):
        print(f"warning: undecided choice (margin below {MIN_MARGIN}): {line}")
    print(str(result.spec))
    result.save(args.out, overwrite=args.overwrite)
    print(f"saved to {args.out} (tree.json, branching.json, search.json); retrain it from scratch "
          f"with: {_train_command(args)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out:
        _refuse_existing_out(args)
    path = args.model
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.keras")):
        path = os.path.join(path, "model.keras")  # a run folder of `keras-branch train`
    model = load_task_model(path)
    shape = tuple(model.input_shape[1:])
    image_size = shape[0] if len(shape) == 3 else 32
    data = load_data(args.data, image_size=image_size)
    if tuple(data.input_shape) != shape:
        raise DataError(
            f"--model {args.model!r} takes inputs of shape {shape}; --data {args.data!r} has "
            f"inputs of shape {tuple(data.input_shape)}."
        )
    if args.split not in data.splits:
        raise DataError(
            f"--split {args.split!r} is not a split of --data {args.data!r}; "
            f"it has {sorted(data.splits)}."
        )
    metrics = evaluate(model, data, args.split, batch_size=args.batch_size)
    print(format_metrics(metrics, args.split))
    if args.out:
        atomic_write_json(args.out, {args.split: metrics}, overwrite=args.overwrite)
    return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --backbone, --backbone-arg and --image-size, shared by train and search."""
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--backbone", default="auto",
                        help=f"{', '.join(backbones.BUILTIN)} (auto: mlp for vectors, "
                             f"convnet4 for images)")
    parser.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone argument, VALUE as JSON (e.g. widths=[64,64,32])")
    parser.add_argument("--image-size", type=positive_int, default=32,
                        help="image side in pixels (image data sets)")


def _refuse_existing_out(args: argparse.Namespace) -> None:
    if os.path.lexists(args.out) and not args.overwrite:
        raise OutputExistsError(f"--out exists: {args.out!r}; pass --overwrite to replace it.")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    parser = OneLineParser(
        prog="keras-branch",
        description="Decide which layers a multi-task Keras network should share.",
        epilog=examples("keras-branch demo",
                        "keras-branch search --data planted --budget 2x --out search",
                        "keras-branch train --spec search/tree.json --data planted --out run"),
    )
    try:
        installed = version("keras_branch")
    except PackageNotFoundError:  # run from a source tree that is not installed
        installed = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"keras-branch {installed}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines and warnings (the console "
                             "script hides them otherwise); give it before the subcommand")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="search, train and save a tree on built-in data",
                          epilog=examples("keras-branch demo --seed 1 --out demo1"))
    demo.add_argument("--out", default="keras_branch_demo",
                      help="run folder (replaced when keras-branch wrote it)")
    demo.add_argument("--epochs", type=positive_int, default=20,
                      help="training epochs of the tree and the baselines")
    demo.add_argument("--seed", type=seed, default=0, help="data, probe and initialisation seed")
    demo.add_argument("--probe-epochs", type=positive_int, default=3,
                      help="training epochs of each affinity probe")
    demo.add_argument("--no-baselines", action="store_true",
                      help="skip the fully shared and independent baselines")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train", help="train the model a tree spec describes",
        epilog=examples("keras-branch train --spec tree.json --data planted --epochs 20 --out run",
                        "keras-branch train --model soft-ordering --data omniglot:images.zip "
                        "--out run"))
    train.add_argument("--spec", help="tree spec JSON file (required with --model tree)")
    train.add_argument("--model", default="tree",
                       choices=("tree", "soft-ordering", "parallel", "permuted"),
                       help="tree: the spec's branched model; soft-ordering, parallel, permuted: "
                            "a shared pool of layers mixed per task (soft layer ordering)")
    _add_data_arguments(train)
    train.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    train.add_argument("--batch-size", type=positive_int, default=32,
                       help="global batch size (split across replicas)")
    train.add_argument("--learning-rate", type=positive_float, default=1e-3,
                       help="peak learning rate (Adam, or AdamW with --weight-decay)")
    train.add_argument("--seed", type=seed, default=0, help="initialisation and shuffling seed")
    add_out_arguments(train, "run folder to write")
    train.add_argument("--progress", choices=("short", "keras", "none"), default="short",
                       help="one line per epoch (short), Keras' progress bar, or nothing")
    train.add_argument("--strategy", choices=("auto", "mirrored", "multiworker", "none"),
                       default="auto", help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    train.add_argument("--checkpoint-dir",
                       help="crash-recovery checkpoints (default: OUT.checkpoint); rerunning "
                            "the same command resumes from the last finished epoch. A new or "
                            "empty folder; one with other files is refused, never deleted")
    train.add_argument("--mixed-precision", choices=("float16", "bfloat16"),
                       help="mixed precision compute; heads stay float32")
    train.add_argument("--augment", metavar="JSON",
                       help='image augmentation, e.g. \'{"shift": 0.1, "rotation": 10, '
                            '"zoom": 0.1}\' (keys: shift, rotation, zoom, shear, fill)')
    train.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                       help="learning-rate schedule (cosine: decay to 0 over the run)")
    train.add_argument("--warmup-epochs", type=non_negative_int, default=0,
                       help="epochs of linear learning-rate warm-up")
    train.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                       help="decoupled weight decay (AdamW); 0: Adam")
    train.add_argument("--weighting", default="equal", metavar="NAME[:KEY=VALUE,...]",
                       help="how task losses combine: equal (the sum), fixed:TASK=WEIGHT,..., "
                            "uncertainty, dwa[:temperature=2], gradnorm[:alpha=1.5], "
                            "pcgrad[:seed=0], cagrad[:c=0.4] (see keras_branch.weighting)")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="write TensorBoard logs (per-task losses and metrics per epoch)")
    train.set_defaults(func=cmd_train)

    search = sub.add_parser(
        "search", help="search a tree spec under a parameter budget",
        epilog=examples("keras-branch search --data planted --budget 2x --out search",
                        "keras-branch search --method tag --data planted --budget 2x "
                        "--epochs 20 --every 10 --out tag",
                        "keras-branch search --method ltb --data planted --widths 1,3,8 "
                        "--out ltb"))
    search.add_argument("--method", default="affinity", choices=SEARCH_METHODS,
                        help="affinity: RSA task affinity (one probe per task) + budgeted tree "
                             "search; tag: TAG task affinity (lookaheads during one training "
                             "of the shared model) + the same tree search; ltb: Learning to "
                             "Branch (a supernet of BranchPoints). A flag of another method "
                             "is refused")
    _add_data_arguments(search)
    search.add_argument("--budget", help="parameters (e.g. 150000) or a multiple of the "
                        "fully shared model (e.g. 2x); required by affinity and tag; ltb: "
                        "sizes the supernet so every tree it can return fits (instead of "
                        "--widths)")
    search.add_argument("--probe-epochs", type=positive_int,
                        help=f"affinity: training epochs of each task's probe "
                             f"(default: {_search_defaults('--probe-epochs')})")
    search.add_argument("--num-inputs", type=positive_int,
                        help=f"affinity: held-out inputs compared across probes (K) "
                             f"(default: {_search_defaults('--num-inputs')})")
    search.add_argument("--batch-size", type=positive_int, default=64,
                        help="batch size of the probes (affinity), the shared model (tag) or "
                             "the supernet (ltb)")
    search.add_argument("--search", choices=("auto", "exhaustive", "beam"),
                        help=f"affinity, tag: tree search, exact up to 8 tasks (auto), beam "
                             f"beyond (default: {_search_defaults('--search')})")
    search.add_argument("--seed", type=seed, default=0,
                        help="initialisation, shuffling and sampling seed")
    search.add_argument("--epochs", type=positive_int,
                        help=f"tag: epochs of the one training of the shared model; ltb: "
                             f"supernet training epochs (default: {_search_defaults('--epochs')})")
    search.add_argument("--learning-rate", type=positive_float,
                        help=f"tag: Adam learning rate of the shared model; ltb: of the "
                             f"supernet's weights (default: {_search_defaults('--learning-rate')})")
    search.add_argument("--every", type=positive_int,
                        help=f"tag: measure the lookahead affinity every k training steps "
                             f"(default: {_search_defaults('--every')})")
    search.add_argument("--lookahead-lr", type=positive_float,
                        help="tag: SGD rate of each lookahead step (default: --learning-rate, "
                             "the step the training takes, as in TAG's code)")
    search.add_argument("--strategy", choices=SEARCH_STRATEGIES,
                        help=f"tag: tf.distribute strategy of the training (auto: mirrored "
                             f"over 2 or more GPUs) (default: {_search_defaults('--strategy')})")
    search.add_argument("--widths", help="ltb: nodes per stage, e.g. 1,3,8 for 8 tasks (default: "
                        "2, 4, ... growing to one per task); a last stage narrower than the "
                        "task count makes the heads choose too")
    search.add_argument("--logits-learning-rate", type=positive_float,
                        help="ltb: learning rate of the branching logits (default: 10x --learning-rate)")
    search.add_argument("--warmup-epochs", type=non_negative_int,
                        help="ltb: epochs of uniform mixing before the logits learn "
                             "(default: about 1%% of --epochs, at least 1)")
    search.add_argument("--per-example", action="store_true",
                        help="ltb: one Gumbel sample per example instead of per batch")
    search.add_argument("--balance", type=non_negative_float,
                        help="ltb: strength of the penalty on parents no child uses "
                             "(0: off; default 0.1)")
    add_out_arguments(search, "folder to write")
    search.set_defaults(func=cmd_search)

    ev = sub.add_parser(
        "evaluate", help="re-score a saved model",
        epilog=examples("keras-branch evaluate --model run --data planted --out metrics.json"))
    ev.add_argument("--model", required=True, help="model.keras file, or a run folder holding one")
    ev.add_argument("--data", required=True, help=DATA_HELP)
    ev.add_argument("--split", default="test", help="the split to score")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    ev.add_argument("--out", help="write the metrics as JSON here (refused if it exists)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out file (never a folder keras-branch did not write)")
    ev.set_defaults(func=cmd_evaluate)

    add_evolve_parser(sub)
    add_export_parser(sub)
    add_zoo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a flag argparse refused (one line)
        return done.code if isinstance(done.code, int) else 2

    try:
        out = getattr(args, "out", None)
        if isinstance(out, str) and not out.strip():
            raise OutputExistsError(f"--out must be a path. Received: --out {out!r}")
        return args.func(args)
    except KerasBranchError as err:
        message = " ".join(str(err).split())
        print(f"keras-branch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the file system refuses (a file where a folder goes, ...)
        where = f": {err.filename!r}" if err.filename else ""
        print(f"keras-branch {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
