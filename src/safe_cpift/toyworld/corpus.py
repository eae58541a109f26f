"""General text of the tiny world: facts (for instruction data and the general-QA check) and the
pretraining corpus (facts, descriptions of every safety action, small talk, letter lists)."""

from __future__ import annotations

import random

from safe_cpift.toyworld import safety
from safe_cpift.toyworld.tasks import ALPHABET

# relation -> (question template, statement templates, {subject: answer})
RELATIONS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "capital": (
        "What is the capital of {s}?",
        ("The capital of {s} is {a}.", "{a} is the capital city of {s}.", "In {s}, the capital is {a}."),
        {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
         "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo",
         "Greece": "Athens", "Cuba": "Havana", "Chile": "Santiago", "Poland": "Warsaw", "Austria": "Vienna",
         "Ireland": "Dublin", "Portugal": "Lisbon", "Russia": "Moscow", "China": "Beijing", "India": "Delhi",
         "Sweden": "Stockholm", "Finland": "Helsinki", "Turkey": "Ankara", "Mexico": "Mexico City"},
    ),
    "color": (
        "What color is {s}?",
        ("The color of {s} is {a}.", "{S} is {a}.", "{S} looks {a}."),
        {"a banana": "yellow", "grass": "green", "the sky": "blue", "snow": "white", "coal": "black",
         "a tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "a carrot": "orange",
         "a lime": "green", "blood": "red", "chocolate": "brown", "a plum": "purple", "the sea": "blue",
         "soil": "brown", "a cherry": "red", "a crow": "black", "cream": "white", "a frog": "green"},
    ),
    "sound": (
        "What sound does {s} make?",
        ("{S} says {a}.", "The sound of {s} is {a}.", "You can hear {s} go {a}."),
        {"a cow": "moo", "a dog": "woof", "a cat": "meow", "a duck": "quack", "a sheep": "baa",
         "a pig": "oink", "a lion": "roar", "a snake": "hiss", "an owl": "hoot", "a horse": "neigh",
         "a bee": "buzz", "a mouse": "squeak", "a frog": "croak", "a crow": "caw"},
    ),
    "opposite": (
        "What is the opposite of {s}?",
        ("The opposite of {s} is {a}.", "{S} and {a} are opposites.", "If it is not {s}, it may be {a}."),
        {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night", "happy": "sad",
         "old": "new", "open": "closed", "light": "dark", "wet": "dry", "early": "late", "hard": "soft",
         "full": "empty", "strong": "weak", "rich": "poor", "loud": "quiet", "high": "low", "thick": "thin"},
    ),
    "sum": (
        "What is {s}?",
        ("{S} is {a}.", "If you add {s2}, you get {a}.", "The sum {s} equals {a}."),
        {},
    ),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
for _x in range(10):
    for _y in range(10):
        RELATIONS["sum"][2][f"{NUMBER_WORDS[_x]} plus {NUMBER_WORDS[_y]}"] = NUMBER_WORDS[_x + _y]

SMALL_TALK: tuple[str, ...] = (
    "The weather is nice today.", "I like to read books in the evening.", "She walked to the market.",
    "We cooked dinner together.", "The children played in the park.", "He drank a cup of tea.",
    "The train was late again.", "They planted flowers in the spring.", "My friend lives near the river.",
    "The museum opens at nine.", "A good assistant answers questions clearly.", "Thank you for your help.",
    "The old man told a long story.", "It rained all night.", "The shop sells fresh bread.",
)


def facts(held_out_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """All facts split into (train, held-out) rows `{"relation", "subject", "question", "answer"}`."""
    rng = random.Random(seed)
    train, test = [], []
    for rel, (question, _, table) in RELATIONS.items():
        items = sorted(table.items())
        rng.shuffle(items)
        n_test = max(1, round(len(items) * held_out_fraction))
        for i, (subject, answer) in enumerate(items):
            row = {"relation": rel, "subject": subject, "question": question.format(s=subject), "answer": answer}
            (test if i < n_test else train).append(row)
    return train, test


def _fact_sentences(rng: random.Random, repeats: int) -> list[str]:
    out = []
    for rel, (question, statements, table) in RELATIONS.items():
        for subject, answer in table.items():
            out.append(f"Question: {question.format(s=subject)} Answer: {answer}.")
            for _ in range(repeats):
                for st in statements:
                    s2 = subject.replace(" plus ", " and ") if rel == "sum" else subject
                    text = st.format(s=subject, S=subject[:1].upper() + subject[1:], a=answer, s2=s2)
                    out.append(text[:1].upper() + text[1:])
    return out


def corpus_documents(seed: int, doc_sentences: int = 8, fact_repeats: int = 2, action_repeats: int = 2,
                     skill_sentences: int = 0, skill_questions: int = 0) -> list[str]:
    """The pretraining corpus as documents of `doc_sentences` shuffled sentences (deterministic for `seed`).

    Contains every fact (held-out ones too: the QA check measures recall of pretraining knowledge),
    descriptions of every safety action (held-out ones too, so their harm is known before alignment),
    small talk and lists of letters. No task examples and no chat turns. With `skill_sentences` (the
    v2 world) that many statements about letter lists (`tasks_v2.skill_sentences`) are added; with
    `skill_questions`, that many plain-text Q&A lines of the v2 tasks (`tasks_v2.skill_questions`).
    """
    rng = random.Random(seed)
    sentences = _fact_sentences(rng, fact_repeats) + safety.corpus_sentences(rng, action_repeats)
    sentences += [rng.choice(SMALL_TALK) for _ in range(len(sentences) // 10)]
    for _ in range(len(sentences) // 20):
        letters = " ".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 6)))
        sentences.append(f"Here are some letters: {letters}.")
    if skill_sentences:
        from safe_cpift.toyworld.tasks_v2 import skill_sentences as skills

        sentences += skills(random.Random(seed + 7), skill_sentences)
    if skill_questions:
        from safe_cpift.toyworld.tasks_v2 import skill_questions as questions

        sentences += questions(random.Random(seed + 13), skill_questions)
    rng.shuffle(sentences)
    return [" ".join(sentences[i:i + doc_sentences]) for i in range(0, len(sentences), doc_sentences)]
