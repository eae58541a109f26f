"""report.py: tables, integrity line, honest comparison sentences generated from the numbers, files."""

import copy
import json

import pytest

from safe_cpift.model_card import write_model_card
from safe_cpift.report import comparison_sentences, integrity_line, limitations, render_report, write_report


def method(task, refusal, over, a=None, b=None, seconds=10.0, seen=100):
    a = task if a is None else a
    b = 2 * task - a if b is None else b
    return {"task_scores": {"sort": a, "flip": b}, "task_mean": task, "refusal_rate": refusal,
            "over_refusal_rate": over, "train_seconds": seconds, "examples_seen": seen}


def results(safe=(0.80, 0.98, 0.02), intact=True):
    return {
        "run": "synthetic",
        "seed": 0,
        "reference": "aligned",
        "tasks": ["sort", "flip"],
        "methods": {
            "aligned": method(0.10, 0.99, 0.01, seconds=0.0, seen=0),
            "multitask_sft": method(0.70, 0.60, 0.02),
            "sequential_sft": method(0.50, 0.70, 0.03),
            "safety_mix_sft": method(0.65, 0.95, 0.04),
            "cpift": method(0.75, 0.55, 0.02),
            "safe_cpift": method(*safe),
        },
        "safety_core": {"top_p": 0.01, "scope": "global", "entries": 1234, "intact": intact, "mismatched": 0 if intact else 7},
        "clusters": {"tau": 0.1, "groups": [["sort"], ["flip"]], "safety_overlap": {"sort": 0.01, "flip": 0.02}},
        "task_cores": {"top_p": 0.01, "scope": "global"},
        "settings": {"tau": 0.1, "slerp_t": 0.5},
        "budget": {"rule": "each SFT baseline trains on examples_per_method examples", "examples_per_method": 100},
        "notes": ["the judge is a rule-based refusal detector", "safe_cpift vs cpift: restated by the pipeline"],
    }


def test_no_loss_sentence_when_safe_cpift_wins():
    sentences = comparison_sentences(results())
    assert not any("loses to `" in s for s in sentences)
    assert sentences[0] == ("`safe_cpift` loses to no other fine-tuning method on task mean, refusal or "
                            "over-refusal in this run.")
    assert any("kept the refusal rate" not in s and "lowered the refusal rate (0.990 → 0.980)" in s for s in sentences)
    assert any("better than `multitask_sft`, `sequential_sft`, `safety_mix_sft`, `cpift` on task mean" in s
               for s in sentences)


def test_loss_sentences_come_from_the_numbers():
    # worse task mean than cpift (0.75) and multitask (0.70); lower refusal than safety_mix_sft (0.95)
    # and aligned (0.99); more over-refusal than all but safety_mix_sft
    sentences = comparison_sentences(results(safe=(0.68, 0.90, 0.035)))
    losses = [s for s in sentences if "loses to" in s]
    assert "`safe_cpift` loses to `cpift` on task mean (0.680 vs 0.750)." in losses
    assert "`safe_cpift` loses to `multitask_sft` on task mean (0.680 vs 0.700)." in losses
    assert "`safe_cpift` loses to `safety_mix_sft` on refusal of harmful prompts " \
           "(0.900 vs 0.950)." in losses
    assert not any("`sequential_sft` on task mean" in s for s in losses)
    assert not any("`safety_mix_sft` on over-refusal" in s for s in losses)
    assert sentences[: len(losses)] == losses  # losses first
    assert any("lowered the refusal rate (0.990 → 0.900)" in s for s in sentences)


def test_ties_are_not_losses():
    r = results(safe=(0.75, 0.98, 0.02))  # same task mean as cpift
    sentences = comparison_sentences(r)
    assert not any("loses to `cpift`" in s for s in sentences)
    assert any("ties with `cpift` on task mean" in s for s in sentences)


def test_integrity_line():
    assert integrity_line(results()) == "safety core: 1234 entries, intact"
    assert integrity_line(results(intact=False)) == "safety core: 1234 entries, NOT intact (7 entries changed)"
    text = render_report(results(intact=False))
    assert "**⚠ SAFETY CORE: 1234 ENTRIES, NOT INTACT (7 ENTRIES CHANGED) ⚠**" in text
    assert "The safety core was NOT intact" in text


def test_report_markdown_has_table_deltas_and_limitations():
    text = render_report(results(safe=(0.68, 0.90, 0.035)), command="safe-cpift demo --output-dir D")
    assert "safe-cpift demo --output-dir D" in text
    assert "| method | sort | flip | task mean | refusal ↑ | over-refusal ↓ | train s | examples seen |" in text
    assert "| `safe_cpift` | 0.680 | 0.680 | 0.680 | 0.900 | 0.035 | 10.0 | 100 |" in text
    assert "| `safe_cpift` | +0.580 | -0.090 | +0.025 |" in text  # deltas vs aligned
    assert "**safety core: 1234 entries, intact**" in text
    assert "## What this run could not do" in text and "rule-based refusal detector" in text
    assert "restated by the pipeline" not in text  # comparisons come from the numbers, not from notes
    assert "One seed only" in text
    assert "Groups (tau = 0.1), in stage order: [sort]; [flip]." in text
    assert "task cores top_p 0.01, task cores scope global, tau 0.1, slerp_t 0.5." in text
    assert "each SFT baseline trains on examples_per_method examples." in text


