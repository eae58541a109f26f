"""`run` (recipes), `eval` and the lm-eval task files score with one metric implementation."""

import importlib.util
from pathlib import Path

import pytest

from safe_cpift.evals.metrics import resolve_metric
from safe_cpift.recipe import build_metric, recipe_from_dict

MINIMAL = {"model": "toyworld", "safety": {"data": "toyworld"}, "eval": {"harmful": "toyworld", "benign": "toyworld"}}
GSM = r"####\s*(-?[\d,.]+)"
PAIRS = [("The answer is  FORTY two.", "forty Two"), ("so #### 72", "48/2 = 24 ... #### 72"), (" yes ", "yes"),
         ("#### 71", "#### 72"), ("it is (1+1)", "(1+1)"), ("answer: 11", "1+1"), ("72", "#### 72")]


def _task(**kw):
    return recipe_from_dict({**MINIMAL, "tasks": [{"name": "t", "source": "org/x", **kw}]}).tasks[0]


@pytest.mark.parametrize("run_name,eval_name,pattern", [
    ("exact", "exact_match", None), ("contains", "contains", None), ("regex", f"regex:{GSM}", GSM),
])
def test_run_and_eval_agree(run_name, eval_name, pattern):
    in_run = build_metric(_task(metric=run_name, answer_pattern=pattern))
    in_eval = resolve_metric(eval_name)
    for response, reference in PAIRS:
        assert in_run(response, reference) == in_eval(response, reference, {}), (run_name, response, reference)


def test_contains_is_normalised_everywhere():
    assert build_metric(_task(metric="contains"))("The answer is  FORTY two.", "forty Two") == 1.0


def test_regex_never_compiles_the_reference():
    metric = build_metric(_task(metric="regex", answer_pattern=r"answer: (\S+)"))
    assert metric("answer: 11", "answer: 1+1") == 0.0  # "1+1" as a pattern would match "11"
    assert metric("answer: 1+1", "answer: 1+1") == 1.0
    assert resolve_metric("regex:answer: (\\S+)")("answer: 11", "answer: 1+1", {}) == 0.0
    with pytest.raises(ValueError, match="needs an `answer_pattern`"):
        resolve_metric("regex")


def test_lm_eval_task_files_use_the_same_exact_match():
    path = Path(__file__).resolve().parents[1] / "evals" / "utils.py"
    spec = importlib.util.spec_from_file_location("safe_cpift_evals_utils", path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    for response, reference in PAIRS:
        assert utils.process_exact({"reference": reference}, [response])["exact_match"] == \
            resolve_metric("exact_match")(response, reference, {})
