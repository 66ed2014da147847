"""muNet's rules on hand-computed cases: parent selection, mutation rates, the score.

Frequencies are checked against probabilities worked out by hand from the
documented rules (never recomputed from the code's own output). A count of
`n` independent draws of an event of probability `p` is Binomial(n, p): its
frequency has standard deviation `sqrt(p (1 - p) / n)`. Each check allows
`Z = 4.5` standard deviations, so a correct implementation fails one check
with probability about 7e-6 (two-sided normal tail), and all of this file's
~50 checks together with probability below 4e-4 (union bound), whatever the
seed; the seeds are fixed, so the outcome is reproducible.
"""

import math

import keras
import numpy as np
import pytest

from keras_branch import Task, backbones
from keras_branch.search.evolution import (
    DEFAULT_HPARAMS,
    DRAWS_PER_SLOT,
    EvolvedSystem,
    TaskPath,
    allowed_depths,
    draw_child,
    mutate,
    score,
    select_parent,
    trim_to_fit,
)

Z = 4.5


def _tolerance(p: float, n: int) -> float:
    """Z standard deviations of the frequency of an event of probability p in n draws."""
    return Z * math.sqrt(p * (1 - p) / n)


def _assert_frequency(count: int, n: int, p: float, what: str) -> None:
    assert abs(count / n - p) <= _tolerance(p, n), f"{what}: {count}/{n} = {count / n:.4f}, want {p}"


# === Parent selection ===


def _choose(population, n, seed):
    rng = np.random.default_rng(seed)
    counts = {e["id"]: 0 for e in population}
    for _ in range(n):
        counts[select_parent(population, rng)["id"]] += 1
    return counts


def test_parent_selection_follows_the_acceptance_walk():
    # Ranked by score: a (1 child), b (2 children), c (3 children), accepted
    # with probability 0.5, 0.25, 0.125 in turn; none accepted with
    # 0.5 * 0.75 * 0.875 = 0.328125, then one of the three uniformly (0.109375 each).
    population = [
        {"id": "c", "score": 0.2, "children": 3},
        {"id": "a", "score": 0.9, "children": 1},
        {"id": "b", "score": 0.5, "children": 2},
    ]
    want = {
        "a": 0.5 + 0.109375,                 # 0.609375
        "b": 0.5 * 0.25 + 0.109375,          # 0.234375
        "c": 0.5 * 0.75 * 0.125 + 0.109375,  # 0.15625
    }
    assert sum(want.values()) == 1.0
    n = 20_000
    counts = _choose(population, n, seed=0)
    for name, p in want.items():
        _assert_frequency(counts[name], n, p, name)
    # A rule "probability proportional to 0.5 ** children" would give a
    # 4/7 = 0.5714, which the tolerance (about 0.016 here) excludes.
    assert abs(counts["a"] / n - 4 / 7) > _tolerance(4 / 7, n)
    assert [e["children"] for e in population] == [3, 1, 2]  # not modified


def test_unscored_parents_come_last_in_random_order():
    # a is scored (1 child: accepted with 0.5); x and y are not scored yet and
    # have no child, so whichever of them the shuffle puts first is accepted:
    # 0.5 * 0.5 = 0.25 each.
    population = [
        {"id": "x", "score": None, "children": 0},
        {"id": "a", "score": 0.1, "children": 1},
        {"id": "y", "score": None, "children": 0},
    ]
    n = 20_000
    counts = _choose(population, n, seed=1)
    for name, p in {"a": 0.5, "x": 0.25, "y": 0.25}.items():
        _assert_frequency(counts[name], n, p, name)


def test_a_parent_without_children_is_always_taken_first():
    population = [{"id": "a", "score": 0.9, "children": 0},
                  {"id": "b", "score": 0.1, "children": 0}]
    counts = _choose(population, 500, seed=2)
    assert counts == {"a": 500, "b": 0}


# === Mutation rates ===


