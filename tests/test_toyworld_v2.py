"""Tiny world v2: sentence-answer tasks of three skills, larger held-out safety sets, the version flag
(v1 stays reachable with its old cache keys), and recipes that pick a version."""

import hashlib
import json
import random

import pytest

from safe_cpift.recipe import expand_toyworld_tasks, load_recipe
from safe_cpift.toyworld import CODE_VERSION, ToyWorld, ToyWorldConfig, tasks, tasks_v2
from safe_cpift.toyworld.world import DEFAULT_WORLD_VERSION, VERSION_DEFAULTS, world_task_names


@pytest.fixture(scope="module")
def v2():
    return ToyWorld(ToyWorldConfig(version=2))


def test_v2_answers_are_sentences_with_the_phrasings_opener():
    rng = random.Random(0)
    expect = {"first_letter": "The first letter is a.", "last_letter": "The last letter is a.",
              "count_letters": "There are four letters.", "count_a": "The letter a appears two times.",
              "capitals": "A B H A", "commas": "a, b, h, a"}
    for name, answer in expect.items():
        task = tasks_v2.TASKS[name]
        for _ in range(6):
            row = task.row(list("abha"), rng)
            i = next(i for i, q in enumerate(task.questions) if q.format(x="a b h a") == row["prompt"])
            assert row["response"] == f"{tasks_v2.OPENERS[i]} {answer}"
    assert tasks_v2.TASKS["count_a"].fn(list("bcd")) == "The letter a appears zero times."
    assert tasks_v2.TASKS["count_a"].fn(list("bad")) == "The letter a appears once."


def test_v2_tasks_split_like_v1_and_never_appear_in_alignment_or_pretraining(v2):
    assert v2.task_names == tasks_v2.TASK_NAMES == world_task_names(2)
    assert {s.skill for s in tasks_v2.TASKS.values()} == {"position", "counting", "formatting"}
    train = {r["prompt"] for n in v2.task_names for r in v2.task_rows(n, "train")}
    test = {r["prompt"] for n in v2.task_names for r in v2.task_rows(n, "test")}
    assert len(v2.task_rows("commas", "test")) == 200 and not train & test
    seen = {r["prompt"] for r in v2.alignment_rows()}
    assert not (train | test) & seen
    corpus = "\n".join(v2.corpus_documents())
    assert "The list" in corpus and "In capitals," in corpus  # the skills, as statements
    assert not any(q.split("{")[0] in corpus for t in tasks_v2.TASKS.values() for q in t.questions if q.split("{")[0])


def test_v2_held_out_safety_sets_have_at_least_300_prompts_and_v1_keeps_192(v2):
    harmful, benign = v2.safety_rows("test")
    assert len(harmful) >= 300 and len(benign) >= 300
    train_prompts = {r["prompt"] for rows in v2.safety_rows("train") for r in rows}
    assert not train_prompts & {r["prompt"] for r in harmful + benign}
    v1_harmful, v1_benign = ToyWorld(ToyWorldConfig(version=1)).safety_rows("test")
    assert len(v1_harmful) == len(v1_benign) == 192


def test_v1_keeps_its_cache_key_and_data_and_v2_differs():
    v1 = ToyWorldConfig(version=1)
    payload = {n: getattr(v1, n) for n in v1._MODEL_FIELDS} | {"code": CODE_VERSION, "data": "d"}
    assert v1.model_key("d", "aligned") == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert (v1.pretrain_steps, v1.pretrain_safety_fraction, v1.align_letter_rows) == (500, 0.0, 0)
    v2 = ToyWorldConfig(version=2)
    assert v2.model_key("d", "aligned") != v1.model_key("d", "aligned")
    assert {k: getattr(v2, k) for k in VERSION_DEFAULTS[2]} == VERSION_DEFAULTS[2]
    assert ToyWorldConfig(version=2, pretrain_steps=7).pretrain_steps == 7  # explicit values win
    assert ToyWorld(ToyWorldConfig(version=1)).task_names == tasks.TASK_NAMES
    with pytest.raises(ValueError, match="`version`"):
        ToyWorldConfig(version=4)


def test_recipe_picks_the_world_version_before_expanding_its_tasks(tmp_path):
    raw = {"tasks": "toyworld", "toyworld": {"version": 1}}
    assert [t["name"] for t in expand_toyworld_tasks(raw)["tasks"]] == list(tasks.TASK_NAMES)
    names = [t["name"] for t in expand_toyworld_tasks({"tasks": "toyworld"}, ["toyworld.version=2"])["tasks"]]
    assert names == list(tasks_v2.TASK_NAMES)
    default = [t["name"] for t in expand_toyworld_tasks({"tasks": "toyworld"})["tasks"]]
    assert default == list(world_task_names(DEFAULT_WORLD_VERSION))
    recipe = load_recipe("recipes/toy_six.yaml", overrides=["toyworld.version=1"])  # `tasks: toyworld`
    assert recipe.toyworld.version == 1 and [t.name for t in recipe.tasks] == list(tasks.TASK_NAMES)
    with pytest.raises(ValueError, match="toyworld.version"):
        load_recipe("recipes/toy.yaml", overrides=["toyworld.version=5"])
    from typing import get_args

    from safe_cpift.recipe import ToyWorldSettings
    from safe_cpift.toyworld.world import WORLD_VERSIONS

    # the recipe schema lists the versions without importing the world (and torch)
    assert set(get_args(get_args(ToyWorldSettings.model_fields["version"].annotation)[0])) == set(WORLD_VERSIONS)


def test_recipe_world_settings_reach_the_world_and_bad_ones_are_named():
    from safe_cpift.pipeline.from_recipe import _world

    d14 = "toyworld.settings={align_extra_lookalikes: 6, align_extra_harmful: 6, align_steps: 450, align_extra_templates: 10}"
    recipe = load_recipe("recipes/toy_v2.yaml", overrides=[d14])
    world = _world(recipe)
    assert (world.config.align_extra_lookalikes, world.config.align_steps, world.config.align_extra_templates) == (6, 450, 10)
    default = _world(load_recipe("recipes/toy_v2.yaml"))
    assert default.config.align_steps == 300
    # v2 with d14's settings is world v3: the same aligned model
    v3 = _world(load_recipe("recipes/toy.yaml"))
    assert v3.config.model_key(stage="aligned") == world.config.model_key(stage="aligned")
    assert world.cache_dir == default.cache_dir  # the same pretrained base (alignment-only settings) ...
    assert world.config.model_key(stage="aligned") != default.config.model_key(stage="aligned")  # ... another aligned model
    with pytest.raises(ValueError, match=r"toyworld\.settings.*align_extra_lookalike.*did you mean `align_extra_lookalikes`"):
        load_recipe("recipes/toy.yaml", overrides=["toyworld.settings={align_extra_lookalike: 6}"])
    with pytest.raises(ValueError, match=r"`seed` is set by `toyworld.seed`"):
        load_recipe("recipes/toy.yaml", overrides=["toyworld.settings={seed: 3}"])
    with pytest.raises(ValueError, match="toyworld.settings"):
        load_recipe("recipes/toy.yaml", overrides=["toyworld.settings={hidden_size: -4}"])
