"""Seesaw levers of the tiny world v2 (issue 10): `task_openers="per_task"` makes the tasks conflict on
their answer opener while each task stays consistent; the default world's data and models are untouched."""

import random
import re

import pytest

from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, tasks_v2


def _opener(response: str) -> str:
    return next(o for o in tasks_v2.OPENERS if response.startswith(o + " "))


def _phrasing(task: tasks_v2.Task, prompt: str) -> int:
    return next(i for i, q in enumerate(task.questions)
                if re.fullmatch(re.escape(q).replace(re.escape("{x}"), "[a-h]( [a-h])*"), prompt))


def test_per_task_openers_conflict_across_tasks_and_stay_consistent_within_each():
    shared, rotated = ToyWorld(), ToyWorld(ToyWorldConfig(task_openers="per_task"))
    mapping = {}  # task -> {phrasing index -> opener}
    for k, name in enumerate(rotated.task_names):
        task = tasks_v2.TASKS[name]
        rows, plain = rotated.task_rows(name, "train"), shared.task_rows(name, "train")
        assert [r["prompt"] for r in rows] == [r["prompt"] for r in plain]  # same questions, same inputs
        seen: dict[int, set[str]] = {}
        for row, base in zip(rows, plain, strict=True):
            i = _phrasing(task, row["prompt"])
            seen.setdefault(i, set()).add(_opener(row["response"]))
            assert _opener(base["response"]) == tasks_v2.OPENERS[i]
            assert row["response"].removeprefix(_opener(row["response"])) == base["response"].removeprefix(
                _opener(base["response"]))  # only the opener differs
        assert all(len(v) == 1 for v in seen.values()), f"{name}: one opener per phrasing"
        mapping[name] = {i: v.pop() for i, v in seen.items()}
        assert mapping[name] == {i: tasks_v2.OPENERS[(i + k) % 3] for i in mapping[name]}
    # the two position tasks ask the same question shapes ("first"/"last") but open differently
    assert all(mapping["first_letter"][i] != mapping["last_letter"][i] for i in range(3))


def test_task_openers_leave_the_models_alone_and_are_checked():
    assert ToyWorld().cache_dir == ToyWorld(ToyWorldConfig(task_openers="per_task")).cache_dir
    assert ToyWorldConfig().task_openers == "shared"
    with pytest.raises(ValueError, match="`task_openers`"):
        ToyWorldConfig(task_openers="random")
    with pytest.raises(ValueError, match="`task_openers`.*version"):
        ToyWorldConfig(version=1, task_openers="per_task")
    with pytest.raises(ValueError, match="`openers`"):
        tasks_v2.task_rows("commas", [list("abc")], openers="nope")


def test_skill_questions_put_the_tasks_in_question_form_into_pretraining_only_when_asked():
    plain, asked = ToyWorldConfig(), ToyWorldConfig(skill_questions=60)
    docs = ToyWorld(asked).corpus_documents()
    lines = tasks_v2.skill_questions(random.Random(13), 60)  # the corpus draws them with seed + 13
    assert all(any(line in d for d in docs) for line in lines)
    assert not any("Question: Count the letters:" in d for d in ToyWorld(plain).corpus_documents())
    assert any(tasks_v2.TASKS["count_letters"].questions[1].split("{")[0] in line for line in lines)
    assert not any(o in line for line in lines for o in tasks_v2.OPENERS)  # no chat opener: the format is left to learn
    assert plain.model_key("d") != asked.model_key("d")  # a different base model
    assert plain.model_key("d") == ToyWorldConfig(skill_questions=0).model_key("d")  # the default's key is kept
    with pytest.raises(ValueError, match="`skill_questions`"):
        ToyWorldConfig(skill_questions=-1)
    with pytest.raises(ValueError, match="`skill_questions`.*version"):
        ToyWorldConfig(version=1, skill_questions=10)


def test_shared_question_gives_the_two_tasks_of_a_skill_one_identical_prompt_with_different_answers():
    world = ToyWorld(ToyWorldConfig(task_shared_question=True))
    by_prompt: dict[str, dict[str, str]] = {}
    for name in world.task_names:
        rows = world.task_rows(name, "train")
        shared = tasks_v2.SHARED_QUESTIONS[tasks_v2.TASKS[name].skill].split("{")[0]
        asked = [r for r in rows if r["prompt"].startswith(shared)]
        assert 0.15 < len(asked) / len(rows) < 0.35  # about a quarter of the rows
        for r in rows:
            assert by_prompt.setdefault(r["prompt"], {}).setdefault(name, r["response"]) == r["response"]
    clashes = [p for p, answers in by_prompt.items() if len(answers) == 2 and len(set(answers.values())) == 2]
    assert clashes and all(any(p.startswith(q.split("{")[0]) for q in tasks_v2.SHARED_QUESTIONS.values())
                           for p in clashes)
    assert not ToyWorld().task_rows("count_a", "train")[0]["prompt"].startswith("Give me")
    assert ToyWorld().task_rows("count_a", "train") == ToyWorld(ToyWorldConfig()).task_rows("count_a", "train")
    with pytest.raises(ValueError, match="`task_shared_question`.*version"):
        ToyWorldConfig(version=1, task_shared_question=True)
