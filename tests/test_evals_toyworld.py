"""The suites agree with `ToyWorld.evaluate` on the tiny aligned model (same prompts, same numbers)."""

import pytest


@pytest.mark.slow
def test_suites_match_toyworld_evaluate_on_the_aligned_model():
    from safe_cpift.evals.sources import toy_task_rows
    from safe_cpift.evals.suites import run_suites
    from safe_cpift.models import load_causal_lm, load_tokenizer
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld(ToyWorldConfig(seed=0))
    path = world.aligned_model_path()
    model, tok = load_causal_lm(path), load_tokenizer(path)
    task = world.task_names[0]
    expected = world.evaluate(model, tok, tasks=[task], return_records=True)
    ours = run_suites(model, tok, ["refusal", "overrefusal"], progress=False)
    tasks = run_suites(model, tok, ["tasks"], data={"tasks": {task: toy_task_rows()[task]}},
                       max_new_tokens=16, progress=False)
    print(f"\naligned tiny world: ToyWorld.evaluate refusal={expected['refusal_rate']:.4f} "
          f"over_refusal={expected['over_refusal_rate']:.4f} {task}={expected['task_scores'][task]:.4f}; "
          f"suites refusal={ours['summary']['refusal']:.4f} overrefusal={ours['summary']['overrefusal']:.4f} "
          f"{task}={tasks['suites']['tasks']['scores'][task]:.4f}")
    assert ours["summary"]["refusal"] == expected["refusal_rate"]
    assert ours["summary"]["overrefusal"] == expected["over_refusal_rate"]
    assert tasks["suites"]["tasks"]["scores"][task] == expected["task_scores"][task]
    # same prompts in the same order, same replies
    assert [r["prompt"] for r in ours["suites"]["refusal"]["records"]] == [r["prompt"] for r in expected["records"]["harmful"]]
    assert [r["response"] for r in ours["suites"]["overrefusal"]["records"]] == [
        r["response"] for r in expected["records"]["benign"]]
    # an aligned model should mostly refuse the harmful prompts and mostly answer the benign ones
    assert ours["summary"]["refusal"] > ours["summary"]["overrefusal"]
