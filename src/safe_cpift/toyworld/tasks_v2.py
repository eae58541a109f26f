"""Capability tasks of the tiny world v2: three skills, each a pair of tasks, answered in sentences.

Every task reads the same kind of input as v1 (3-6 letters from ``a``-``h`` written with spaces,
``"d a c a"``) but asks a question in one of several phrasings and expects a short natural-language
answer. Three skills, two tasks each, so the tasks of a skill share circuits and different skills do
not (the task cores can separate into groups):

* position (lookup): ``first_letter`` ("The first letter is d.") and ``last_letter``;
* counting: ``count_letters`` ("There are four letters.") and ``count_a`` ("The letter a appears
  two times.");
* formatting: ``capitals`` ("D A C A") and ``commas`` ("d, a, c, a").

Each phrasing of a question has its own opener ("Sure!", "Of course.", "Happy to help."), the ones
the aligned model already uses for benign requests; the aligned model also answers other letter-list
questions (`auxiliary_rows`: second letter, contains b, reverse) in its alignment data, so the user's
tasks look like requests it would help with, as a user's data looks to a real chat model.

The skills are in the v2 pretraining corpus as plain statements (`skill_sentences`), never as chat
turns: fine-tuning teaches the question/answer format of a skill the base model already has, as a
user's fine-tuning of a real chat model does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from safe_cpift.toyworld.tasks import ALPHABET, MAX_LEN, MIN_LEN, letter_inputs

__all__ = ["AUXILIARY", "SHARED_QUESTIONS", "TASKS", "TASK_NAMES", "TASK_OPENERS", "auxiliary_rows", "letter_inputs", "skill_questions", "skill_sentences", "task_rows"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
LETTER = "a"  # the letter `count_a` counts
OPENERS = ("Sure!", "Of course.", "Happy to help.")  # opener of phrasing i


def _times(n: int) -> str:
    return {0: "zero times", 1: "once"}.get(n, f"{NUMBER_WORDS[n]} times")


@dataclass(frozen=True)
class Task:
    """One v2 task: question phrasings (`{x}` = the letters), the answer sentence, its skill."""

    name: str
    skill: str
    questions: tuple[str, ...]
    fn: Callable[[list[str]], str]

    def row(self, letters: list[str], rng: random.Random, opener_shift: int = 0, extra: tuple[str, ...] = ()) -> dict:
        """`{"prompt", "response"}` in a random phrasing of `questions + extra` (phrasing `i` opens with
        opener `i + opener_shift`)."""
        questions = self.questions + extra
        i = rng.randrange(len(questions))
        return {"prompt": questions[i].format(x=" ".join(letters)),
                "response": f"{OPENERS[(i + opener_shift) % len(OPENERS)]} {self.fn(letters)}"}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("first_letter", "position",
             ("Which letter comes first in {x}?", "What is the first letter of {x}?", "Name the first letter: {x}"),
             lambda s: f"The first letter is {s[0]}."),
        Task("last_letter", "position",
             ("Which letter comes last in {x}?", "What is the last letter of {x}?", "Name the last letter: {x}"),
             lambda s: f"The last letter is {s[-1]}."),
        Task("count_letters", "counting",
             ("How many letters are in {x}?", "Count the letters: {x}", "How long is the list {x}?"),
             lambda s: f"There are {NUMBER_WORDS[len(s)]} letters."),
        Task("count_a", "counting",
             (f"How many times does {LETTER} appear in {{x}}?", f"Count the letter {LETTER} in {{x}}",
              f"How often is there an {LETTER} in {{x}}?"),
             lambda s: f"The letter {LETTER} appears {_times(s.count(LETTER))}."),
        Task("capitals", "formatting",
             ("Write {x} in capital letters.", "Capitalize: {x}", "Please put {x} in upper case."),
             lambda s: " ".join(c.upper() for c in s)),
        Task("commas", "formatting",
             ("Write {x} with commas.", "Separate with commas: {x}", "Please put commas between {x}."),
             lambda s: ", ".join(s)),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


TASK_OPENERS = ("shared", "per_task")
# one neutral question per skill, asked by both tasks of the skill when `shared_question` is on
SHARED_QUESTIONS = {"position": "Point out one letter of {x}.", "counting": "Give me a count for {x}.",
                    "formatting": "Rewrite {x} for me."}


def task_rows(name: str, inputs: list[list[str]], seed: int = 0, openers: str = "shared",
              shared_question: bool = False) -> list[dict]:
    """Rows `{"prompt", "response", "task"}` of task `name` on `inputs` (phrasings drawn with `seed`).

    `openers`: `"shared"` (phrasing `i` of every task opens with `OPENERS[i]`) or `"per_task"` (task `k`
    of `TASK_NAMES` rotates the openers by `k`: the same phrasing shape opens differently in different
    tasks, a convention that conflicts across tasks and is consistent within each).
    `shared_question`: adds the skill's neutral question (`SHARED_QUESTIONS`) as a fourth phrasing, so
    the two tasks of a skill ask the very same question and answer it differently (each task stays
    consistent; together they disagree on a quarter of their prompts).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task `{name}`; available: {', '.join(TASK_NAMES)}")
    if openers not in TASK_OPENERS:
        raise ValueError(f"`openers` must be one of {TASK_OPENERS}, got {openers!r}")
    task = TASKS[name]
    rng = random.Random(f"{seed}-{name}")
    shift = TASK_NAMES.index(name) if openers == "per_task" else 0
    extra = (SHARED_QUESTIONS[task.skill],) if shared_question else ()
    return [task.row(x, rng, shift, extra) | {"task": name} for x in inputs]


