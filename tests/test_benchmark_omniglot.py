"""Smoke test of benchmarks/omniglot.py on a 2-alphabet subset with tiny epochs."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "omniglot.py"


@pytest.fixture(scope="module")
def omniglot_benchmark():
    return load_script(BENCHMARK, "omniglot_benchmark")


@pytest.mark.slow  # about 2 minutes on 2 cores; the methods have their own tests
def test_benchmark_runs_every_method_on_two_alphabets(omniglot_benchmark, omniglot_zip, tmp_path,
                                                      capsys):
    rc = omniglot_benchmark.main([
        "--data", str(omniglot_zip), "--alphabets", "Greek,Latin", "--seeds", "0",
        "--methods", "independent,shared,parallel_ordering,soft_ordering,ltb,affinity",
        "--epochs", "1", "--probe-epochs", "1", "--ltb-epochs", "1", "--image-size", "16",
        "--filters", "4", "--latency-runs", "3", "--out", str(tmp_path),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "omniglot.json").read_text())
    assert (tmp_path / "omniglot_pareto.png").stat().st_size > 1000
    assert not (tmp_path / "omniglot.partial.json").exists()
    methods = result["methods"]
    assert list(methods) == ["independent", "shared", "parallel_ordering", "soft_ordering", "ltb",
                             "ltb_1.5x", "ltb_2x", "affinity_1.5x", "affinity_2x"]
    assert (tmp_path / "omniglot_mixing.png").stat().st_size > 1000
    # Parallel ordering of the pool is convnet4 itself; soft ordering adds T x D x D logits.
    assert methods["parallel_ordering"]["params"] == methods["shared"]["params"]
    assert methods["soft_ordering"]["params"] > methods["parallel_ordering"]["params"]
    mixing = methods["soft_ordering"]["extra"][0]["mixing_weights"]
    assert set(mixing) == {"Greek", "Latin"}
    np.testing.assert_allclose(np.sum(mixing["Greek"], axis=-1), 1.0, rtol=1e-5)
    assert result["tasks"] == ["Greek", "Latin"]
    assert result["recipe"]["augment"] == {"shift": 0.1, "rotation": 10.0, "zoom": 0.1}
    for name, row in methods.items():
        assert 0.0 <= row["mean_error"] <= 1.0
        assert set(row["mean_task_errors"]) == {"Greek", "Latin"}
        assert row["params"] > 0 and row["flops"] > 0 and row["litert_ms"] > 0
        assert f"| {name} |" in out
    # Independent networks: each task's own network, parameters summed.
    assert methods["independent"]["params"] > methods["shared"]["params"]
    assert methods["independent"]["flops"] > methods["shared"]["flops"]
    for name in ("ltb", "ltb_1.5x", "ltb_2x", "affinity_1.5x", "affinity_2x"):
        spec = methods[name]["specs"][0]
        assert sorted(spec["tasks"]) == ["Greek", "Latin"]
    for budget in (1.5, 2):
        for method in ("affinity", "ltb"):
            assert methods[f"{method}_{budget}x"]["params"] <= budget * methods["shared"]["params"]


def test_benchmark_main_writes_table_plots_and_json(omniglot_benchmark, omniglot_zip, tmp_path,
                                                   capsys):
    """The default run's share of the smoke test above: main end to end with two methods."""
    rc = omniglot_benchmark.main([
        "--data", str(omniglot_zip), "--alphabets", "Greek,Latin", "--seeds", "0",
        "--methods", "shared,soft_ordering", "--epochs", "1", "--image-size", "16",
        "--filters", "4", "--latency-runs", "2", "--out", str(tmp_path),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "omniglot.json").read_text())
    methods = result["methods"]
    assert list(methods) == ["shared", "soft_ordering"]
    assert result["machine"]["cpu_cores"] >= 1  # results move with the CPU: it is recorded
    for name in ("omniglot_pareto.png", "omniglot_mixing.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert not (tmp_path / "omniglot.partial.json").exists()
    for name, row in methods.items():
        assert f"| {name} |" in out
        assert row["params"] > 0 and row["flops"] > 0 and row["litert_ms"] > 0


def test_finished_runs_survive_a_crash_in_a_later_method(omniglot_benchmark, omniglot_zip,
                                                        tmp_path, monkeypatch):
    def crash(data, backbone, recipe, seed):
        raise RuntimeError("out of memory in the next method")

    real = omniglot_benchmark.resolve_methods
    monkeypatch.setattr(omniglot_benchmark, "resolve_methods",
                        lambda names, budgets: {**real(["shared"], budgets), "crash": crash})
    with pytest.raises(RuntimeError, match="out of memory"):
        omniglot_benchmark.run(str(omniglot_zip), seeds=[0], alphabets=["Greek", "Latin"],
                               recipe={"epochs": 1, "image_size": 16, "filters": 4},
                               out=str(tmp_path), latency_runs=0, log=lambda line: None)
    assert not (tmp_path / "omniglot.json").exists()
    partial = json.loads((tmp_path / "omniglot.partial.json").read_text())
    assert partial["tasks"] == ["Greek", "Latin"]
    assert len(partial["runs"]["shared"]["errors"]) == 1
    assert 0.0 <= partial["runs"]["shared"]["errors"][0] <= 1.0
    assert partial["runs"]["crash"]["errors"] == []


def test_benchmark_refuses_bad_seeds_before_loading_anything(omniglot_benchmark, tmp_path):
    missing = str(tmp_path / "no-such.zip")
    with pytest.raises(SystemExit, match=r"--seeds must be comma-separated integers\. Received: '0,a'"):
        omniglot_benchmark.main(["--data", missing, "--seeds", "0,a"])
    with pytest.raises(ValueError, match=r"`seeds` must name at least one seed\. Received: seeds=\[\]"):
        omniglot_benchmark.run(missing, seeds=[])


def test_benchmark_refuses_bad_evolution_settings_before_training(omniglot_benchmark, tmp_path):
    missing = str(tmp_path / "no-such.zip")
    with pytest.raises(ValueError, match=r"`evolve_candidates` must be a positive int\. "
                                         r"Received: evolve_candidates=0"):
        omniglot_benchmark.main(["--data", missing, "--evolve-candidates", "0"])
    with pytest.raises(ValueError, match=r"`evolve_final_epochs` must be an int >= 0\. "
                                         r"Received: evolve_final_epochs=-1"):
        omniglot_benchmark.main(["--data", missing, "--evolve-final-epochs", "-1"])
    with pytest.raises(ValueError, match=r"`evolve_finalists` must be a positive int\. "
                                         r"Received: evolve_finalists=0"):
        omniglot_benchmark.main(["--data", missing, "--evolve-finalists", "0"])
    with pytest.raises(ValueError, match=r"`evolve_depth_moves` must be one of \['shape', 'any'\]\. "
                                         r"Received: evolve_depth_moves='all'"):
        omniglot_benchmark.make_recipe(evolve_depth_moves="all")
    with pytest.raises(ValueError, match=r"`evolve_final_start` must be one of \['inherited', 'root'\]\. "
                                         r"Received: evolve_final_start='parent'"):
        omniglot_benchmark.make_recipe(evolve_final_start="parent")
    with pytest.raises(ValueError, match=r"`evolve_candidate_start` must be one of "
                                         r"\['inherited', 'equal'\]\. "
                                         r"Received: evolve_candidate_start='root'"):
        omniglot_benchmark.make_recipe(evolve_candidate_start="root")
    with pytest.raises(ValueError, match=r"`evolve_adapters` must be one of \['between', 'any'\]\. "
                                         r"Received: evolve_adapters='last'"):
        omniglot_benchmark.make_recipe(evolve_adapters="last")
    with pytest.raises(ValueError, match=r"`evolve_final_batch_size` must be a positive int or None\. "
                                         r"Received: evolve_final_batch_size=0"):
        omniglot_benchmark.main(["--data", missing, "--evolve-final-batch-size", "0"])
    with pytest.raises(SystemExit):  # argparse: neither an int nor none
        omniglot_benchmark.main(["--data", missing, "--evolve-final-batch-size", "big"])
    with pytest.raises(ValueError, match=r"`evolve_scale` must be in \(0, 1\]\. Received: evolve_scale=0"):
        omniglot_benchmark.make_recipe(evolve_scale=0)
    with pytest.raises(ValueError, match=r"`evolve_budget` must be a fraction in \(0, 1\] .*"
                                         r"Received: evolve_budget=1\.5"):
        omniglot_benchmark.main(["--data", missing, "--evolve-budget", "1.5"])
    import keras_branch as kb
    recipe = omniglot_benchmark.make_recipe(evolve_candidates=24, evolve_final_epochs=160,
                                            evolve_finalists=2, evolve_final_start="root",
                                            evolve_candidate_start="equal")
    tasks = [kb.Task("a", "multiclass", classes=3), kb.Task("b", "multiclass", classes=5)]
    data = type("Data", (), {"task_names": ["a", "b"], "tasks": tasks})()
    bb = kb.backbones.convnet4((16, 16, 1), filters=16)
    kwargs = omniglot_benchmark.evolve_kwargs(recipe, 0, data, bb)
    assert (kwargs["depth_moves"], kwargs["candidates"], kwargs["final_epochs"],
            kwargs["finalists"], kwargs["final_start"]) == ("shape", 24, 160, 2, "root")
    assert kwargs["candidate_start"] == "equal"
    defaults = omniglot_benchmark.evolve_kwargs(omniglot_benchmark.make_recipe(), 0, data, bb)
    assert (defaults["final_start"], defaults["candidate_start"]) == ("inherited", "equal")
    assert defaults["adapters"] == "between"
    # The final training at the recipe's rate and batch; None: each path's own.
    assert (defaults["final_learning_rate"], defaults["final_batch_size"]) == (0.003, 32)
    assert omniglot_benchmark.evolve_kwargs(omniglot_benchmark.make_recipe(
        evolve_final_batch_size=None), 0, data, bb)["final_batch_size"] is None
    assert omniglot_benchmark.evolve_kwargs(omniglot_benchmark.make_recipe(evolve_adapters="any"),
                                            0, data, bb)["adapters"] == "any"
    # Candidates train at the final training's rate and batch unless told "own";
    # task-owned norms on shared blocks only on request.
    for name, default, other, choices in (("candidate_hparams", "final", "own", r"'own', 'final'"),
                                          ("norms", "frozen", "task", r"'frozen', 'task'")):
        assert defaults[name] == default
        assert omniglot_benchmark.evolve_kwargs(omniglot_benchmark.make_recipe(
            **{f"evolve_{name}": other}), 0, data, bb)[name] == other
        with pytest.raises(ValueError, match=rf"`evolve_{name}` must be one of \[{choices}\]\. "
                                             rf"Received: evolve_{name}='x'"):
            omniglot_benchmark.make_recipe(**{f"evolve_{name}": "x"})
    # 60% of the fine-tuned system: one convnet4 (16 filters, 16x16) and head per task.
    one = bb.stem_params() + sum(bb.stage_params(d) for d in range(4))
    head = lambda t: (bb.feature_size() + 1) * t.units  # noqa: E731
    assert kwargs["budget"] == int(0.6 * (2 * one + head(tasks[0]) + head(tasks[1])))
    with pytest.raises(ValueError, match=r"pass `data` and `backbone`, or set evolve_budget=None"):
        omniglot_benchmark.evolve_kwargs(recipe, 0)
    unbudgeted = omniglot_benchmark.make_recipe(evolve_budget=None)
    assert omniglot_benchmark.evolve_kwargs(unbudgeted, 0)["budget"] is None


def test_std_over_seeds_is_the_sample_std_the_cards_use():
    from keras_branch.zoo.measure import mean_and_std, summarize

    assert mean_and_std([0.1, 0.2, 0.6]) == pytest.approx((0.3, np.std([0.1, 0.2, 0.6], ddof=1)))
    assert mean_and_std([0.25]) == (0.25, 0.0)
    assert summarize({"0": {"mean": 0.1}, "1": {"mean": 0.2}, "2": {"mean": 0.6}}) == \
        mean_and_std([0.1, 0.2, 0.6])


def test_benchmark_refuses_unknown_method(omniglot_benchmark):
    with pytest.raises(SystemExit, match="evolvd"):
        omniglot_benchmark.resolve_methods(["evolvd"], ["2x"])


@pytest.mark.slow  # half a minute; evolution itself is tested in tests/test_evolve.py
def test_evolved_method_grows_a_pooled_root_to_every_alphabet(omniglot_benchmark, omniglot_zip):
    from keras_branch import backbones
    from keras_branch.data import load_omniglot

    data = load_omniglot(omniglot_zip, image_size=16, alphabets=["Greek", "Latin"])
    recipe = dict(omniglot_benchmark.DEFAULT_RECIPE, epochs=1, evolve_passes=1,
                  evolve_candidates=2, evolve_candidate_epochs=1, evolve_final_epochs=3)
    model, spec, extra = omniglot_benchmark.METHODS["evolved"](
        data, backbones.convnet4((16, 16, 1), filters=4), recipe, 0)
    assert spec.tasks == ["Greek", "Latin"]
    assert model.count_params() == spec.count_params(backbones.convnet4((16, 16, 1), filters=4),
                                                     data.tasks)
    assert set(extra["metrics"]) == {"Greek", "Latin"}
    # Compute in single-task epochs: 2 tasks x 2 candidates x 1 epoch, then 3 per installed path.
    assert extra["task_epochs"] == 2 * 2 * 1 + 2 * 3
    # Per-task accounting covers the whole system but the root's share: shared
    # parts divided by their users, the root counting as a user of its blocks.
    bb = backbones.convnet4((16, 16, 1), filters=4)
    root_users = [sum(spec.depth(t) > d and spec.route(t)[d] == 0 for t in spec.tasks)
                  for d in range(bb.num_stages)]
    root_share = bb.stem_params() / (len(spec.tasks) + 1) + sum(
        bb.stage_params(d) / (u + 1) for d, u in enumerate(root_users) if u)
    assert sum(extra["params_per_task"].values()) + root_share == pytest.approx(
        model.count_params(), rel=1e-9)


def test_tree_methods_share_one_measurement_per_seed(omniglot_benchmark, omniglot_zip,
                                                     monkeypatch):
    """`affinity_<budget>` and `tag_<budget>`: one measurement per seed serves every budget."""
    from keras_branch import backbones
    from keras_branch.data import load_omniglot

    methods = omniglot_benchmark.resolve_methods(["affinity", "tag_2x"], ["1.5x", "2x"])
    assert list(methods) == ["affinity_1.5x", "affinity_2x", "tag_2x"]
    assert methods["tag_2x"].__doc__ == ("Tree search on TAG's affinity at budget 2x, "
                                         "the found tree retrained.")
    data = load_omniglot(omniglot_zip, image_size=16, alphabets=["Greek", "Latin"])
    backbone = backbones.convnet4((16, 16, 1), filters=4)
    recipe = dict(omniglot_benchmark.DEFAULT_RECIPE, epochs=1, tag_epochs=1, tag_every=4)
    calls = []
    real = omniglot_benchmark.MEASUREMENTS["tag"]
    monkeypatch.setitem(omniglot_benchmark.MEASUREMENTS, "tag", real._replace(
        measure=lambda *args: calls.append(args[3]) or real.measure(*args)))
    extras = [omniglot_benchmark.tree_method("tag", budget)(data, backbone, recipe, 0)[2]
              for budget in ("1.5x", "2x")]
    assert calls == [0]
    for budget, extra in zip(("1.5x", "2x"), extras):
        assert list(extra) == ["metrics", "budget", "budget_params", "tag_seconds",
                               "affinity_seconds", "tag_lookaheads", "search_seconds"]
        assert extra["budget"] == budget and extra["tag_seconds"] == extra["affinity_seconds"]
        assert extra["tag_lookaheads"] == -(-data.steps("train", recipe["batch_size"]) // 4)


def test_scale_sweep_table_and_plot(tmp_path):
    """benchmarks/evolve_omniglot.py: means over seeds in the table, the reference rows drawn."""
    sweep = load_script(BENCHMARK.parent / "evolve_omniglot.py", "evolve_sweep")
    result = {"seeds": [0, 1], "rows": {
        "evolved s=0.5": {"errors": [0.10, 0.08], "params_per_task": [40_000.0, 60_000.0],
                          "accounted_per_task": [30_000.0, 35_000.0],
                          "seconds": [100.0, 300.0], "task_epochs": [520, 520]},
        "finetuned": {"errors": [0.07, 0.09], "params_per_task": [119_182.0, 119_182.0],
                      "seconds": []},
    }}
    lines = sweep.table(result).splitlines()
    # mean 0.09, sample std of (0.10, 0.08) = 0.0141, 50,000 params (32,500
    # accounted), 200 s, 520 epochs
    assert lines[2] == "| evolved s=0.5 | 0.0900 | 0.0141 | 50,000 | 32,500 | 200 | 520 |"
    assert lines[3] == "| finetuned | 0.0800 | 0.0141 | 119,182 |  |  |  |"
    reference = {"methods": {
        "shared": {"params": 147_144, "errors": [0.1, 0.1], "mean_task_errors": {"a": 0.1, "b": 0.1}},
        "soft_ordering": {"params": 1, "errors": [0.9], "mean_task_errors": {"a": 0.9, "b": 0.9}},
    }}
    path = sweep.plot(result, reference, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 1000 and path.endswith("sweep.png")
    with pytest.raises(SystemExit, match=r"--scales must be in \(0, 1\]"):
        sweep.main(["--data", "unused.zip", "--scales", "0.5,1.5"])
    # A bad --reference ends the script before any training, naming the option and the file.
    missing = str(tmp_path / "missing.json")
    with pytest.raises(SystemExit, match=r"--reference: cannot read '.*missing.json'"):
        sweep.main(["--data", "unused.zip", "--scales", "0.5", "--reference", missing])
    (tmp_path / "other.json").write_text('{"rows": {}}')
    with pytest.raises(SystemExit, match=r"--reference: '.*other.json' has no \"methods\" table"):
        sweep.main(["--data", "unused.zip", "--scales", "0.5", "--reference",
                    str(tmp_path / "other.json")])


def test_evolve_paths_own_params_training_and_table(omniglot_zip):
    """benchmarks/evolve_paths.py: each path's own parameters by hand, `norms` trains only BN."""
    import keras_branch as kb
    from keras_branch.compiling import compile_model
    from keras_branch.search.evolution.system import EvolvedSystem

    paths = load_script(BENCHMARK.parent / "evolve_paths.py", "evolve_paths")
    backbone = kb.backbones.convnet4((32, 32, 1), filters=8)
    task = kb.Task("a", "multiclass", classes=3)
    root = kb.build_model(kb.TreeSpec.shared(["a"], 4), backbone, [task])
    system = EvolvedSystem.from_root(root)
    # convnet4, 8 filters: a stage-2..4 block is a 3x3x8x8 kernel (576, no bias) and a batch
    # norm of 4 x 8 (scale, offset, mean, variance) = 608; stage 1's batch norm is 32 too; the
    # head reads 2x2x8 = 32 features into 3 classes (99); an adapter of width 16 on 8 channels
    # is LayerNorm 16 + Dense(16) 144 + Dense(8) 136 = 296.
    expected = {"head": 99, "clone4": 608 + 99, "clone34": 2 * 608 + 99, "norms": 4 * 32 + 99,
                "clone4_norms": 608 + 3 * 32 + 99, "clone4_adapters": 608 + 3 * 296 + 99,
                "clone4_adapter3": 608 + 296 + 99, "clone4_adapter4": 608 + 296 + 99,
                "clone3_depth3": 608 + (4 * 4 * 8 * 3 + 3)}
    for name, count in expected.items():
        assert paths.own_params(paths.path_model(system, task, name, seed=0)) == count, name

    model = paths.path_model(system, task, "norms", seed=0)
    compile_model(model)
    conv, norm = model.get_layer("stage2_block0").layers[:2]
    kernel, gamma = conv.get_weights()[0].copy(), norm.get_weights()[0].copy()
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype("float32")
    model.fit(x, {"a": np.arange(8) % 3}, epochs=1, batch_size=8, verbose=0)
    assert np.array_equal(conv.get_weights()[0], kernel)      # the shared conv stays
    assert not np.array_equal(norm.get_weights()[0], gamma)   # its batch norm trains
    assert np.array_equal(system.weights["stage2_block0"][1], gamma)  # the system's copy stays

    result = {"seeds": [0, 1], "epochs": 80, "checkpoints": [4, 80], "paths": {"clone4": {
        "params_per_task": 43_000.0,
        "errors": {"0": {"4": [0.2, 0.3], "80": [0.05, 0.07]},
                   "1": {"4": [0.1, 0.2], "80": [0.03, 0.09]}}}}}
    lines = paths.table(result, {"methods": {"finetuned": {"errors": [0.08, 0.06], "mean_error": 0.07}}})
    assert lines.splitlines()[2] == "| clone4 | 43,000 | 7.00, 9.00 | 8.00 | 4.00 | 15.00 |"
    assert lines.splitlines()[3] == "| finetuned (reference run) | | 8.00, 6.00 | 7.00 | | |"
    with pytest.raises(SystemExit, match=r"--paths: unknown \['clone9'\]"):
        paths.main(["--data", "unused.zip", "--paths", "clone4,clone9"])
    with pytest.raises(SystemExit, match=r"--batch-size must be >= 1\. Received: 0"):
        paths.main(["--data", "unused.zip", "--paths", "clone4", "--batch-size", "0"])
    # Several training draws per root: one column per (root seed, train seed).
    drawn = {**result, "runs": ["0/3", "0/4"], "paths": {"clone4": {
        "params_per_task": 43_000.0, "errors": {"0/3": result["paths"]["clone4"]["errors"]["0"],
                                                "0/4": result["paths"]["clone4"]["errors"]["1"]}}}}
    lines = paths.table(drawn).splitlines()
    assert "seeds 0/3, 0/4" in lines[0]
    assert lines[2] == "| clone4 | 43,000 | 7.00, 9.00 | 8.00 | 4.00 | 15.00 |"
    with pytest.raises(SystemExit, match=r"--alphabets: unknown \['Klingon'\]"):
        paths.run(str(omniglot_zip), [0], ["clone4"], 1, [], trained=["Klingon"])


@pytest.mark.slow
def test_evolve_add_task_on_two_alphabets(omniglot_zip):
    """benchmarks/evolve_add_task.py, tiny: the last alphabet added later scores as evolved together."""
    bench = load_script(BENCHMARK.parent / "evolve_add_task.py", "evolve_add_task")
    # No budget: under one, the growth's part of it differs from the last visit's together.
    tiny = {"image_size": 16, "filters": 4, "epochs": 1, "evolve_candidates": 1,
            "evolve_candidate_epochs": 1, "evolve_final_epochs": 1, "evolve_budget": None}
    result = bench.run(str(omniglot_zip), [0], ["Latin", "Greek"], alphabets=["Greek", "Latin"],
                       recipe=tiny, log=lambda _: None)
    run = result["runs"]["0"]
    # Latin is visited last either way: the same system, the same candidates.
    assert run["added"]["Latin"]["error"] == run["together"]["Latin"]
    for name in ("Latin", "Greek"):
        assert run["added"][name]["old_identical"] == {"keras": True, "tflite": True}
        assert run["added"][name]["path"]["depth"] == 4  # convnet4: no depth moves (`shape`)
        # the grown system's spec and the growth's records come along (who owns which block)
        assert run["added"][name]["spec"]["routes"][name] == run["added"][name]["path"]["route"]
        assert {e["task"] for e in run["added"][name]["history"]} == {name}
    lines = bench.table(result).splitlines()
    latin = 100 * run["together"]["Latin"]
    assert lines[2] == (f"| Latin | {latin:.2f} | {latin:.2f} | {latin:.2f} | {latin:.2f} | +0.00 "
                        "| yes, yes |")
    with pytest.raises(SystemExit, match=r"--late: unknown alphabets \['Klingon'\]"):
        bench.run(str(omniglot_zip), [0], ["Klingon"], alphabets=["Greek", "Latin"], recipe=tiny)
    # The benchmark's `evolved` row is the same evolution: read instead of rerun, it
    # gives `together` the errors evolving it here gave.
    reference = bench.common.run(str(omniglot_zip), seeds=[0], methods=["evolved"],
                                 alphabets=["Greek", "Latin"], recipe=tiny, latency_runs=0,
                                 log=lambda _: None)
    reference = json.loads(json.dumps(reference))  # as read from omniglot.json
    read = bench.run(str(omniglot_zip), [0], ["Latin"], alphabets=["Greek", "Latin"], recipe=tiny,
                     reference=reference, log=lambda _: None)
    assert read["together_read"] and read["runs"]["0"]["together"] == run["together"]
    assert read["runs"]["0"]["added"]["Latin"]["error"] == run["added"]["Latin"]["error"]


def test_evolve_add_task_reads_together_only_from_a_matching_run():
    bench = load_script(BENCHMARK.parent / "evolve_add_task.py", "evolve_add_task")
    recipe = {"epochs": 1}
    reference = {"recipe": recipe, "tasks": ["a", "b"], "seeds": [0, 2],
                 "methods": {"evolved": {"task_errors": [{"a": 0.1, "b": 0.2}, {"a": 0.3, "b": 0.4}],
                                         "seconds": [10.0, 20.0]}}}
    assert bench.together_from(reference, recipe, ["a", "b"], [2]) == {
        2: {"together": {"a": 0.3, "b": 0.4}, "together_seconds": 20.0}}
    with pytest.raises(SystemExit, match=r"no evolved run of seeds \[1\]; it has \[0, 2\]"):
        bench.together_from(reference, recipe, ["a", "b"], [0, 1])
    with pytest.raises(SystemExit, match=r"its `recipe` differs from this run's"):
        bench.together_from(reference, {"epochs": 2}, ["a", "b"], [0])
    # The trees' budgets, the probes' and any other method's settings do not touch the
    # root or the evolution; the backbone's do.
    other_trees = {**reference, "recipe": {**recipe, "budgets": ["2x"], "probe_epochs": 3,
                                           "soft_pool": "wide"}}
    assert bench.together_from(other_trees, recipe, ["a", "b"], [0])[0]["together"] == {
        "a": 0.1, "b": 0.2}
    with pytest.raises(SystemExit, match=r"its `recipe` differs from this run's"):
        bench.together_from({**reference, "recipe": {**recipe, "filters": 32}}, recipe,
                            ["a", "b"], [0])
    # A result written before `evolve_finalists`, `evolve_final_start`,
    # `evolve_candidate_start`, `evolve_adapters` and `evolve_final_batch_size`
    # existed ran with one finalist, whose final training started from the
    # candidates' weights at the path's batch, candidates continued their
    # parents' at their own rate and batch, and adapters could go after any stage.
    old = {**recipe, "evolve_finalists": 1, "evolve_final_start": "inherited",
           "evolve_candidate_start": "inherited", "evolve_adapters": "any",
           "evolve_final_batch_size": None, "evolve_candidate_hparams": "own",
           "evolve_norms": "frozen"}
    assert bench.together_from(reference, old, ["a", "b"], [0])
    for changed in ({"evolve_finalists": 2}, {"evolve_final_start": "root"},
                    {"evolve_candidate_start": "equal"}, {"evolve_adapters": "between"},
                    {"evolve_final_batch_size": 32}, {"evolve_candidate_hparams": "final"},
                    {"evolve_norms": "task"}):
        with pytest.raises(SystemExit, match=r"its `recipe` differs from this run's"):
            bench.together_from(reference, {**old, **changed}, ["a", "b"], [0])
    with pytest.raises(SystemExit, match=r"its `tasks` differs"):
        bench.together_from(reference, recipe, ["b", "a"], [0])
    with pytest.raises(SystemExit, match=r"has no 'evolved' row"):
        bench.together_from({**reference, "methods": {}}, recipe, ["a", "b"], [0])
    # Evolution installs other paths on another CPU: a reference from one is refused.
    here = {"cpu": "AMD EPYC", "simd": "avx2", "code": "abc"}
    amd = {**reference, "machine": {"cpu": "AMD EPYC", "code": "abc"}}  # written before `simd`
    assert bench.together_from(amd, recipe, ["a", "b"], [0], here)[0]["together"] == {
        "a": 0.1, "b": 0.2}
    for other in ({"cpu": "Intel Xeon"}, {"cpu": "AMD EPYC", "simd": "avx512f"}):
        with pytest.raises(SystemExit, match=r"--reference: it ran on another CPU \("):
            bench.together_from({**reference, "machine": other}, recipe, ["a", "b"], [0], here)
    said = []
    bench.together_from({**reference, "machine": {**here, "code": "def"}}, recipe, ["a", "b"],
                        [0], here, said.append)
    assert said == ["--reference ran commit def, this run abc: its systems are this run's only "
                    "if evolution did not change between them."]


def test_evolve_add_task_takes_the_finalists_of_the_recipe(tmp_path, monkeypatch):
    """--evolve-finalists, --evolve-candidate-start and --evolve-adapters reach the recipe (as
    benchmarks/omniglot.py's flags), checked before training."""
    bench = load_script(BENCHMARK.parent / "evolve_add_task.py", "evolve_add_task")
    missing = str(tmp_path / "no-such.zip")
    with pytest.raises(ValueError, match=r"`evolve_finalists` must be a positive int\. "
                                         r"Received: evolve_finalists=0"):
        bench.main(["--data", missing, "--evolve-finalists", "0"])
    seen = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: seen.append(k["recipe"]) or 1 / 0)
    for argv, recipe in ((["--evolve-finalists", "2"], {"evolve_finalists": 2}), ([], {}),
                         (["--evolve-candidate-start", "equal"], {"evolve_candidate_start": "equal"}),
                         (["--evolve-adapters", "any"], {"evolve_adapters": "any"}),
                         (["--evolve-final-batch-size", "none"], {"evolve_final_batch_size": None}),
                         (["--evolve-final-batch-size", "16"], {"evolve_final_batch_size": 16}),
                         (["--evolve-candidate-hparams", "own"], {"evolve_candidate_hparams": "own"}),
                         (["--evolve-norms", "task"], {"evolve_norms": "task"})):
        with pytest.raises(ZeroDivisionError):
            bench.main(["--data", missing, *argv])
    assert seen == [{"evolve_finalists": 2}, {}, {"evolve_candidate_start": "equal"},
                    {"evolve_adapters": "any"}, {"evolve_final_batch_size": None},
                    {"evolve_final_batch_size": 16}, {"evolve_candidate_hparams": "own"},
                    {"evolve_norms": "task"}]


def test_evolve_add_task_reports_outputs_that_moved(tmp_path):
    """old_outputs_identical says False for a model whose old task's output differs."""
    import keras_branch as kb
    from keras_branch.seeding import seeded_layers

    bench = load_script(BENCHMARK.parent / "evolve_add_task.py", "evolve_add_task")
    tasks = [kb.Task("a", "regression"), kb.Task("b", "regression")]
    spec = kb.TreeSpec.shared(["a", "b"], 2)
    backbone = kb.backbones.mlp(4, (3, 3))
    with seeded_layers(0):
        before = kb.build_model(spec, backbone, tasks)
    with seeded_layers(1):
        other = kb.build_model(spec, backbone, tasks)
    x = np.random.default_rng(0).random((5, 4)).astype("float32")
    assert bench.old_outputs_identical(before, before, ["a"], x, str(tmp_path / "same")) == \
        {"keras": True, "tflite": True}
    assert bench.old_outputs_identical(before, other, ["a"], x, str(tmp_path / "moved")) == \
        {"keras": False, "tflite": False}
