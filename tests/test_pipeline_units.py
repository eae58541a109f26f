"""Fast checks of the pipeline's bookkeeping: budget split, stage names, the bitwise core check."""

from __future__ import annotations

import pytest
import torch

from safe_cpift.pipeline.budget import baseline_examples, group_plan, probe_examples
from safe_cpift.pipeline.results import strip_timing
from safe_cpift.pipeline.runner import check_stop_after
from safe_cpift.pipeline.safety_core import verify_safety_core
from safe_cpift.pipeline.spec import PipelineSpec
from safe_cpift.regions import CoreRegion


def spec(**kw) -> PipelineSpec:
    base = dict(aligned_model="m", task_names=["a", "b", "c"], load_task=lambda n: None, load_safety=lambda: None,
                evaluate=lambda m, t: {}, safety_probe_examples=64, probe_examples=32, examples_per_method=300,
                safety_mix=0.05)
    base.update(kw)
    return PipelineSpec(**base)


def test_budget_is_matched_and_split_over_groups():
    s = spec()
    assert probe_examples(s, "safe_cpift") == 64 + 3 * 32
    assert probe_examples(s, "cpift") == 3 * 32
    assert baseline_examples(s) == 300 + 160
    assert baseline_examples(spec(include_probes=False)) == 300
    plan = group_plan(s, [["a", "c"], ["b"]], "safe_cpift")
    assert [p["total"] for p in plan] == [200, 100]
    assert plan[0]["safety"] == 10 and plan[1]["safety"] == 5
    assert sum(plan[0]["tasks"].values()) == 190 and set(plan[0]["tasks"]) == {"a", "c"}
    assert all(p["safety"] == 0 for p in group_plan(s, [["a", "c"], ["b"]], "cpift"))
    assert all(p["safety"] == 0 for p in group_plan(spec(mix_safety=False), [["a", "b", "c"]], "safe_cpift"))


def test_replay_mixes_earlier_groups_into_later_stages_within_the_same_budget():
    s = spec(replay_fraction=0.3)
    plan = group_plan(s, [["a"], ["b"], ["c"]], "cpift")
    assert [p["total"] for p in plan] == [100, 100, 100]  # the budget split does not change
    assert plan[0] == {"tasks": {"a": 100}, "safety": 0, "replay": 0, "total": 100}  # nothing earlier to replay
    assert plan[1]["replay"] == 30 and plan[1]["tasks"] == {"b": 70, "a": 30}
    assert plan[2]["replay"] == 30 and plan[2]["tasks"] == {"c": 70, "a": 15, "b": 15}
    safe = group_plan(s, [["a"], ["b", "c"]], "safe_cpift")[1]
    # safety comes off the stage first, then replay off the task share
    assert safe["safety"] == 10 and safe["replay"] == 57 and safe["tasks"] == {"b": 67, "c": 66, "a": 57}
    assert sum(safe["tasks"].values()) + safe["safety"] == safe["total"] == 200
    assert group_plan(spec(replay_fraction=0.0), [["a"], ["b"]], "cpift")[1]["tasks"] == {"b": 150}  # no replay
    assert group_plan(spec(replay_fraction=0.8), [["a"], ["b"]], "cpift")[1]["tasks"] == {"b": 30, "a": 120}
    assert group_plan(spec(), [["a"], ["b"]], "cpift")[1]["tasks"] == {"b": 75, "a": 75}  # the default: balanced
    with pytest.raises(ValueError, match="replay_fraction"):
        spec(replay_fraction=1.0)


def test_balanced_replay_gives_every_task_so_far_an_equal_share_of_the_stage():
    s = spec(replay_fraction="balanced")
    plan = group_plan(s, [["a"], ["b"], ["c"]], "cpift")
    assert plan[0] == {"tasks": {"a": 100}, "safety": 0, "replay": 0, "total": 100}
    assert plan[1]["replay"] == 50 and plan[1]["tasks"] == {"b": 50, "a": 50}  # the new task: 1/2
    assert plan[2]["replay"] == 66 and plan[2]["tasks"] == {"c": 34, "a": 33, "b": 33}  # 1/3; the remainder to c
    # a two-task group after a one-task group: 2/3 of the task rows, after safety comes off the stage
    safe = group_plan(s, [["a"], ["b", "c"]], "safe_cpift")[1]
    assert safe["safety"] == 10 and safe["replay"] == 63 and safe["tasks"] == {"b": 64, "c": 63, "a": 63}
    assert sum(safe["tasks"].values()) + safe["safety"] == safe["total"] == 200
    # a later group's share differs from a fixed share's (0.8 leaves the third stage's task 20 rows)
    assert group_plan(spec(replay_fraction=0.8), [["a"], ["b"], ["c"]], "cpift")[2]["tasks"]["c"] == 20
    assert spec().replay_fraction == "balanced"  # the default (docs/efficacy.md section 00)
    for bad in ("balance", True, 1.0, -0.1):
        with pytest.raises(ValueError, match="replay_fraction.*balanced"):
            spec(replay_fraction=bad)