def _sample_mutations(parent, num_stages, prob, n, seed, clones="layer", depths=None, adapters="any"):
    rng = np.random.default_rng(seed)  # muNet's rules unless told otherwise
    return [mutate(parent, num_stages, rng, prob, clones, depths, adapters) for _ in range(n)]


def test_mutation_rates_from_the_root():  # muNet's per-layer clones
    p, n = 0.3, 20_000
    parent = TaskPath.root(4)
    samples = _sample_mutations(parent, 4, p, n, seed=3)
    done = [set(d) for _, d in samples]
    for stage in range(1, 5):
        _assert_frequency(sum(f"clone(stage {stage})" in d for d in done), n, p, f"clone {stage}")
        _assert_frequency(sum(f"adapter(stage {stage}, 16)" in d for d in done), n, p,
                          f"adapter {stage}")
    # From the full depth the only step is down.
    _assert_frequency(sum("depth(4->3)" in d for d in done), n, p, "depth down")
    assert not any("depth(4->5)" in d for d in done)
    # One hyperparameter of three moves with probability p: each p / 3, and
    # from the middle of its list each direction p / 6.
    moves = {
        "learning_rate": ("learning_rate(0.003->0.001)", "learning_rate(0.003->0.01)"),
        "adapter_dim": ("adapter_dim(16->8)", "adapter_dim(16->32)"),
        "batch_size": ("batch_size(32->16)", "batch_size(32->64)"),
    }
    for name, (down, up) in moves.items():
        moved = sum(child.hparams[name] != DEFAULT_HPARAMS[name] for child, _ in samples)
        _assert_frequency(moved, n, p / 3, name)
        _assert_frequency(sum(down in d for d in done), n, p / 6, down)
        _assert_frequency(sum(up in d for d in done), n, p / 6, up)
    # Ten independent draws (4 clones, 4 adapters, depth, hyperparameter).
    _assert_frequency(sum(not d for d in done), n, 0.7 ** 10, "no mutation")
    # Stage 4's clone survives only if the depth does not drop: p * (1 - p).
    _assert_frequency(sum(child.route[3] < 0 for child, _ in samples), n, p * (1 - p),
                      "stage-4 clone kept")
    assert parent == TaskPath.root(4)


def test_mutation_rates_from_a_shallow_path_with_an_adapter():
    # Depth 2 of 4, stage 2 already adapted: clones of stages 1-2 at p, an
    # adapter only at stage 1, the depth up or down at p / 2 each.
    p, n = 0.2, 20_000
    parent = TaskPath([0, 3, 0, 0], 2, [0, 8, 0, 0],
                      {"learning_rate": 1e-2, "adapter_dim": 4, "batch_size": 64})
    samples = _sample_mutations(parent, 4, p, n, seed=4)
    done = [set(d) for _, d in samples]
    _assert_frequency(sum("clone(stage 1)" in d for d in done), n, p, "clone 1")
    _assert_frequency(sum("clone(stage 2)" in d for d in done), n, p, "clone 2")
    assert not any(x.startswith(("clone(stage 3", "clone(stage 4")) for d in done for x in d)
    _assert_frequency(sum("adapter(stage 1, 4)" in d for d in done), n, p, "adapter 1")
    assert not any(x.startswith("adapter(stage 2") for d in done for x in d)
    _assert_frequency(sum("depth(2->1)" in d for d in done), n, p / 2, "depth down")
    _assert_frequency(sum("depth(2->3)" in d for d in done), n, p / 2, "depth up")
    # Every hyperparameter sits at an end of its list: a move always goes inwards.
    for move in ("learning_rate(0.01->0.003)", "adapter_dim(4->8)", "batch_size(64->32)"):
        _assert_frequency(sum(move in d for d in done), n, p / 3, move)
    cloned = [child for child, d in samples if "clone(stage 2)" in d and "depth(2->1)" not in d]
    assert cloned and all(child.route[1] == -1 - 3 for child in cloned)  # marks block 3's clone


