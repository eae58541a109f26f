"""Seesaw levers of the tiny world v2 (issue 10): `task_openers="per_task"` makes the tasks conflict on
their answer opener while each task stays consistent; the default world's data and models are untouched."""

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
