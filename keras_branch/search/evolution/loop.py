"""`evolve`: the muNet search loop, and `pretrain_and_evolve`, the recipe from scratch.

Per task visit (round robin over the tasks, `passes` times): the population
is made (`state.SearchState.population`), each candidate draws a parent
(`selection.select_parent`), mutates it (`mutations.mutate`; under a budget
drawn again while over the task's part, `budget.draw_child`), trains its own
components (`candidates.train_candidate`) and joins the population when its
score beats its parent's; at the end of the visit the best path is installed
(`system.EvolvedSystem.install`). The state is written after every candidate.

Randomness: every draw derives from `seed`. Candidate `c` of task `name` in
pass `p` draws from `selection.candidate_rng(seed, p, name, c)`: its parent,
its mutations, the seed of its fresh layers' initial weights (used through
`seeding.seeded_layers`) and the seed of its batch order. No global random
state (Python's, NumPy's, TensorFlow's, Keras') is seeded or read, and the
Keras session is never cleared: a candidate's model is dropped and
collected (`gc.collect()`) once its weights are copied out, and the custom
gradients its training registered in TensorFlow's global registry are
removed by `candidates.train_candidate` (`gradient_registry`), so that
its traced graph goes too.

Reference:
    Gesmundo & Dean, "An Evolutionary Approach to Dynamic Introduction of
    Tasks in Large-scale Multitask Learning Systems", arXiv 2205.10937, 2022
    (muNet).
"""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from keras_branch.backbones import Backbone
from keras_branch.build import block_name
from keras_branch.compiling import compile_model
from keras_branch.data.multitask import MultiTaskData, pool_tasks
from keras_branch.errors import SearchError
from keras_branch.evaluation import evaluate
from keras_branch.results import TrainResult
from keras_branch.search.evolution.budget import allowance, ceiling as budget_ceiling, draw_child
from keras_branch.search.evolution.candidates import (
    CANDIDATE_HPARAMS,
    CANDIDATE_STARTS,
    FINAL_STARTS,
    child_weights,
    final_start_weights,
    fixed_hparams,
    train_candidate,
)
from keras_branch.search.evolution.mutations import (
    ADAPTER_STAGES,
    CLONE_RULES,
    DEPTH_MOVES,
    HPARAM_LISTS,
    NORM_RULES,
    apply_norm_rule,
    allowed_depths,
)
from keras_branch.search.evolution.selection import (
    candidate_rng,
    finalists as distinct_finalists,
    score,
)
from keras_branch.search.evolution.state import SearchState
from keras_branch.search.evolution.system import EvolvedSystem, TaskPath
from keras_branch.search.result import SearchResult
from keras_branch.search.tree_search import resolve_budget, shared_params
from keras_branch.spec import TreeSpec
from keras_branch.training import fit_spec

__all__ = ["check_evolve_args", "evolve", "pretrain_and_evolve", "pretrain_root"]