def test_suffix_clones_make_the_trained_stages_a_suffix_with_the_same_draws():
    p, n = 0.3, 20_000
    parent = TaskPath.root(4)
    suffix = _sample_mutations(parent, 4, p, n, seed=5, clones="suffix")
    layer = _sample_mutations(parent, 4, p, n, seed=5, clones="layer")
    for (child, done), (twin, twin_done) in zip(suffix, layer):
        cloned = [d for d in range(child.depth) if child.route[d] < 0]
        # Every stage from the lowest clone up to the depth is cloned ...
        assert cloned == list(range(cloned[0], child.depth)) if cloned else True
        # ... and the draws are the layer rule's: same depth, adapters,
        # hyperparameters, and the drawn clones are a subset.
        assert (child.depth, child.adapters, child.hparams) == (twin.depth, twin.adapters,
                                                                twin.hparams)
        assert [x for x in done if not x.endswith("suffix)")] == twin_done
        assert {d for d in range(twin.depth) if twin.route[d] < 0} <= set(cloned)
    # With the depth unchanged, stage k is cloned when any of stages 1..k is
    # drawn: 1 - (1 - p) ** k.
    kept = [child for child, done in suffix if child.depth == 4]
    for k in range(1, 5):
        _assert_frequency(sum(child.route[k - 1] < 0 for child in kept), len(kept),
                          1 - (1 - p) ** k, f"stage {k} cloned (suffix)")
    with pytest.raises(ValueError, match="`clones` must be one of .*Received: clones='tree'"):
        mutate(parent, 4, np.random.default_rng(0), p, clones="tree")


def test_held_hyperparameters_never_move_and_the_others_keep_their_rate():
    # `hparams` names what may move; the move still draws among all three, so
    # `adapter_dim` moves with probability p / 3 and every other draw is the same.
    p, n = 0.3, 20_000
    parent = TaskPath.root(4)
    rng, twin_rng = np.random.default_rng(6), np.random.default_rng(6)
    held, free = [], []
    for _ in range(n):
        held.append(mutate(parent, 4, rng, p, hparams=("adapter_dim",)))
        free.append(mutate(parent, 4, twin_rng, p))
    assert all(child.hparams["learning_rate"] == 3e-3 and child.hparams["batch_size"] == 32
               for child, _ in held)
    _assert_frequency(sum(child.hparams["adapter_dim"] != 16 for child, _ in held), n, p / 3,
                      "adapter_dim")
    for (child, done), (twin, twin_done) in zip(held, free):
        assert (child.route, child.depth, child.adapters) == (twin.route, twin.depth, twin.adapters)
        assert done == [x for x in twin_done if not x.startswith(("learning_rate(", "batch_size("))]
    with pytest.raises(ValueError, match=r"`hparams` must name hyperparameters of "
                                         r"\['adapter_dim', 'batch_size', 'learning_rate'\]\. "
                                         r"Received: hparams=\['lr'\]"):
        mutate(parent, 4, np.random.default_rng(0), p, hparams=["lr"])


def test_mutation_prob_zero_and_one():
    parent = TaskPath.root(3)
    assert mutate(parent, 3, np.random.default_rng(0), 0.0) == (parent, [])
    child, done = mutate(parent, 3, np.random.default_rng(0), 1.0, adapters="any")
    assert sum(x.startswith("clone") for x in done) == 3
    assert sum(x.startswith("adapter") for x in done) == 3
    assert child.depth == 2 and len(done) == 3 + 3 + 1 + 1
    # Between stages: the adapter after stage 2, now the last, is not inserted.
    child, done = mutate(parent, 3, np.random.default_rng(0), 1.0)
    assert child.depth == 2 and child.adapters == [16, 0, 0]
    assert [x for x in done if x.startswith("adapter")] == ["adapter(stage 1, 16)",
                                                            "adapter(stage 3, 16)"]


def test_path_is_a_deprecated_alias_of_task_path():
    import keras_branch.search as search

    with pytest.warns(DeprecationWarning, match="TaskPath"):
        assert search.Path is TaskPath
    assert "Path" not in search.__all__ and callable(search.evolve)


