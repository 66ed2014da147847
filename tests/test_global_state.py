"""Library calls leave the caller's global random state alone, and a seed still repeats.

Randomness reaches keras_branch only through explicit seeds; the one bridge
to Python's `random` (Keras draws unseeded initialisers' seeds from it at
layer construction) is `keras_branch.seeding.seeded_layers`, which gives the
caller's state back.
"""

import random
from pathlib import Path

import numpy as np
import pytest

from keras_branch import TreeSpec, backbones
from keras_branch.data import planted_groups
from keras_branch.search import learn_to_branch, task_affinity
from keras_branch.seeding import derive_seed, seeded_layers
from keras_branch.training import fit_spec

LIBRARY = [Path(__file__).resolve().parents[1] / d for d in ("keras_branch", "zoo", "export")]


@pytest.fixture(scope="module")
def data():
    return planted_groups((2, 2), num_train=96, num_validation=32, num_test=32, dim=8, seed=0)


def _states():
    return random.getstate(), np.random.get_state()


def _assert_same_states(before, after):
    assert after[0] == before[0], "Python's global random state changed"
    np_before, np_after = before[1], after[1]
    assert np_after[0] == np_before[0]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:], "NumPy's global random state changed"


def _run_fit_spec(data, seed):
    spec = TreeSpec.shared(data.task_names, 2)
    run = fit_spec(spec, backbones.mlp(8, (16, 16)), data, epochs=2, seed=seed, verbose=0, log=None)
    return run.model.get_weights()


def _run_task_affinity(data, seed):
    aff = task_affinity(data, backbones.mlp(8, (16, 16)), probe_epochs=1, num_inputs=16, seed=seed)
    return [aff.values]


def _run_learn_to_branch(data, seed):
    result = learn_to_branch(data, backbones.mlp(8, (16, 16)), widths=[2, 4], epochs=2, seed=seed)
    return result.supernet.get_weights()


CALLS = {"fit_spec": _run_fit_spec, "task_affinity": _run_task_affinity,
         "learn_to_branch": _run_learn_to_branch}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_caller_state_untouched_and_seed_repeats(data, name):
    call = CALLS[name]
    random.seed(7)
    np.random.seed(7)
    before = _states()
    first = call(data, seed=3)
    _assert_same_states(before, _states())
    # Whatever the caller's state, the seed decides: disturb it, run again.
    random.seed(99)
    np.random.seed(99)
    second = call(data, seed=3)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = call(data, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other)), "the seed has no effect"


def test_seeded_layers_restores_state_on_error():
    random.seed(5)
    before = random.getstate()
    with pytest.raises(RuntimeError):
        with seeded_layers(1):
            random.random()
            raise RuntimeError("boom")
    assert random.getstate() == before


def test_derive_seed_is_stable_and_separates_streams():
    # Fixed values: a change in the derivation would change every seeded run.
    assert derive_seed(0, "probe", 3) == 995718614
    seeds = {derive_seed(s, key, i) for s in range(3) for key in ("a", "b") for i in range(5)}
    assert len(seeds) == 30
    assert all(0 <= s < 2**31 for s in seeds)


def test_library_code_never_seeds_globally():
    banned = ("set_random_seed(", "clear_session(", "matplotlib.use(", "np.random.seed(",
              "tf.random.set_seed(")
    found = []
    for folder in LIBRARY:
        for path in folder.rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(b in line for b in banned):
                    found.append(f"{path.relative_to(folder.parent)}:{number}: {line.strip()}")
    assert found == []
