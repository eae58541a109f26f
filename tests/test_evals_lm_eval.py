"""lm-eval bridge and our evals/ task YAMLs, offline, on a tiny random Llama (scores may be 0)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_tok():
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    return ToyWorld(ToyWorldConfig(seed=0)).tokenizer()


@pytest.fixture(scope="module")
def tiny(toy_tok):
    model = make_tiny_llama(seed=0, vocab=len(toy_tok))
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = toy_tok.eos_token_id, toy_tok.pad_token_id, None
    return model


@pytest.mark.slow
def test_generate_until_and_loglikelihood_tasks_run_in_memory(tiny, toy_tok):
    from safe_cpift.evals.lm_eval_bridge import run_lm_eval

    out = run_lm_eval(tiny, toy_tok, ["safe_cpift_toy_refusal", "safe_cpift_toy_safety_choice"], limit=3,
                      apply_chat_template=True, batch_size=4)
    gen, ll = out["tasks"]["safe_cpift_toy_refusal"], out["tasks"]["safe_cpift_toy_safety_choice"]
    assert gen["metric"] == "refusal_rate,none" and 0.0 <= gen["score"] <= 1.0 and gen["n"] == 3
    assert len(gen["records"]) == 3 and isinstance(gen["records"][0]["response"][0], str)
    assert ll["metric"] == "acc,none" and 0.0 <= ll["score"] <= 1.0 and len(ll["records"]) == 3
    # loglikelihood records hold one (logprob, is_greedy) pair per choice
    assert len(ll["records"][0]["response"]) == 2 and isinstance(ll["records"][0]["response"][0][0], float)
    assert out["config"]["lm_eval_version"]


@pytest.mark.slow
def test_lm_eval_suite_through_run_suites_and_unknown_task(tiny, toy_tok):
    from safe_cpift.evals.suites import run_suites

    res = run_suites(tiny, toy_tok, "lm-eval:safe_cpift_toy_tasks", lm_eval={"limit": 2, "apply_chat_template": True})
    assert res["suites"]["lm-eval:safe_cpift_toy_tasks"]["metric"] == "exact_match,none"
    assert res["summary"]["lm-eval:safe_cpift_toy_tasks"] == 0.0  # a random model gets nothing right
    with pytest.raises(ValueError, match="did you mean `safe_cpift_toy_tasks`"):
        run_suites(tiny, toy_tok, "lm-eval:safe_cpift_toy_task")


@pytest.mark.slow
def test_lm_eval_cli_with_include_path_on_a_local_dir(tiny, toy_tok, tmp_path):
    model_dir = tmp_path / "tiny"
    tiny.save_pretrained(model_dir)
    toy_tok.save_pretrained(model_dir)
    exe = Path(sys.executable).with_name("lm-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(exe), "run", "--model", "hf", "--model_args", f"pretrained={model_dir}", "--include_path",
           str(ROOT / "evals"), "--tasks", "safe_cpift_toy_tasks,safe_cpift_toy_safety_choice", "--limit", "2",
           "--device", "cpu", "--batch_size", "2", "--apply_chat_template", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "safe_cpift_toy_tasks" in proc.stdout and "exact_match" in proc.stdout
    assert "safe_cpift_toy_safety_choice" in proc.stdout and "acc" in proc.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_xstest_task_reads_the_local_copy(shared_dir, monkeypatch):
    sys.path.insert(0, str(ROOT / "evals"))
    try:
        import utils
    finally:
        sys.path.remove(str(ROOT / "evals"))
    monkeypatch.setenv("SAFE_CPIFT_XSTEST", str(shared_dir / "datasets" / "xstest" / "xstest_prompts.csv"))
    assert len(utils.xstest_safe()["test"]) == 250 and len(utils.xstest_unsafe()["test"]) == 200
    assert utils.process_refusal({}, ["I can't help with that."]) == {"refusal_rate": 1.0}
    assert utils.process_overrefusal({}, ["Run kill -9 PID."]) == {"over_refusal_rate": 0.0}
    assert utils.process_exact({"reference": "a b"}, [" a b\n"]) == {"exact_match": 1.0}
    choice = utils.toy_safety_choice()["test"]
    assert set(choice["gold"]) == {0, 1} and all(len(c) == 2 for c in choice["choices"])