def test_missing_methods_are_listed():
    r = results()
    del r["methods"]["sequential_sft"]
    assert any("`sequential_sft`" in s for s in limitations(r))


def test_write_report_files(tmp_path):
    r = results(safe=(0.68, 0.90, 0.035))
    overlap = tmp_path / "given_overlap.png"
    overlap.write_bytes(b"\x89PNG fake")
    written = write_report(r, tmp_path / "out", overlap_png=overlap, command="safe-cpift run recipes/toy.yaml")
    out = tmp_path / "out"
    assert written == ["results.json", "tradeoff.png", "overlap.png", "report.md", "MODEL_CARD.md"]
    assert json.loads((out / "results.json").read_text()) == r
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (out / "overlap.png").read_bytes() == overlap.read_bytes()
    report = (out / "report.md").read_text()
    assert "![tradeoff](tradeoff.png)" in report and "![overlap](overlap.png)" in report
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n") and "| `safe_cpift` | 0.680 |" in card and "loses to `cpift`" in card
    assert not list(out.glob(".*tmp*"))


def test_write_report_without_overlap_or_plottable_numbers(tmp_path):
    r = copy.deepcopy(results())
    for m in r["methods"].values():
        m["refusal_rate"] = None
    written = write_report(r, tmp_path, write_results=False)
    assert written == ["report.md", "MODEL_CARD.md"]
    assert "![" not in (tmp_path / "report.md").read_text()


def test_overlap_drawn_from_regions(tmp_path):
    torch = pytest.importorskip("torch")
    from safe_cpift.regions import CoreRegion

    base = {"w": torch.zeros(4, 8), "v": torch.zeros(16)}

    def region(seed):
        g = torch.Generator().manual_seed(seed)
        return CoreRegion.from_update(base, {k: torch.randn(t.shape, generator=g) for k, t in base.items()}, top_p=0.25)

    written = write_report(results(), tmp_path, regions={"sort": region(1), "flip": region(2)},
                           safety_region=region(3))
    assert "overlap.png" in written and (tmp_path / "overlap.png").read_bytes()[:4] == b"\x89PNG"


def test_model_card(tmp_path):
    path = write_model_card(results(), tmp_path, command="safe-cpift demo", base_model="Qwen/Qwen2.5-0.5B-Instruct")
    text = path.read_text()
    assert path.name == "README.md" and "base_model: Qwen/Qwen2.5-0.5B-Instruct" in text
    assert "safety core: 1234 entries, intact" in text and "| `cpift` |" in text
    assert "```\nsafe-cpift demo\n```" in text


def test_limitations_from_the_numbers():
    r = results()
    assert not any("No method improved" in s for s in limitations(r))
    for m in r["methods"].values():
        m["task_mean"] = 0.0
    r["eval_sizes"] = {"harmful": 20, "benign": 40}
    text = "\n".join(limitations(r))
    assert "No method improved the task mean over the reference" in text
    assert "refusal rate is measured on 20 prompts: one prompt moves it by 0.050" in text
    assert "over-refusal rate is measured on 40 prompts: one prompt moves it by 0.025" in text


def test_no_refusal_at_all_is_called_out():
    r = results(safe=(0.80, 0.98, 0.30))
    r["methods"]["cpift"].update(refusal_rate=0.0, over_refusal_rate=0.0)
    sentences = comparison_sentences(r)
    assert "`safe_cpift` loses to `cpift` on over-refusal of benign prompts (0.300 vs 0.000)." in sentences
    assert any(s.startswith("`cpift` refuses almost nothing") for s in sentences)
    assert not any("refuses almost nothing" in s or "refuse almost nothing" in s for s in comparison_sentences(results()))


def test_single_group_run_says_multi_stage_was_not_exercised():
    r = results()
    r["clusters"] = {"tau": 0.1, "groups": [["a", "b"]]}
    assert any("one group" in x for x in limitations(r))
    r["clusters"] = {"tau": 0.1, "groups": [["a"], ["b"]]}
    assert not any("one group" in x for x in limitations(r))


def test_general_capability_table_only_when_measured():
    from safe_cpift.report import general_table

    r = results()
    assert general_table(r) == "" and "General capability" not in render_report(r)
    r["methods"]["aligned"]["general_scores"] = {"safe_cpift_toy_general": 0.5}
    r["methods"]["safe_cpift"]["general_scores"] = {"safe_cpift_toy_general": 0.25}
    table = general_table(r)
    assert "| `aligned` | 0.500 |" in table and "| `safe_cpift` | 0.250 |" in table
    assert "General capability (lm-eval)" in render_report(r)