# === The score ===


def test_score_formula_on_numbers():
    # 0.8 * 0.5 ** (3000 / 1000) = 0.8 / 8
    assert score(0.8, 3000, 1000, 0.5) == pytest.approx(0.1, rel=1e-12)
    assert score(0.8, 1234, 1000, 1.0) == 0.8  # s = 1: size does not count
    # 0.6 * 0.9 ** 2 = 0.486
    assert score(0.6, 500, 250, 0.9) == pytest.approx(0.486, rel=1e-12)


def _two_stage_system():
    # s1: Dense 7 -> 8 (7 * 8 + 8 = 64 params), s2: Dense 8 -> 4 (8 * 4 + 4 = 36):
    # the root has 100 parameters.
    inputs = keras.Input((7,))
    x = keras.layers.Dense(8, name="s1")(inputs)
    x = keras.layers.Dense(4, name="s2")(x)
    net = keras.Model(inputs, x)
    system = EvolvedSystem.from_root(backbones.from_keras_model(net, ["s1", "s2"]))
    # Task a (binary) on the root path: its head reads 4 features (4 * 1 + 1).
    task_a = Task("a", "binary")
    system.install(task_a, TaskPath.root(2),
                   {"head_a": [np.zeros((4, 1), "float32"), np.zeros((1,), "float32")]},
                   {"quality": 0.9, "params": 105.0, "score": 0.0})
    return system


@pytest.mark.parametrize("path, accounted, want", [
    # The root path, shared with a and the root itself (which the system
    # keeps): 64 / 3 + 36 / 3 + head (4 + 1) * 3 = 145 / 3, score
    # 0.8 * 0.5 ** (145 / 300).
    (TaskPath.root(2), 145 / 3, 0.5722583729741),
    # Its own clone of stage 2: 64 / 3 + 36 + 15 = 217 / 3, score 0.8 * 0.5 ** (217 / 300).
    (TaskPath([0, 1], 2, [0, 0], dict(DEFAULT_HPARAMS)), 217 / 3, 0.4845570947760),
    # Depth 1 plus an adapter of size 2 on 8 channels (LayerNorm 2 * 8, Dense
    # 8 -> 2: 18, Dense 2 -> 8: 24, so 58); head reads 8 features: (8 + 1) * 3.
    # 64 / 3 + 58 + 27 = 319 / 3, score 0.8 * 0.5 ** (319 / 300).
    (TaskPath([0, 0], 1, [2, 0], dict(DEFAULT_HPARAMS)), 319 / 3, 0.3828201228296),
])
def test_score_of_a_path_on_a_hand_counted_system(path, accounted, want):
    system = _two_stage_system()
    assert system.root_params == 100
    task_b = Task("b", "multiclass", classes=3)
    params = system.accounted_params(task_b, path)
    assert params == pytest.approx(accounted, rel=1e-12)
    assert score(0.8, params, system.root_params, 0.5) == pytest.approx(want, rel=1e-10)


def test_a_diverged_candidate_has_the_worst_quality_not_nan():
    from keras_branch.search.evolution.selection import quality

    # NaN would reach the score, the search state and evolution.json (all strict JSON).
    assert quality(Task("r", "regression"), {"mse": math.nan}) == 0.0
    assert quality(Task("r", "regression"), {"mse": math.inf}) == 0.0
    assert quality(Task("r", "regression"), {"mse": 1.0}) == 0.5


# === Depth moves ===


def test_allowed_depths_keep_the_head_input_size():
    # convnet4 on 32x32 halves the resolution per stage and flattens: 64
    # filters give heads of 16*16*64, 8*8*64, 4*4*64, 2*2*64 inputs.
    conv = backbones.convnet4((32, 32, 1), filters=64)
    sizes = [conv.feature_size(d) for d in range(1, 5)]
    assert sizes == [16384, 4096, 1024, 256]
    assert allowed_depths(sizes) == [4]
    assert allowed_depths(sizes, "any") == [1, 2, 3, 4]
    mlp = backbones.mlp(8, widths=(16, 32, 16))
    assert allowed_depths([mlp.feature_size(d) for d in range(1, 4)]) == [1, 3]
    with pytest.raises(ValueError, match="`depth_moves` must be one of .*Received: depth_moves='all'"):
        allowed_depths(sizes, "all")