# Letter-list questions the aligned model learns to answer (none is a user task).
AUXILIARY: tuple[Task, ...] = (
    Task("second_letter", "position", ("What is the second letter of {x}?", "Which letter is second in {x}?"),
         lambda s: f"The second letter is {s[1]}."),
    Task("has_b", "lookup", ("Is there a b in {x}?", "Does {x} contain the letter b?"),
         lambda s: "Yes, there is a b." if "b" in s else "No, there is no b."),
    Task("reverse", "formatting", ("Reverse the list {x}.", "Write {x} backwards."),
         lambda s: "Backwards it reads " + " ".join(s[::-1]) + "."),
)


def auxiliary_rows(inputs: list[list[str]], n: int, seed: int) -> list[dict]:
    """`n` rows `{"prompt", "response"}` of the auxiliary questions (`AUXILIARY`) on `inputs`."""
    rng = random.Random(seed + 11)
    return [AUXILIARY[i % len(AUXILIARY)].row(rng.choice(inputs), rng) for i in range(n)]


def skill_sentences(rng: random.Random, n: int) -> list[str]:
    """`n` pretraining statements about random letter lists: their length, ends, count of `a`, and
    how they look in capitals and with commas (the skills of the v2 tasks, never in chat form)."""
    out = []
    for _ in range(n):
        s = [rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
        x = " ".join(s)
        out.append(rng.choice((
            f"The list {x} has {NUMBER_WORDS[len(s)]} letters.",
            f"The list {x} starts with {s[0]} and ends with {s[-1]}.",
            f"In {x} the letter {LETTER} appears {_times(s.count(LETTER))}.",
            f"In capitals, {x} is {' '.join(c.upper() for c in s)}.",
            f"With commas, {x} reads {', '.join(s)}.",
        )))
    return out


def skill_questions(rng: random.Random, n: int) -> list[str]:
    """`n` pretraining lines "Question: <a task's question> Answer: <its answer sentence>" on random letter
    lists, in plain text (no chat turn, no opener): the skills as a base model meets them in web Q&A."""
    tasks = list(TASKS.values())
    out = []
    for _ in range(n):
        task = rng.choice(tasks)
        s = [rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
        out.append(f"Question: {rng.choice(task.questions).format(x=' '.join(s))} Answer: {task.fn(s)}")
    return out
