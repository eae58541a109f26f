"""Capability tasks of the tiny world: short letter strings transformed by a short instruction.

Inputs are 3-6 letters from ``a``-``h`` written with spaces (``"d b c a"``) so every letter is one
token. Three conflicting pairs act on the same inputs and differ only by their instruction word:
sort up / sort down, copy / flip (reverse), and two substitution codes. The aligned model never
sees them; they are the user's new tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

ALPHABET = "abcdefgh"
MIN_LEN, MAX_LEN = 3, 6


def _shift(c: str) -> str:
    return ALPHABET[(ALPHABET.index(c) + 1) % len(ALPHABET)]


def _mirror(c: str) -> str:
    return ALPHABET[len(ALPHABET) - 1 - ALPHABET.index(c)]


@dataclass(frozen=True)
class Task:
    """One capability task: an instruction prefix and the function of the letter list."""

    name: str
    instruction: str
    fn: Callable[[list[str]], list[str]]
    conflicts_with: str

    def prompt(self, letters: list[str]) -> str:
        return f"{self.instruction}: {' '.join(letters)}"

    def answer(self, letters: list[str]) -> str:
        return " ".join(self.fn(letters))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sort_up", "sort up", sorted, "sort_down"),
        Task("sort_down", "sort down", lambda s: sorted(s, reverse=True), "sort_up"),
        Task("copy", "copy", list, "flip"),
        Task("flip", "flip", lambda s: s[::-1], "copy"),
        Task("code_shift", "code one", lambda s: [_shift(c) for c in s], "code_mirror"),
        Task("code_mirror", "code two", lambda s: [_mirror(c) for c in s], "code_shift"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def letter_inputs(seed: int, n_train: int, n_test: int) -> tuple[list[list[str]], list[list[str]]]:
    """Disjoint train and test input strings (shared by all tasks so conflicting pairs see the same inputs)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[list[str]] = []
    while len(out) < n_train + n_test:
        letters = [rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
        key = "".join(letters)
        if key not in seen:
            seen.add(key)
            out.append(letters)
    return out[n_test:], out[:n_test]


def task_rows(name: str, inputs: list[list[str]]) -> list[dict]:
    """Rows `{"prompt", "response", "task"}` of task `name` on `inputs`."""
    if name not in TASKS:
        raise ValueError(f"unknown task `{name}`; available: {', '.join(TASK_NAMES)}")
    task = TASKS[name]
    return [{"prompt": task.prompt(x), "response": task.answer(x), "task": name} for x in inputs]


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
# Letter-list instructions that are NOT user tasks (used only by the opt-in `align_letter_rows`).
AUXILIARY: dict[str, Callable[[list[str]], str]] = {
    "first letter": lambda s: s[0],
    "last letter": lambda s: s[-1],
    "count": lambda s: NUMBER_WORDS[len(s)],
    "has a": lambda s: "yes" if "a" in s else "no",
}


def auxiliary_rows(inputs: list[list[str]], n: int, seed: int) -> list[dict]:
    """`n` rows `{"prompt", "response"}` of the auxiliary letter instructions on `inputs` (train inputs)."""
    rng = random.Random(seed + 11)
    out = []
    for i in range(n):
        name = sorted(AUXILIARY)[i % len(AUXILIARY)]
        letters = rng.choice(inputs)
        out.append({"prompt": f"{name}: {' '.join(letters)}", "response": AUXILIARY[name](letters)})
    return out