def test_restricted_depth_moves_reflect_or_drop_with_the_same_draws():
    p, n = 0.3, 20_000
    # From the full depth with only the full depth allowed: the depth never
    # moves, and every other draw is the unrestricted one's.
    root = TaskPath.root(4)
    fixed = _sample_mutations(root, 4, p, n, seed=6, depths=[4])
    free = _sample_mutations(root, 4, p, n, seed=6)
    assert all(child.depth == 4 for child, _ in fixed)
    for (child, done), (twin, twin_done) in zip(fixed, free):
        assert done == [x for x in twin_done if not x.startswith("depth")]
        assert child.hparams == twin.hparams
        if twin.depth == 4:
            assert child == twin
    # From depth 2 of 4 with depths {2, 3}: a drawn step down is reflected
    # up, so the depth rises with probability p (not p / 2) and never falls.
    parent = TaskPath([0, 0, 0, 0], 2, [0, 0, 0, 0], dict(DEFAULT_HPARAMS))
    done = [set(d) for _, d in _sample_mutations(parent, 4, p, n, seed=7, depths=[2, 3])]
    _assert_frequency(sum("depth(2->3)" in d for d in done), n, p, "depth up, reflected")
    assert not any("depth(2->1)" in d for d in done)


# === Adapters between stages ===


def test_adapters_between_stages_skip_the_last_with_the_same_draws():
    p, n = 0.3, 20_000
    root = TaskPath.root(4)
    between = _sample_mutations(root, 4, p, n, seed=8, depths=[4], adapters="between")
    anywhere = _sample_mutations(root, 4, p, n, seed=8, depths=[4])
    for (child, done), (twin, twin_done) in zip(between, anywhere):
        # Every draw is the same; only the adapter after stage 4 is missing.
        assert done == [x for x in twin_done if x != "adapter(stage 4, 16)"]
        assert child.adapters == twin.adapters[:3] + [0]
        assert (child.route, child.depth, child.hparams) == (twin.route, twin.depth, twin.hparams)
    for stage in (1, 2, 3):  # the other stages keep their rate
        _assert_frequency(sum(f"adapter(stage {stage}, 16)" in d for _, d in between), n, p,
                          f"adapter {stage}")
    assert sum("adapter(stage 4, 16)" in d for _, d in anywhere) > 0
    # A parent with an adapter before its head (from an earlier system) loses it,
    # named in the description, so the child is not its parent unchanged.
    parent = TaskPath([0, 0, 0, 1], 4, [0, 16, 0, 16], dict(DEFAULT_HPARAMS))
    child, done = mutate(parent, 4, np.random.default_rng(0), prob=0.0)
    assert (child.adapters, done) == ([0, 16, 0, 0], ["drop adapter(stage 4, last)"])
    assert mutate(parent, 4, np.random.default_rng(0), prob=0.0, adapters="any") == (parent, [])
    # A depth move down makes stage 3 the last: its adapter goes with it.
    parent = TaskPath([0, 0, 0, 0], 4, [0, 0, 8, 0], dict(DEFAULT_HPARAMS))
    moved = [(c, d) for c, d in _sample_mutations(parent, 4, p, 2_000, seed=9, depths=[3, 4],
                                                  adapters="between") if c.depth == 3]
    assert moved and all(c.adapters == [c.adapters[0], c.adapters[1], 0, 0] for c, _ in moved)
    assert all("drop adapter(stage 3, last)" in d for _, d in moved)
    with pytest.raises(ValueError, match=r"`adapters` must be one of \['between', 'any'\]\. "
                                         r"Received: adapters='last'"):
        mutate(root, 4, np.random.default_rng(0), p, adapters="last")


