"""The model zoo: entries build with their cards' parameter counts, cards match
their results, the CLI lists/shows/trains/evaluates, and a card's number reproduces."""

import json
import os
import subprocess

import numpy as np
import pytest

from keras_branch import zoo
from keras_branch.cli import main
from keras_branch.data import load_omniglot
from keras_branch.zoo.measure import SIMD_LEVELS, code_version
from keras_branch.zoo.registry import ZooEntry, ZooError

ENTRIES = zoo.list()
# CelebA cannot be downloaded here; every other entry carries measured results
MEASURED = [name for name in ENTRIES if name != "celeba-affinity"]
SMALL = "planted:train=200"
OMNIGLOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot",
                        "images_background_small1.zip")


def test_list_has_every_entry():
    assert set(ENTRIES) == {
        "celeba-affinity", "planted-affinity", "planted-ltb", "omniglot-independent",
        "omniglot-shared", "omniglot-soft-ordering", "omniglot-ltb", "omniglot-affinity-1.5x",
        "omniglot-affinity-2x", "omniglot-evolved", "omniglot-keras-hub-resnet"}
    assert zoo.list() == sorted(zoo.list())


@pytest.mark.parametrize("name", ENTRIES)
def test_get_builds_with_the_cards_parameter_count(name):
    entry = zoo.entry(name)
    model = zoo.get(name)
    assert model.count_params() == entry.count_params()
    if entry.spec is not None:  # trees and evolved systems count without building
        assert model.count_params() == entry.make_spec().count_params(
            entry.make_backbone(), entry.make_tasks())
    results = entry.results()
    if results is not None:
        assert model.count_params() == results["params"]
        assert f"| parameters | {results['params']:,} |" in entry.card()


@pytest.mark.parametrize("name", ENTRIES)
def test_card_is_generated_from_results(name):
    entry = zoo.entry(name)
    assert entry.card() == zoo.render_card(entry, entry.results())
    assert entry.reproduce in entry.card()


@pytest.mark.parametrize("name", MEASURED)
def test_entries_are_measured(name):
    results = zoo.entry(name).results()
    assert results is not None and results["seeds"] == [0, 1, 2]
    means = [results["per_seed"][str(s)]["mean"] for s in (0, 1, 2)]
    assert results["mean"] == pytest.approx(np.mean(means))
    assert results["std"] == pytest.approx(np.std(means, ddof=1))
    assert set(results["tflite_bytes"]) == {"tflite", "tflite-fp16", "tflite-int8"}
    assert results["litert_ms"] > 0 and results["flops"] > 0
    assert {"cpu", "cpu_cores", "gpu", "tensorflow", "keras", "date"} <= set(results["machine"])


