"""Multi-seed aggregation: means and sds come from the per-seed values; a failed seed is reported, not averaged."""

from __future__ import annotations

import json
import statistics

import pytest

from safe_cpift.pipeline.seeds import aggregate, run_seeds, summarize


def fake_results(seed: int) -> dict:
    """A results.json as one seed's run writes it, with numbers that differ per seed."""
    def method(task_mean: float, refusal: float, over: float) -> dict:
        return {"task_scores": {"a": task_mean - 0.1, "b": task_mean + 0.1}, "task_mean": task_mean,
                "refusal_rate": refusal, "over_refusal_rate": over, "train_seconds": 10.0 + seed,
                "examples_seen": 100}
    return {"run": "fake", "seed": seed, "reference": "aligned", "tasks": ["a", "b"],
            "methods": {"aligned": method(0.2, 0.95, 0.02),
                        "multitask_sft": method(0.5 + 0.1 * seed, 0.3 * seed, 0.05),
                        "safe_cpift": method(0.4 + 0.05 * seed, 0.9 - 0.1 * seed, 0.1 * seed)},
            "single_task": {"a": 0.9, "b": 0.8 + 0.05 * seed},
            "single_task_budget": {"examples_per_task": 10, "multitask_examples_per_task": 10, "matched": True},
            "safety_core": {"entries": 5, "intact": True}, "clusters": {"groups": [["a"], ["b"]]},
            "early_warning": {"safety_overlap": {"a": 0.1, "b": 0.3}, "refusal_drop": {"a": 0.2, "b": 0.2 + 0.1 * seed},
                              "pearson": None}}


def test_summarize_uses_the_sample_sd():
    s = summarize([0.1, 0.4, 0.7])
    assert s["mean"] == pytest.approx(0.4)
    assert s["sd"] == pytest.approx(statistics.stdev([0.1, 0.4, 0.7])) == pytest.approx(0.3)
    assert summarize([0.5]) == {"mean": 0.5, "sd": 0.0, "values": [0.5]}
    assert summarize([0.5, None]) == {"mean": None, "sd": None, "values": [0.5, None]}


def test_aggregate_means_and_sds_come_from_the_per_seed_values():
    per_seed = {s: fake_results(s) for s in (0, 1, 2)}
    agg = aggregate(per_seed, seeds=[0, 1, 2])
    assert agg["seeds"] == agg["completed_seeds"] == [0, 1, 2] and agg["failed_seeds"] == []
    for m in ("aligned", "multitask_sft", "safe_cpift"):
        for key in ("task_mean", "refusal_rate", "over_refusal_rate", "train_seconds"):
            values = [per_seed[s]["methods"][m][key] for s in (0, 1, 2)]
            assert agg["methods"][m][key]["values"] == values
            assert agg["methods"][m][key]["mean"] == pytest.approx(statistics.fmean(values))
            assert agg["methods"][m][key]["sd"] == pytest.approx(statistics.stdev(values))
        assert agg["methods"][m]["task_scores"]["b"]["values"] == [per_seed[s]["methods"][m]["task_scores"]["b"]
                                                                   for s in (0, 1, 2)]
    assert agg["single_task"]["b"]["mean"] == pytest.approx(0.85)
    assert agg["clusters"] == {"0": [["a"], ["b"]], "1": [["a"], ["b"]], "2": [["a"], ["b"]]}
    # early warning pooled over (task, seed) pairs: overlap 0.1 -> drop 0.2; overlap 0.3 -> drops 0.2, 0.3, 0.4
    ew = agg["early_warning"]
    assert ew["pairs"] == 6
    xs, ys = [0.1, 0.3] * 3, [0.2, 0.2, 0.2, 0.3, 0.2, 0.4]
    assert ew["pearson"] == pytest.approx(statistics.correlation(xs, ys))


def test_a_failed_seed_is_reported_and_not_averaged_in(tmp_path):
    calls = []

    def run_one(recipe, out, *, resume, command):
        calls.append((recipe["seed"], out.name, resume))
        if recipe["seed"] == 1:
            raise RuntimeError("out of memory in stage probe_a")
        return fake_results(recipe["seed"])

    agg = run_seeds(lambda s: {"seed": s}, [0, 1, 2], tmp_path, run_one=run_one, command="safe-cpift run x")
    assert calls == [(0, "seed_0", False), (1, "seed_1", False), (2, "seed_2", False)]
    assert agg["seeds"] == [0, 1, 2] and agg["completed_seeds"] == [0, 2] and agg["failed_seeds"] == [1]
    assert "out of memory" in agg["errors"]["1"]
    refusal = agg["methods"]["safe_cpift"]["refusal_rate"]
    assert refusal["values"] == [0.9, pytest.approx(0.7)]
    assert refusal["mean"] == pytest.approx(0.8)
    assert json.loads((tmp_path / "results.json").read_text())["failed_seeds"] == [1]
    report = (tmp_path / "report.md").read_text()
    assert "Failed seeds (not averaged in)" in report and "seed 1: RuntimeError: out of memory" in report
    assert "0.800 ± 0.141" in report  # safe_cpift refusal over seeds 0 and 2
    assert (tmp_path / "tradeoff.png").stat().st_size > 0