# === Children that fit the budget ===


def test_trim_drops_adapters_on_cloned_stages_deepest_first_until_the_child_fits():
    system = _two_stage_system()
    task_b = Task("b", "multiclass", classes=3)
    # b clones stage 2 (36) and keeps adapters of size 2 on both stages: on
    # stage 1's 8 channels 58 (as above), on stage 2's 4 channels LayerNorm
    # 2 * 4, Dense 4 -> 2: 10, Dense 2 -> 4: 12, so 30; its head reads 4
    # features: 15. Without b the system holds the root (100) and a's head (5).
    base = 105

    def child():
        return TaskPath([0, -1], 2, [2, 2], dict(DEFAULT_HPARAMS))

    assert system.params_with(task_b, child()) - base == 36 + 58 + 30 + 15
    # Room for all of it: left as drawn.
    path, done = child(), ["clone(stage 2)"]
    assert trim_to_fit(system, task_b, path, done, (base, 139)) == 139
    assert path.adapters == [2, 2] and done == ["clone(stage 2)"]
    # One short: the cloned stage's adapter goes, the frozen stage's stays.
    path, done = child(), ["clone(stage 2)"]
    assert trim_to_fit(system, task_b, path, done, (base, 138)) == 139 - 30
    assert path.adapters == [2, 0] and done == ["clone(stage 2)", "drop adapter(stage 2)"]
    # Still over without it: the stage-1 adapter (on a frozen block) is kept.
    path, done = child(), []
    assert trim_to_fit(system, task_b, path, done, (base, 100)) == 109
    assert path.adapters == [2, 0]
    # Both stages cloned (64 + 36): both adapters may go, deepest first.
    path, done = TaskPath([-1, -1], 2, [2, 2], dict(DEFAULT_HPARAMS)), []
    assert trim_to_fit(system, task_b, path, done, (base, 100 + 15)) == 100 + 15
    assert done == ["drop adapter(stage 2)", "drop adapter(stage 1)"]


def test_a_slot_draws_again_until_its_child_fits():
    system = _two_stage_system()
    task_b = Task("b", "multiclass", classes=3)
    root = {"id": "root", "path": TaskPath.root(2).to_dict(), "score": None, "children": 0}
    # Only b's head (15) fits: a child fits when it draws no clone and no
    # adapter, 4 independent events of probability p each (per-layer clones,
    # adapters after any stage, depth fixed), so with probability (1 - p) ** 4 = 1 / 16.
    p, n, part = 0.5, 4000, (105, 15)
    fit = (1 - p) ** 4
    draws, unfit = [], 0
    for seed in range(n):
        parent, path, done, added, refused = draw_child(
            system, task_b, [root], np.random.default_rng(seed), 2, p, "layer", [2], part, "any")
        assert parent is root and all(r["added"] > 15 for r in refused)
        if added <= 15:
            assert path.route == [0, 0] and path.adapters == [0, 0] and added == 15
            assert all(m.startswith(("learning_rate", "adapter_dim", "batch_size")) for m in done)
            draws.append(len(refused) + 1)
        else:  # every draw over: the last is returned, the others listed
            assert len(refused) == DRAWS_PER_SLOT - 1
            unfit += 1
    _assert_frequency(sum(k == 1 for k in draws), n, fit, "fits on the first draw")
    _assert_frequency(sum(k == 2 for k in draws), n, (1 - fit) * fit, "fits on the second")
    _assert_frequency(unfit, n, (1 - fit) ** DRAWS_PER_SLOT, "never fits")
    # Without a budget: one draw, the one `select_parent` and `mutate` make.
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    _, path, done, added, refused = draw_child(system, task_b, [root], rng, 2, p, "layer",
                                               [2], None)
    select_parent([root], twin)  # adapters between stages by default, in both
    assert (path, done, added, refused) == (*mutate(TaskPath.root(2), 2, twin, p, "layer", [2]),
                                            None, [])
