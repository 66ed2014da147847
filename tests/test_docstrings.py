"""The docstring examples of the Learning-to-Branch and soft-ordering layers run, and say
what the code does."""

import doctest
import importlib

import keras
import numpy as np
import pytest

from keras_branch import Task, backbones, build_model
from keras_branch.data import planted_groups
from keras_branch.layers import branch_point, conv_block, soft_ordering

# `keras_branch.search.learn_to_branch` is the function; the module is imported by name.
LTB = importlib.import_module("keras_branch.search.learn_to_branch")

GLOBALS = {"keras": keras, "np": np, "Task": Task, "backbones": backbones,
           "build_model": build_model, "planted_groups": planted_groups}


@pytest.mark.parametrize("module", [LTB, branch_point, conv_block, soft_ordering],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, globs=dict(GLOBALS)) if t.examples]
    for test in tests:
        test.globs.update(vars(module))
        test.globs.update(GLOBALS)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module.__name__} failed"
    assert result.attempted > 0