def test_every_seed_failing_raises_and_bad_seeds_are_refused(tmp_path):
    def boom(recipe, out, **kw):
        raise RuntimeError(f"broken {recipe['seed']}")

    with pytest.raises(RuntimeError, match="every seed failed.*seed 0: RuntimeError: broken 0"):
        run_seeds(lambda s: {"seed": s}, [0, 1], tmp_path / "a", run_one=boom)
    for seeds, msg in (([], "empty"), ([0, 0], "duplicates"), ([-1], ">= 0")):
        with pytest.raises(ValueError, match=msg):
            run_seeds(lambda s: {"seed": s}, seeds, tmp_path / "b", run_one=boom)


def test_stopped_seed_counts_as_not_finished(tmp_path):
    def stopped(recipe, out, **kw):
        return {"stopped_after": "clusters"} if recipe["seed"] == 0 else fake_results(recipe["seed"])

    agg = run_seeds(lambda s: {"seed": s}, [0, 1], tmp_path, run_one=stopped)
    assert agg["failed_seeds"] == [0] and agg["completed_seeds"] == [1]


def test_overrides_may_follow_the_seeds_on_the_command_line():
    import argparse

    from safe_cpift.commands.run import split_seeds

    args = argparse.Namespace(seeds=["0", "1", "cpift.tau=0.2", "2"], overrides=["seed=9"])
    split_seeds(args)
    assert args.seeds == [0, 1, 2] and args.overrides == ["seed=9", "cpift.tau=0.2"]
    for bad, msg in ((["x"], "takes integers"), (["-1"], "takes integers"), (["a=1"], "names no seed")):
        with pytest.raises(ValueError, match=msg):
            split_seeds(argparse.Namespace(seeds=bad, overrides=[]))


def test_an_undefined_early_warning_says_why():
    """Probes that erode no refusal (small `cpift.probe_examples`) leave nothing to correlate: the reports say so."""
    from safe_cpift.report_sections import early_warning_section
    from safe_cpift.seeds_report import render_seeds_report

    per_seed = {s: fake_results(s) for s in (0, 1, 2)}
    for r in per_seed.values():
        r["early_warning"] = {"safety_overlap": {"a": 0.1, "b": 0.3}, "refusal_drop": {"a": 0.0, "b": 0.0},
                              "pearson": None}
    agg = aggregate(per_seed, seeds=[0, 1, 2])
    ew = agg["early_warning"]
    assert ew["pearson"] is None and ew["max_refusal_drop"] == ew["min_refusal_drop"] == 0.0
    report = render_seeds_report(agg)
    assert "Pearson r = –" in report and "Undefined: every probe lost the same refusal (+0.000)" in report
    single = "\n".join(early_warning_section(per_seed[0]))
    assert "too few tasks" in single  # two tasks in one run
    three = {"safety_overlap": {"a": 0.1, "b": 0.3, "c": 0.2}, "refusal_drop": {"a": 0.0, "b": 0.0, "c": 0.0},
             "pearson": None}
    assert "every probe lost the same refusal" in "\n".join(early_warning_section({"early_warning": three}))
    # a defined correlation prints no such note
    assert "Undefined" not in render_seeds_report(aggregate({s: fake_results(s) for s in (0, 1, 2)}, seeds=[0, 1, 2]))


def test_a_report_without_a_seesaw_points_to_protected_sft():
    from safe_cpift.seeds_report import render_seeds_report

    per_seed = {s: fake_results(s) for s in (0, 1, 2)}
    assert "protected_sft" not in render_seeds_report(aggregate(per_seed, seeds=[0, 1, 2]))  # a seesaw: no hint
    for r in per_seed.values():
        r["single_task"] = {"a": 0.1, "b": 0.2}  # the tasks alone do worse than together
    report = render_seeds_report(aggregate(per_seed, seeds=[0, 1, 2]))
    assert "no seesaw (gap under 0.05)" in report and "compare `protected_sft`" in report
    for r in per_seed.values():  # the probes as the reference: a different budget is no seesaw check
        r["single_task_budget"] = {"examples_per_task": 2, "multitask_examples_per_task": 10, "matched": False}
    report = render_seeds_report(aggregate(per_seed, seeds=[0, 1, 2]))
    assert "not a seesaw check: the budgets differ" in report and "no seesaw" not in report
    assert "`budget.single_task: matched`" in report