def test_cli_list_shows_headline_numbers(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ENTRIES:
        entry = zoo.entry(name)
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert zoo.headline(entry.results()) in line
    assert "not measured" in next(l for l in out.splitlines() if l.startswith("celeba-affinity"))
    results = zoo.entry("planted-affinity").results()
    assert f"{results['mean']:.4f} +- {results['std']:.4f} mse" in out  # as measured


def test_cli_show_prints_the_card(capsys):
    assert main(["zoo", "show", "planted-affinity"]) == 0
    assert capsys.readouterr().out == zoo.entry("planted-affinity").card()


def test_unknown_name_lists_the_known_ones(capsys):
    with pytest.raises(ZooError, match="planted-affinity"):
        zoo.get("no-such-model")
    assert main(["zoo", "show", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no-such-model" in err and "planted-ltb" in err


def test_recipe_with_unknown_key_is_refused(capsys):
    with pytest.raises(ZooError, match=r"unknown recipe key\(s\) \['epoch'\].*'epochs'"):
        zoo.train("planted-ltb", SMALL, recipe={"epoch": 1}, log=None)
    assert main(["zoo", "train", "planted-ltb", "--data", SMALL, "--recipe", "warmup=3"]) == 2
    assert "warmup" in capsys.readouterr().err
    config = {**zoo.entry("planted-ltb").to_dict(), "recipe": {"epochs": 1, "momentum": 0.9}}
    with pytest.raises(ZooError, match="momentum"):
        ZooEntry.from_dict(config)


def test_malformed_entries_are_refused():
    good = zoo.entry("planted-ltb").to_dict()
    with pytest.raises(ZooError, match="missing field.*recipe"):
        ZooEntry.from_dict({k: v for k, v in good.items() if k != "recipe"})
    with pytest.raises(ZooError, match="unknown `kind` 'forest'"):
        ZooEntry.from_dict({**good, "kind": "forest"})
    with pytest.raises(ZooError, match=r"unknown field\(s\) \['colour'\]"):
        ZooEntry.from_dict({**good, "colour": "red"})


def test_data_of_another_kind_is_refused():
    with pytest.raises(ZooError, match="omniglot:x"):
        zoo.train("planted-ltb", "omniglot:x", log=None)
    with pytest.raises(ZooError, match="needs data"):
        zoo.train("celeba-affinity", None, log=None)


def test_bad_weights_are_refused(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        zoo.get("planted-ltb", weights=tmp_path / "missing.weights.h5")
    with pytest.raises(ZooError, match="must be a .weights.h5 or .keras"):
        zoo.get("planted-ltb", weights=tmp_path / "model.bin")
    other = zoo.get("planted-affinity")
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(ZooError, match="do not fit entry 'planted-ltb'"):
        zoo.get("planted-ltb", weights=path)


def test_train_save_reload_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["zoo", "train", "planted-ltb", "--data", SMALL, "--epochs", "1",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["epochs"] == 1 and config["entry"] == "planted-ltb"
    trained = zoo.get("planted-ltb", weights=out / "model.keras")
    x = np.random.default_rng(0).standard_normal((4, 100)).astype("float32")
    import keras

    saved = keras.saving.load_model(out / "model.keras")
    for key, value in saved(x).items():
        np.testing.assert_allclose(trained(x)[key], value, atol=1e-6)
    # a URL is fetched only when given explicitly; a file:// URL needs no network
    by_url = zoo.get("planted-ltb", weights=(out / "model.keras").as_uri())
    np.testing.assert_allclose(by_url(x)["g0_t0"], saved(x)["g0_t0"], atol=1e-6)

    capsys.readouterr()
    assert main(["zoo", "evaluate", "planted-ltb", "--model", str(out / "model.keras"),
                 "--data", SMALL]) == 0
    text = capsys.readouterr().out
    result = zoo.evaluate("planted-ltb", out / "model.keras", SMALL)
    assert f"this model: mean test mse {result['mean']:.4f}" in text
    card = zoo.entry("planted-ltb").results()
    assert f"card (planted-ltb): mean test mse {card['mean']:.4f}" in text


def test_measure_writes_results_and_card(tmp_path):
    results = zoo.measure("planted-ltb", SMALL, seeds=(0, 1), out=tmp_path,
                          recipe={"epochs": 1}, runs=5, log=None)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    entry = zoo.entry("planted-ltb")
    assert (tmp_path / "README.md").read_text() == zoo.render_card(entry, written)
    assert written["params"] == entry.count_params()
    assert written["recipe"]["epochs"] == 1 and written["recipe_overrides"] == {"epochs": 1}
    assert "recipe overrides" in (tmp_path / "README.md").read_text()
    machine = written["machine"]
    assert machine["simd"] in SIMD_LEVELS + (None,)
    if machine["simd"]:  # the card names what the CPU could run
        assert f"({machine['simd'].upper()})" in (tmp_path / "README.md").read_text()
    # the entry's own card is untouched by a measurement written elsewhere
    assert entry.card() == zoo.render_card(entry, entry.results())


def test_code_version_names_the_commit_and_changes(tmp_path):
    assert code_version(tmp_path / "file") is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("one")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert code_version(tmp_path / "a.txt") == commit
    (tmp_path / "b.txt").write_text("untracked")  # an untracked file changes no code
    assert code_version(tmp_path / "a.txt") == commit
    (tmp_path / "a.txt").write_text("two")
    assert code_version(tmp_path / "a.txt") == commit + "-dirty"


@pytest.mark.slow  # the default run's longest test (67 s on 2 quiet cores): it stays under 15 min
@pytest.mark.skipif(not os.path.isfile(OMNIGLOT), reason="needs ../shared/data/omniglot")
def test_measuring_an_evolved_entry_keeps_seed_zeros_spec(tmp_path):
    entry = zoo.entry("omniglot-evolved")
    before = open(os.path.join(entry.path, "entry.json")).read()
    short = {"root_epochs": 1, "passes": 1, "candidates": 1, "candidate_epochs": 1,
             "final_epochs": 1}
    # two training drawings per character: this test is about what gets written, not accuracy
    data = load_omniglot(OMNIGLOT, split_sizes=(2, 1, 1))
    results = zoo.measure("omniglot-evolved", data, seeds=(0,), out=tmp_path,
                          recipe=short, runs=3, log=None)
    assert results["spec"] != entry.spec  # a one-candidate evolution finds another system
    written = ZooEntry.from_dict(json.loads((tmp_path / "entry.json").read_text()))
    assert written.spec == results["spec"]
    assert written.count_params() == results["params"]
    assert (tmp_path / "README.md").read_text() == zoo.render_card(written, results)
    # the entry's own files are untouched by a measurement written elsewhere
    assert open(os.path.join(entry.path, "entry.json")).read() == before


def test_count_flops_matches_the_mlp_by_hand():
    model = zoo.get("planted-ltb")
    # stage 1: 2 blocks 100->32; stage 2: 3 blocks 32->4; stage 3: 8 blocks 4->8; 8 heads 8->1
    dense = lambda i, o: 2 * i * o + o  # noqa: E731
    expected = 2 * dense(100, 32) + 3 * dense(32, 4) + 8 * dense(4, 8) + 8 * dense(8, 1)
    assert zoo.count_flops(model) == expected
    assert zoo.entry("planted-ltb").results()["flops"] == expected


def _reproduces(name, tmp_path, data=None):
    """`zoo train` (seed 0, the card's recipe), saved, reloaded and exported to TFLite:
    each scores within 0.01 (one point) of the card's seed-0 mean test metric."""
    from keras_branch.export import export_model
    from keras_branch.zoo.cards import headline_metric, task_values

    entry = zoo.entry(name)
    card = entry.results()["per_seed"]["0"]["mean"]
    run = zoo.train(name, data, seed=0, out=tmp_path / "run", log=None)
    tasks = entry.make_tasks()
    trained = np.mean(list(task_values(run.metrics["test"], tasks, headline_metric(tasks)).values()))
    reloaded = zoo.evaluate(name, tmp_path / "run" / "model.keras", data)["mean"]
    exported = export_model(run.model, tmp_path / "export", formats=("tflite",))
    lite = zoo.evaluate(name, exported.files["tflite"], data)["mean"]
    assert reloaded == pytest.approx(trained, abs=1e-6)
    for value in (trained, reloaded, lite):
        assert abs(value - card) <= 0.01, (trained, reloaded, lite, card)


def test_planted_ltb_card_reproduces_within_one_point(tmp_path):
    _reproduces("planted-ltb", tmp_path)


@pytest.mark.slow
def test_planted_affinity_card_reproduces_within_one_point(tmp_path):
    _reproduces("planted-affinity", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(OMNIGLOT), reason="needs ../shared/data/omniglot")
def test_omniglot_affinity_card_reproduces_within_one_point(tmp_path):
    _reproduces("omniglot-affinity-2x", tmp_path, f"omniglot:{OMNIGLOT}")


def test_tflite_file_is_scored_like_the_keras_model(tmp_path, capsys):
    from keras_branch.export import export_model

    out = tmp_path / "run"
    zoo.train("planted-ltb", SMALL, seed=0, out=out, recipe={"epochs": 1}, log=None)
    keras_scores = zoo.evaluate("planted-ltb", out / "model.keras", SMALL)
    exported = export_model(zoo.get("planted-ltb", weights=out / "model.keras"), tmp_path / "export",
                            formats=("tflite",))
    lite_scores = zoo.evaluate("planted-ltb", exported.files["tflite"], SMALL, batch_size=7)
    for task, values in keras_scores["metrics"].items():
        assert lite_scores["metrics"][task]["n"] == values["n"]
        for metric in ("mse", "mae"):
            assert lite_scores["metrics"][task][metric] == pytest.approx(values[metric], rel=1e-5)
        # the loss is the mean over the split (Keras' evaluate averages batch means)
        assert lite_scores["metrics"][task]["loss"] == pytest.approx(values["mse"], rel=1e-5)
    with pytest.raises(ZooError, match="No TFLite file"):
        zoo.evaluate("planted-ltb", tmp_path / "missing.tflite", SMALL)
    capsys.readouterr()
    assert main(["zoo", "evaluate", "planted-ltb", "--model", exported.files["tflite"],
                 "--data", SMALL]) == 0
    assert f"this model: mean test mse {lite_scores['mean']:.4f}" in capsys.readouterr().out


def test_entries_are_shipped_as_package_data():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), "..", "setup.cfg"))
    patterns = cfg["options.package_data"]["keras_branch.zoo"]
    for pattern in ("*/entry.json", "*/results.json", "*/README.md"):
        assert pattern in patterns
