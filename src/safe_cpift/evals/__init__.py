"""Evaluation: the offline refusal judge, batched generation, suites (refusal, over-refusal, tasks,
lm-eval), public safety sets and eval recipes.

- `evals.judge`: `is_refusal(text, prompt=None)`, `judge(text, prompt=None)` / `verdict(text, prompt=None)
  -> JudgeVerdict` (unpacks as `(refused, reason)`; `.rule`, `.score`); patterns in `judge_rules`
  (English), `judge_lang`, `judge_lecture`, and `judge_prompt` (rules that compare reply and prompt)
- `evals.judge_agreement`: `parse_label`, `agreement`, `confusion_table` (judge vs human labels)
- `evals.generation`: `generate_responses(model, tokenizer, prompts, ...)`
- `evals.suites`: `refusal_suite`, `overrefusal_suite`, `task_suite`, `run_suites`
- `evals.public_sets`: `load_public_set("xstest" | "advbench" | "harmbench" | "strongreject", path=...)`
- `evals.lm_eval_bridge`: `run_lm_eval(model, tokenizer, tasks, ...)`
- `evals.eval_recipe`: `load_eval_recipe`, `run_eval`, `compare_results`
- `evals.judge_model`: `ModelJudge` (the optional `--judge model:PATH`)
"""