def test_stop_after_names_are_checked():
    s = spec()
    for ok in ("clusters", "probe_b", "sft_group_3", "cpift_sft_group_0", "sequential_sft_2_c", "eval_cpift", "report"):
        check_stop_after(s, ok)
    for bad in ("probe_z", "sft_group_x", "evaluate", "sequential_sft_0_b"):
        with pytest.raises(ValueError, match="`stop_after`"):
            check_stop_after(s, bad)
    with pytest.raises(ValueError, match="`stop_after`"):
        check_stop_after(spec(methods=("aligned", "safe_cpift")), "cpift_fusion")


def test_strip_timing_drops_only_seconds():
    assert strip_timing({"a": 1, "train_seconds": 2, "m": [{"stage_seconds": 1, "x": 0}]}) == {"a": 1, "m": [{"x": 0}]}


def test_verify_compares_bits_not_values():
    w = torch.zeros(4, 3)
    region = CoreRegion({"w": torch.tensor([0, 5])}, {"w": ([4, 3], "float32")}, top_p=0.2, scope="global",
                        scorer="update")
    protected = {"w": torch.zeros(2)}
    assert verify_safety_core({"w": w}, region, protected)["intact"]
    w2 = w.clone()
    w2.view(-1)[5] = -0.0  # equal as a number, a different value bit for bit
    check = verify_safety_core({"w": w2}, region, protected)
    assert check["intact"] is False and check["mismatched"] == 1 and check["first_mismatch"] == "w"
    w3 = w.clone()
    w3.view(-1)[1] = 7.0  # outside the core: does not matter
    assert verify_safety_core({"w": w3}, region, protected)["intact"]


def test_fusion_stage_uses_the_recipes_slerp_weights(tmp_path):
    from types import SimpleNamespace

    from conftest import make_tiny_llama

    from safe_cpift.io import open_checkpoint, state_dict_fingerprint
    from safe_cpift.merge import fuse
    from safe_cpift.pipeline import fusion_stage
    from safe_cpift.pipeline.common import REGION_DIR

    for name, seed in (("base", 0), ("a", 1), ("b", 2), ("c", 3)):
        make_tiny_llama(seed).save_pretrained(tmp_path / name)
    fp = state_dict_fingerprint(dict(open_checkpoint(tmp_path / "base").iter_tensors()))
    regions = {t: CoreRegion({}, fp, top_p=0.01, scope="global", scorer="update") for t in "abc"}
    for t, r in regions.items():
        r.save(tmp_path / "cores" / t / REGION_DIR)
    weights = {"a": 2.0, "b": 1.0, "c": 1.0}

    class Ctx:
        spec = SimpleNamespace(task_names=["a", "b", "c"], slerp_t=0.5, slerp_weights=weights,
                               freeze_safety_core=False, track_stages=False)

        def theta0(self):
            return tmp_path / "base"

        def model_dir(self, stage):
            return tmp_path / stage.removeprefix("probe_")

        def stage_dir(self, stage):
            return tmp_path / "cores"

        def tokenizer(self):
            return SimpleNamespace(save_pretrained=lambda d: (d / "tokenizer_config.json").write_text("{}"))

    summary = fusion_stage.run_fusion(Ctx(), tmp_path / "out", "cpift")
    assert summary["weights"] == {"a": 0.5, "b": 0.25, "c": 0.25} and "note" not in summary
    want = fuse(tmp_path / "base", {t: tmp_path / t for t in "abc"}, regions, weights=weights)
    got = open_checkpoint(tmp_path / "out" / "model")
    assert all(torch.equal(got.get(n), want[n]) for n in want)


def test_every_peer_baseline_has_its_one_stage():
    """`plan` runs and `stage_names` lists one stage per peer baseline, named after it: each needs a body."""
    from safe_cpift.pipeline.runner import _PEER_STAGES, stage_names
    from safe_cpift.pipeline.spec import PEER_BASELINES

    assert tuple(_PEER_STAGES) == PEER_BASELINES
    names = stage_names(spec(methods=PEER_BASELINES, base_model="b"))
    assert [n for n in names if n in PEER_BASELINES] == list(PEER_BASELINES)
