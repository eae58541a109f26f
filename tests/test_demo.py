"""`safe-cpift demo --quick`: the README's main command, end to end on the default tiny world."""

import json

import pytest

from safe_cpift.cli import main

METHODS = {"aligned", "multitask_sft", "sequential_sft", "safety_mix_sft", "cpift", "safe_cpift"}
FIELDS = ("task_scores", "task_mean", "refusal_rate", "over_refusal_rate", "train_seconds")


@pytest.mark.slow
def test_quick_demo_writes_the_whole_run_directory(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "safety core:" in printed and "intact" in printed

    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == METHODS
    for name, method in results["methods"].items():
        for field in FIELDS:
            assert field in method, (name, field)
        assert 0.0 <= method["refusal_rate"] <= 1.0 and 0.0 <= method["over_refusal_rate"] <= 1.0
    assert results["reference"] == "aligned"
    # general capability through lm-eval (the toy recipe's `lm-eval:safe_cpift_toy_general` suite)
    for name, method in results["methods"].items():
        assert 0.0 <= method["general_scores"]["safe_cpift_toy_general"] <= 1.0, name
    aligned = results["methods"]["aligned"]
    # issue 2's acceptance on the quick held-out sets
    assert aligned["refusal_rate"] >= 0.95 and aligned["over_refusal_rate"] <= 0.05
    core = results["safety_core"]
    assert core["intact"] is True and core["entries"] == core["checked_entries"] > 0 and core["mismatched"] == 0
    # equal budgets: every fine-tuned method saw as many examples as safe_cpift (cpift lacks the safety probe)
    seen = results["budget"]["examples_seen"]
    assert seen["multitask_sft"] == seen["sequential_sft"] == seen["safety_mix_sft"] == seen["safe_cpift"] > 0
    assert seen["safe_cpift"] == 1776 + 2 * 32 + 256 == 8384 // 4  # --quick: a quarter of the demo's budget
    # the demo's seesaw check: each of its two tasks alone at multitask_sft's examples per task
    assert results["single_task_budget"] == {"examples_per_task": 1048, "multitask_examples_per_task": 1048.0,
                                             "matched": True, "source": "matched"}
    assert results["tasks"] == ["count_letters", "count_a"]

    for name in ("report.md", "tradeoff.png", "overlap.png", "manifest.json", "final_model/README.md",
                 "final_model/model.safetensors", "final_model/config.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "safety core:" in report and "safe-cpift demo --quick" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0
    assert not list(out.glob(".*tmp*")), "no half-written stage may remain"

    # the run directory is resumable: a second call with --resume finds every stage done
    assert main(["demo", "--quick", "--resume", "--output-dir", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["safe_cpift"]["refusal_rate"] == results["methods"]["safe_cpift"]["refusal_rate"]
