"""One result type for every search: spec, scores, artifacts, seconds, save."""

import json

import pytest

from keras_branch import OutputExistsError, TreeSpec
from keras_branch.search import SearchResult


def _result(files=None):
    spec = TreeSpec.from_partitions([[["a", "b"]], [["a"], ["b"]]])
    return SearchResult("affinity", spec, {"cost": 0.25, "params": 120}, {"front": [1, 2]},
                        {"search": 1.5}, files or {})


def test_fields_then_artifacts_then_scores_read_as_attributes():
    result = _result()
    assert result.method == "affinity"
    assert result.front == [1, 2] and result.cost == 0.25 and result.params == 120
    with pytest.raises(AttributeError, match=r"no field, artifact or score 'budget'.*"
                                             r"artifacts: \['front'\], scores: \['cost', 'params'\]"):
        result.budget


def test_save_writes_the_common_files_and_the_searchs_own(tmp_path):
    written = []

    def write(path):
        written.append(path)
        with open(path, "w") as f:
            f.write("own")

    result = _result({"own.txt": write})
    out = result.save(tmp_path / "search")
    assert sorted(p.name for p in (tmp_path / "search").iterdir()) == [
        ".keras-branch", "own.txt", "search.json", "tree.json"]
    assert TreeSpec.load(tmp_path / "search" / "tree.json") == result.spec
    assert json.loads((tmp_path / "search" / "search.json").read_text()) == {
        "method": "affinity", "spec": result.spec.to_dict(),
        "scores": {"cost": 0.25, "params": 120}, "seconds": {"search": 1.5}}
    assert (tmp_path / "search" / "own.txt").read_text() == "own"
    with pytest.raises(OutputExistsError):
        result.save(out)
    result.save(out, overwrite=True)
    assert len(written) == 2


def test_a_search_may_not_replace_the_common_files(tmp_path):
    with pytest.raises(ValueError, match=r"may not be named \['tree.json'\]"):
        _result({"tree.json": lambda path: None}).save(tmp_path / "s")
    assert not (tmp_path / "s").exists()