def evolve(
    root: Backbone | keras.Model | EvolvedSystem,
    tasks: Sequence[str] | None,
    data: MultiTaskData,
    scale: float = 0.9,
    passes: int = 2,
    candidates: int = 16,
    candidate_epochs: int = 3,
    candidate_start: str = "inherited",
    candidate_hparams: str = "own",
    mutation_prob: float = 0.2,
    clones: str = "suffix",
    depth_moves: str = "shape",
    adapters: str = "between",
    norms: str = "frozen",
    budget: int | float | str | None = None,
    seed: int = 0,
    augment: Mapping[str, float] | None = None,
    final_epochs: int = 0,
    final_learning_rate: float | None = None,
    final_batch_size: int | None = None,
    final_start: str = "inherited",
    finalists: int = 1,
    root_task: str | None = None,
    state_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> SearchResult:
    """Evolves a path per task from a trained root (muNet).

    Args:
        root: a `Backbone` with trained weights, a trained `BranchedModel`
            (its `root_task` path is the root), or an `EvolvedSystem` to
            grow (its tasks keep their paths and weights).
        tasks: names of the tasks to evolve, in visiting order (default: the
            data's tasks the system lacks, or all of them).
        data: the multi-task data (train, validation and test splits);
            candidates train on `train` and are judged on `validation`.
        scale: the scale-control factor s in (0, 1]: a candidate's score is
            `quality * s ** (accounted_params / root_params)`; smaller s
            favours fewer parameters per task.
        passes: rounds over the tasks.
        candidates: candidates trained per task visit.
        candidate_epochs: training epochs of one candidate (its budget).
        candidate_start: where a candidate's own components start
            (`candidates.child_weights`): `"inherited"` (default, muNet's:
            its parent's trained weights, so a lineage trains on over
            generations and a child without mutation continues its parent)
            or `"equal"` (the weights its parent started from: every
            candidate of a visit trains `candidate_epochs` from what the
            visit started with, so paths are ranked at equal training; the
            final training still continues the installed candidate's). On
            Omniglot-5 with 160 final epochs (Intel Xeon, seeds 0-2)
            `"equal"` gave 7.98% mean test error against 8.05%, and a task
            added to a saved system ended within 0.23 point of evolving it
            with the others, against 1.85 (docs/evolution.md). Without a
            final training it leaves the installed path one candidate's
            epochs.
        candidate_hparams: which learning rate and batch size candidates
            train at (`candidates.fixed_hparams`): `"own"` (default,
            muNet's: each path's, moved by mutations) or `"final"`
            (`final_learning_rate` and `final_batch_size`, where set: no
            mutation moves them and every candidate trains at them, so paths
            are ranked under the hyperparameters the installed one trains
            at). On Omniglot-5 (AMD EPYC, seeds 0-5) `"final"` gave 7.95%
            mean test error against 7.91%, with fewer heads on the frozen
            root and half the spread around fine-tuning (docs/evolution.md).
        mutation_prob: probability of each mutation.
        clones: how a clone mutation extends (`mutations.mutate`):
            `"suffix"` (a clone at stage d clones every later stage too, so
            frozen blocks never sit above a path's trained ones) or
            `"layer"` (only the drawn stages, muNet's rule).
        depth_moves: which depths a depth mutation may reach
            (`mutations.allowed_depths`): `"shape"` (default) only depths
            whose head input has the full depth's size (on a convnet4 with
            flattened features: none but the full depth), `"any"` every
            depth (muNet's move).
        adapters: after which stages an adapter mutation may insert one
            (`mutations.mutate`): `"between"` (default) only after stages
            that feed another stage of the path (an adapter after the last
            one only deepens the task's head: on Omniglot-5 it cost about a
            point of test error after 160 epochs, docs/evolution.md; a
            path that has one there drops it); `"any"` after every used
            stage (muNet's rule).
        norms: whose batch norms the blocks a path shares run
            (`mutations.apply_norm_rule`, a rule on every child, not a
            mutation): `"frozen"` (default, muNet's: the block's own, frozen
            with it) or `"task"` (the task trains its own copies: scale,
            offset and its data's statistics, 256 parameters per convnet4
            stage of 64 filters; `TreeSpec`'s `norms`). On Omniglot-5 (AMD
            EPYC, seeds 0-5) `"task"` gave 8.10% mean test error against
            7.95% (docs/evolution.md).
        budget: the most parameters the system may hold once every task
            of `tasks` is on a path (`EvolvedSystem.params_with`): a count,
            or a multiple of the fully shared model over the system's and
            `tasks`' tasks such as `"2.4x"` (as the affinity search's
            budgets; the smallest evolved system is that model). A task's
            part is its head plus an equal share of what the budget leaves
            beyond the root and every task's head; one call pools the parts
            of the tasks it places (a task visited later may use what
            earlier ones left), never those of tasks placed before it (a
            task added later gets its own part, `budget.ceiling`). A child
            over what its visit may add first drops the adapters on stages
            it clones, then is drawn again (`budget.draw_child`, up to
            `DRAWS_PER_SLOT` times); a slot whose every draw is over is
            recorded and not trained. Default None: no limit, the scale
            factor alone holds the size back.
        seed: everything random derives from it (a resumed run makes the
            same candidates); no global random state is seeded or consumed.
        augment: image augmentation of candidates' training batches (a
            `keras_branch.augment` config such as `{"shift": 0.1,
            "rotation": 10, "zoom": 0.1}`).
        final_epochs: when positive, the path a visit installs first trains
            its own components (clones, adapters, head) for this many more
            epochs under a cosine schedule from its learning rate, and is
            judged again. Candidates are trained briefly to rank paths; the
            installed one is then trained as a whole network would be.
            Shared components stay frozen, so no other task's output moves.
        final_learning_rate: the final training's peak rate; None keeps the
            path's own (its `learning_rate` hyperparameter). Short candidate
            runs favour small rates (a small rate looks best after a few
            epochs), so a long final training at the rate they chose can
            undertrain: on Omniglot-5 (seed 0) the recipe's 3e-3 here took
            the evolved system from 9.75% to 8.78%.
        final_batch_size: the final training's batch size; None keeps the
            path's own (its `batch_size` hyperparameter). For the same
            reason as the rate: a small batch takes more steps in a
            candidate's few epochs and looks better there, which says
            nothing about a long training (docs/evolution.md).
        final_start: where the final training starts
            (`candidates.final_start_weights`): `"inherited"` (default: the
            candidates' trained weights, muNet's way) or `"root"` (the
            path's own blocks from the root's, adapters and head fresh, so
            a task's result depends on the structure and hyperparameters
            the search chose, not on the lineage that found them). On
            Omniglot-5 (Intel Xeon, seeds 0-2) `"root"` gave 8.28% mean
            test error against 8.05% inherited; on the task visits that
            installed the same path both ways it lost five of nine, tied
            three (docs/evolution.md).
        finalists: with `final_epochs`, how many of the visit's best paths
            of distinct structure (`selection.finalists`) get the final
            training; the one with the best score after it is installed.
            Candidates are ranked after a few epochs on the validation split,
            and a child without mutation continues its parent's training, so
            a small path retrained over generations can outrank a larger one
            that ends better (docs/evolution.md). Each finalist costs
            `final_epochs` more epochs. Default 1: the best candidate.
        root_task: see `root`.
        state_dir: where the search state is written after every candidate;
            rerunning with the same arguments resumes from it.
        out_dir: when given, the final system folder (`EvolvedSystem.save`).
        overwrite: replace `out_dir` if it exists.
        log: progress lines (None for silence).

    Returns:
        A `SearchResult` (method `"evolution"`): the system's TreeSpec;
        scores `metrics` (split -> task -> metric), `history` (one record
        per scored candidate: pass, task, parent, mutations, path, quality,
        params, score, accepted, seconds) and `config` (the arguments);
        artifacts `system` (the `EvolvedSystem`) and `model` (the system as
        one Keras model); file `system` (the system folder, as
        `EvolvedSystem.save` writes it).

    Example (not run as a doctest: it trains candidates for minutes;
    `docs/evolution.md` runs a small evolution):
    >>> result = evolve(root_model, ["Latin"], data, scale=0.9, candidates=8)  # doctest: +SKIP
    >>> result.system.spec.to_json()  # doctest: +SKIP

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """
    check_evolve_args({"scale": scale, "passes": passes, "candidates": candidates,
                       "candidate_epochs": candidate_epochs, "candidate_start": candidate_start,
                       "candidate_hparams": candidate_hparams,
                       "mutation_prob": mutation_prob, "final_epochs": final_epochs,
                       "final_learning_rate": final_learning_rate,
                       "final_batch_size": final_batch_size,
                       "final_start": final_start, "clones": clones, "depth_moves": depth_moves,
                       "adapters": adapters, "norms": norms, "finalists": finalists})
    began = time.perf_counter()
    say = log or (lambda _: None)
    system = root if isinstance(root, EvolvedSystem) else EvolvedSystem.from_root(root, root_task)
    system = copy.deepcopy(system)
    bb = system.backbone
    if norms == "task" and not any(bb.stage_norm_positions(d) for d in range(bb.num_stages)):
        raise SearchError(
            f"`norms` 'task' gives a task its own copies of the batch norms of the blocks it "
            f"shares, but no stage of backbone {bb.name!r} is a keras.Sequential holding "
            f"BatchNormalization layers. Received: norms='task'"
        )
    by_name = {t.name: t for t in data.tasks}
    if tasks is None:
        tasks = [n for n in data.task_names if n not in system.task_names] or data.task_names
    tasks = list(tasks)
    unknown = [n for n in tasks if n not in by_name]
    if unknown or not tasks:
        raise SearchError(
            f"`tasks` must name tasks of the data; unknown: {unknown or tasks}. "
            f"Data tasks: {data.task_names}."
        )
    missing = [split for split in ("train", "validation") if split not in data.splits]
    if missing:
        raise SearchError(
            f"Evolution trains candidates on `train` and judges them on `validation`; "
            f"data {data.name!r} lacks {missing} (splits: {sorted(data.splits)})."
        )
    if tuple(data.input_shape) != tuple(system.backbone.input_shape):
        raise SearchError(
            f"The data's input shape {data.input_shape} differs from the root's "
            f"{system.backbone.input_shape}."
        )
    new = [by_name[n] for n in tasks if n not in system.task_names]
    everyone = system.tasks + new
    limit = None if budget is None else resolve_budget(budget, shared_params(system.backbone,
                                                                             everyone))
    ceiling = None
    if limit is not None:
        held = system.params() + sum(system.head_params(t) for t in new)
        if held > limit:
            raise SearchError(
                f"`budget`={budget!r} ({limit:,} parameters) is below what the system already "
                f"holds with a head for each new task ({held:,}).")
        ceiling = budget_ceiling(system, held, len(new), everyone, limit)
    config = {"tasks": tasks, "scale": scale, "passes": passes, "candidates": candidates,
              "candidate_epochs": candidate_epochs, "mutation_prob": mutation_prob,
              "candidate_start": candidate_start,
              # Only when set: a search state written before the option resumes.
              **({"candidate_hparams": candidate_hparams} if candidate_hparams != "own" else {}),
              **({"norms": norms} if norms != "frozen" else {}),
              "clones": clones, "depth_moves": depth_moves, "adapters": adapters, "budget": limit,
              "seed": seed, "augment": dict(augment) if augment else None,
              "final_epochs": final_epochs, "final_learning_rate": final_learning_rate,
              "final_batch_size": final_batch_size,
              "final_start": final_start, "finalists": finalists, "data": data.name,
              "start_tasks": system.task_names}
    state = SearchState(state_dir, config, system, say)
    system = state.system
    splits = {name: data.select_tasks([name]) for name in tasks}
    num_stages = system.backbone.num_stages
    depths = allowed_depths([system.backbone.feature_size(d) for d in range(1, num_stages + 1)],
                            depth_moves)
    fixed = fixed_hparams(candidate_hparams, final_learning_rate, final_batch_size)
    movable = [name for name in HPARAM_LISTS if name not in fixed]

    for p in range(passes):
        for i, name in enumerate(tasks):
            visit = (p, i)
            if state.finished(visit):
                continue
            task = by_name[name]
            population = state.population(visit, task)
            part = None if limit is None else allowance(system, task, everyone, ceiling)
            if state.done_in_visit(visit) == 0:
                say(f"[pass {p + 1}/{passes}] task {name}: {len(population)} parent(s), "
                    f"{candidates} candidates"
                    + ("" if part is None else f", at most {part[1]:,} parameters added"))
            # One more than `candidates`: the last runs only where the budget
            # turned every candidate away (see below).
            for c in range(state.done_in_visit(visit), candidates + 1):
                start = time.perf_counter()
                rng = candidate_rng(seed, p, name, c)
                refused: list[dict] = []
                if c < candidates:
                    parent, path, mutations, added, refused = draw_child(
                        system, task, population, rng, num_stages, mutation_prob, clones, depths,
                        part, adapters, movable, norms)
                elif any(e["score"] is not None for e in population):
                    break
                else:
                    # Every candidate was over the task's part. The root path (a
                    # head on the frozen root) always fits: the budget holds
                    # every task's head, so the task is still placed.
                    parent = next(e for e in population if e["id"] == "root")
                    path, mutations = TaskPath.from_dict(parent["path"]), []
                    apply_norm_rule(system, path, norms)
                    added = system.params_with(task, path) - part[0]
                    say(f"  {name}: every candidate over the {part[1]:,} parameters "
                        f"allowed; training the root path")
                path.hparams.update(fixed)
                drawn = {"redrawn": refused} if refused else {}
                if part is not None and added > part[1]:
                    parent["children"] += 1
                    state.record(visit, {
                        "pass": p, "task": name, "candidate": c, "parent": parent["id"],
                        "mutations": mutations, "path": path.to_dict(), "quality": None,
                        "params": None, "score": None, "accepted": False,
                        "over_budget": {"added": added, "allowed": part[1]}, **drawn,
                        "seconds": round(time.perf_counter() - start, 2)}, None, None)
                    say(f"  {name} {c + 1}/{candidates}: {len(refused) + 1} children drawn, "
                        f"the last (parent {parent['id']}, "
                        f"{', '.join(mutations) or 'no mutation'}) adds {added:,} "
                        f"parameters, over the {part[1]:,} allowed: not trained")
                    continue
                owned = child_weights(system, task, parent, path, state, candidate_start)
                layer_seed = int(rng.integers(2**31))
                order_seed = int(rng.integers(2**31))
                quality, weights = train_candidate(system, task, path, owned, splits[name],
                                                   candidate_epochs, augment, layer_seed,
                                                   order_seed)
                # The candidate's model is unreachable now (Keras models hold
                # reference cycles): free it before the next one is built.
                gc.collect()
                params = system.accounted_params(task, path)
                value = score(quality, params, system.root_params, scale)
                parent["children"] += 1
                better = parent["score"] is None or value > parent["score"]
                record = {
                    "pass": p, "task": name, "candidate": c, "parent": parent["id"],
                    "mutations": mutations, "path": path.to_dict(), "quality": quality,
                    "params": params, "score": value, "accepted": better, **drawn,
                    "seconds": round(time.perf_counter() - start, 2),
                }
                entry = {"id": f"p{p}c{c}", "path": path.to_dict(), "score": value,
                         "quality": quality, "params": params, "children": 0,
                         "trained": True}
                if better:
                    population.append(entry)
                state.record(visit, record, entry if better else None, weights if better else None,
                             owned if candidate_start == "equal" else None)
                say(f"  {name} {c + 1}/{candidates}: parent {parent['id']}, "
                    f"{', '.join(mutations) or 'no mutation'} -> quality {quality:.4f}, "
                    f"params/task {params:,.0f}, score {value:.4f}"
                    f"{' (kept)' if better else ''}")
            # The finalists are the visit's best paths of distinct structure
            # (one unless `finalists` > 1); each trains `final_epochs` more and
            # the best after that is installed (ties: the better-ranked one).
            shared = (lambda d, b: block_name(d, b) in system.weights)
            ranked = []
            for k, entry in enumerate(distinct_finalists(population, finalists, shared)):
                path = TaskPath.from_dict(entry["path"])
                owned = state.load_weights(entry["id"], visit)
                installed = {key: entry[key] for key in ("quality", "params", "score")}
                # The task's own path from an earlier pass had its final training then.
                if final_epochs and not entry["id"].startswith("task:"):
                    start = time.perf_counter()
                    rng = candidate_rng(seed, p, name, "final" if k == 0 else f"final{k + 1}")
                    trained = copy.deepcopy(path)
                    if final_learning_rate is not None:
                        trained.hparams["learning_rate"] = final_learning_rate
                    if final_batch_size is not None:
                        trained.hparams["batch_size"] = final_batch_size
                    quality, owned = train_candidate(
                        system, task, trained, final_start_weights(system, owned, final_start),
                        splits[name], final_epochs, augment,
                        int(rng.integers(2**31)), int(rng.integers(2**31)), schedule="cosine")
                    gc.collect()
                    installed.update(quality=quality, score=score(quality, entry["params"],
                                                                  system.root_params, scale))
                    state.history.append({
                        "pass": p, "task": name, "final": entry["id"], "finalist": k + 1,
                        "epochs": final_epochs, "start": final_start, "path": path.to_dict(),
                        "quality": quality,
                        "params": entry["params"], "score": installed["score"],
                        "seconds": round(time.perf_counter() - start, 2),
                    })
                    say(f"  {name}: {entry['id']} trained {final_epochs} more epochs -> "
                        f"quality {entry['quality']:.4f} -> {quality:.4f}")
                ranked.append((installed, path, owned, entry))
            installed, path, owned, best = max(ranked, key=lambda r: r[0]["score"])
            system.install(task, path, owned, installed)
            state.finish(visit, system)
            say(f"  {name}: installed {best['id']} (quality {installed['quality']:.4f}, "
                f"params/task {best['params']:,.0f}, score {installed['score']:.4f})")

    model = system.build()
    compile_model(model)
    system_data = data.select_tasks(system.task_names)
    metrics = {
        split: evaluate(model, system_data, split)
        for split in ("validation", "test") if split in data.splits
    }
    history = state.history
    if out_dir is not None:
        system.save(out_dir, metrics, history, config, overwrite=overwrite)
    scores = {"metrics": metrics, "history": history, "config": config}
    files = {"system": lambda path: system.save(path, metrics, history, config)}
    return SearchResult("evolution", system.spec, scores, {"system": system, "model": model},
                        {"evolution": time.perf_counter() - began}, files)


def pretrain_root(
    data: MultiTaskData,
    backbone: Backbone,
    root_tasks: Sequence[str] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> TrainResult:
    """muNet's root: `backbone` trained on some tasks pooled into one classification task.

    The root `pretrain_and_evolve` evolves from, and the one a per-task
    fine-tuning baseline starts from.

    Args:
        data: multi-task data with multiclass `root_tasks`.
        backbone: the root's architecture (fresh weights).
        root_tasks: tasks pooled (`pool_tasks`) into the root's task
            `"pooled"` (default: all but the last task).
        seed: initialisation and shuffling seed.
        **kwargs: the recipe, as `keras_branch.training.train` takes it.

    Returns:
        The root's `TrainResult` (a fully shared `BranchedModel` with the
        one task `"pooled"`).
    """
    root_tasks = list(root_tasks) if root_tasks is not None else data.task_names[:-1]
    if not root_tasks:
        raise SearchError("`root_tasks` must name at least one task to pretrain the root on.")
    pooled = pool_tasks(data, root_tasks)
    return fit_spec(TreeSpec.shared(["pooled"], backbone.num_stages), backbone, pooled,
                    seed=seed, verbose=0, log=None, **kwargs)


def pretrain_and_evolve(
    data: MultiTaskData,
    backbone: Backbone,
    root_tasks: Sequence[str] | None = None,
    root_epochs: int = 30,
    root_learning_rate: float = 1e-3,
    root_schedule: str = "constant",
    batch_size: int = 32,
    seed: int = 0,
    augment: Mapping[str, float] | None = None,
    log: Callable[[str], None] | None = print,
    **kwargs: Any,
) -> SearchResult:
    """The whole recipe from scratch: a root trained on some tasks pooled, then evolution.

    Args:
        data: multi-task data with multiclass `root_tasks`.
        backbone: the root's architecture (fresh weights; the root trains them).
        root_tasks: tasks pooled into the root's one classification task
            (default: all but the last task).
        root_epochs, root_learning_rate, root_schedule, batch_size: the
            root's training (`schedule` as in `fit_spec`).
        seed, augment, log: as in `evolve` (`augment` serves the root too).
        **kwargs: `evolve`'s other arguments (`scale`, `passes`,
            `candidates`, `candidate_epochs`, `mutation_prob`, `clones`, `depth_moves`,
            `adapters`, `budget`, `state_dir`, `out_dir`, `overwrite`); evolution grows the root to every task
            of `data`.

    Returns:
        The `SearchResult` of `evolve`, with the root's metrics as score
        `root_metrics` and the root's training time in `seconds["root"]`.

    Example (not run as a doctest: it trains a root and evolves on Omniglot for minutes):
    >>> result = pretrain_and_evolve(omniglot, backbones.convnet4((28, 28, 1)), scale=0.5)  # doctest: +SKIP

    Reference:
        Gesmundo & Dean, arXiv 2205.10937 (muNet).
    """
    began = time.perf_counter()
    root = pretrain_root(data, backbone, root_tasks, seed=seed, epochs=root_epochs,
                         batch_size=batch_size, learning_rate=root_learning_rate,
                         schedule=root_schedule, augment=augment)
    if log:
        log(f"root on {root_tasks or data.task_names[:-1]} pooled: test error "
            f"{root.metrics['test']['pooled']['error']:.4f}")
    result = evolve(root.model, data.task_names, data, seed=seed, augment=augment, log=log,
                    **kwargs)
    result.scores["root_metrics"] = root.metrics
    result.seconds["root"] = time.perf_counter() - began - result.seconds["evolution"]
    return result


def check_evolve_args(settings: Mapping[str, Any], prefix: str = "") -> None:
    """Validates the `evolve` settings in `settings` (by `evolve`'s argument names).

    Only the keys present are checked, so a recipe holding some of them (such
    as `benchmarks/omniglot.py`'s `evolve_*` keys) can refuse a bad value
    before any training, with the message `evolve` would give.

    Args:
        settings: some of `scale`, `passes`, `candidates`,
            `candidate_epochs`, `candidate_start`, `candidate_hparams`, `finalists`, `final_epochs`,
            `final_learning_rate`, `final_batch_size`, `final_start`, `mutation_prob`, `clones`,
            `depth_moves`, `adapters`, `norms`.
        prefix: put before each name in the messages (the caller's field
            names, e.g. `"evolve_"`).

    Raises:
        SearchError: naming the field and the value received.

    Example:
    >>> check_evolve_args({"candidates": 0}, prefix="evolve_")
    Traceback (most recent call last):
    ...
    keras_branch.errors.SearchError: `evolve_candidates` must be a positive int. Received: evolve_candidates=0
    """
    for key, (ok, rule) in _EVOLVE_ARG_RULES.items():
        if key in settings and not ok(settings[key]):
            raise SearchError(f"`{prefix}{key}` must be {rule}. "
                              f"Received: {prefix}{key}={settings[key]!r}")


def _int_at_least(least: int) -> Callable[[Any], bool]:
    return lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= least


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


#: `check_evolve_args`' rules, in the order they are checked: (test, what the message asks for).
_EVOLVE_ARG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scale": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    **{key: (_int_at_least(1), "a positive int")
       for key in ("passes", "candidates", "candidate_epochs", "finalists")},
    "final_epochs": (_int_at_least(0), "an int >= 0"),
    "final_learning_rate": (lambda v: v is None or (_finite(v) and v > 0),
                            "a finite number > 0 or None"),
    "final_batch_size": (lambda v: v is None or _int_at_least(1)(v), "a positive int or None"),
    "mutation_prob": (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    "clones": (lambda v: v in CLONE_RULES, f"one of {list(CLONE_RULES)}"),
    "depth_moves": (lambda v: v in DEPTH_MOVES, f"one of {list(DEPTH_MOVES)}"),
    "adapters": (lambda v: v in ADAPTER_STAGES, f"one of {list(ADAPTER_STAGES)}"),
    "norms": (lambda v: v in NORM_RULES, f"one of {list(NORM_RULES)}"),
    "final_start": (lambda v: v in FINAL_STARTS, f"one of {list(FINAL_STARTS)}"),
    "candidate_start": (lambda v: v in CANDIDATE_STARTS, f"one of {list(CANDIDATE_STARTS)}"),
    "candidate_hparams": (lambda v: v in CANDIDATE_HPARAMS, f"one of {list(CANDIDATE_HPARAMS)}"),
}
