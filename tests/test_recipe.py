"""Recipe validation: unknown keys with did-you-mean, every problem at once, types, ranges, overrides."""

import copy
from pathlib import Path

import pytest
import yaml

from safe_cpift.recipe import (
    BASELINES,
    Recipe,
    apply_overrides,
    build_metric,
    find_recipe,
    load_recipe,
    recipe_from_dict,
)
from safe_cpift.schema import ConfigError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RUN_RECIPES = ("toy.yaml", "qwen2.5-0.5b-instruct.yaml", "qwen2.5-7b-instruct.yaml", "llama-3.1-8b-instruct.yaml")
MODELINE = "# yaml-language-server: $schema=./recipe.schema.json"  # points editors at the JSON Schema


def command_line(path: Path) -> str:
    """The recipe's first line after the editor modeline: the command that runs it."""
    lines = path.read_text().splitlines()
    return lines[1] if lines and lines[0].startswith("# yaml-language-server:") else lines[0]


# the run recipes above plus any other recipe that says it is run by `safe-cpift run` (eval recipes differ)
RECIPES = sorted({RECIPE_DIR / n for n in RUN_RECIPES} | {
    p for p in RECIPE_DIR.glob("*.yaml") if command_line(p).startswith("# safe-cpift run ")})
FIXTURES = Path(__file__).parent / "fixtures_data"

MINIMAL = {
    "model": {"source": "toyworld"},
    "safety": {"data": "toyworld"},
    "tasks": "toyworld",
    "eval": {"harmful": "toyworld", "benign": "toyworld"},
}


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(raw)
    return err.value.problems


def test_shipped_recipes_exist():
    assert all((RECIPE_DIR / n).is_file() for n in RUN_RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_is_valid_and_documented(path):
    recipe = load_recipe(path)
    assert path.read_text().splitlines()[0] == MODELINE, "a recipe opens with the modeline editors read"
    assert command_line(path).startswith(f"# safe-cpift run recipes/{path.name}"), "then the command that runs it"
    assert recipe.tasks and recipe.methods[0] == "aligned" and recipe.methods[-1] == "safe_cpift"
    if recipe.model.source != "toyworld":  # real models cannot be run here: the recipe must say so
        assert "UNTESTED HERE" in path.read_text()
        assert not recipe.uses_toyworld and recipe.model.trust_remote_code is False
    assert recipe_from_dict(recipe.to_dict()) == recipe  # round trip


def test_toy_recipe_trains_the_conflicting_counting_pair_with_all_baselines():
    """The demo: the counting pair with its shared question (the lab's seesaw, docs/lab.md), every baseline,
    8,384 examples per method, the matched single-task reference; the six-task demo stays reachable."""
    from safe_cpift.toyworld.world import DEFAULT_WORLD_VERSION, world_task_names

    recipe = load_recipe(find_recipe("toy"))
    assert [t.name for t in recipe.tasks] == ["count_letters", "count_a"]
    assert recipe.toyworld.settings == {"task_shared_question": True} and recipe.budget.single_task == "matched"
    assert all(t.source == "toyworld" for t in recipe.tasks)
    assert tuple(recipe.baselines) == BASELINES and recipe.uses_toyworld
    assert recipe.methods == ["aligned", *BASELINES, "safe_cpift"]
    six = load_recipe(find_recipe("toy_six"))
    assert [t.name for t in six.tasks] == list(world_task_names(six.toyworld.version or DEFAULT_WORLD_VERSION))
    assert six.toyworld.settings == {} and six.budget.examples_per_method == 7104
    for r in (recipe, six):  # both at the demo's total budget
        assert 8384 == r.budget.examples_per_method + len(r.tasks) * r.cpift.probe_examples + r.safety.core.probe_examples


def test_minimal_recipe_gets_defaults():
    r = recipe_from_dict(MINIMAL)
    assert isinstance(r, Recipe)
    assert r.cpift.top_p == 0.01 and r.cpift.freeze_safety_core is True and r.model.trust_remote_code is False
    assert r.safety.data.source == "toyworld" and r.eval.harmful.source == "toyworld"
    assert r.seed == 0 and r.training == {}


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"cpift": {"top_q": 0.1}}, "unknown key `top_q` in `cpift` — did you mean `top_p`?"),
        ({"modle": {}}, "unknown key `modle` in `recipe` — did you mean `model`?"),
        ({"safety": {"data": "toyworld", "core": {"scoper": "global"}}},
         "unknown key `scoper` in `safety.core` — did you mean `scope`?"),
        ({"training": {"lerning_rate": 1e-4}}, "unknown key `lerning_rate` in `training` (not a trl.SFTConfig field)"
                                               " — did you mean `learning_rate`?"),
        ({"eval": {"harmful": "toyworld", "benign": "toyworld", "max_new_token": 3}},
         "did you mean `max_new_tokens`?"),
    ],
)
def test_unknown_keys_have_did_you_mean(patch, expected):
    problems = problems_of({**MINIMAL, **patch})
    assert any(expected in p for p in problems), problems


def test_every_problem_reported_at_once():
    raw = {
        **MINIMAL,
        "model": {"source": "toyworld", "dtyp": "float32"},
        "cpift": {"top_p": 0, "tau": "high", "scope": "globl"},
        "training": {"per_device_train_batch_size": "big", "max_steps": 10},
        "baselines": ["multitask"],
        "seed": -1,
        "tasks": [{"name": "sort_upp", "source": "toyworld"}, {"name": "mine", "source": "x.jsonl", "metric": "exakt"}],
        "toyworld": {"version": 1},  # the world whose tasks include sort_up
    }
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(raw)
    text = str(err.value)
    for needle in ("`dtyp`", "`cpift.top_p` must be > 0.0", "`cpift.tau` must be a number", "did you mean `global`",
                   "`training.per_device_train_batch_size` must be an integer", "`training.max_steps` is set by",
                   "`baselines[0]`", "did you mean `multitask_sft`", "`seed` must be >= 0",
                   "'sort_upp' is not a toyworld task — did you mean `sort_up`",
                   "`tasks[1].metric`", "`tasks[1].test_source` is required"):
        assert needle in text, needle
    assert len(err.value.problems) == 11
    assert text.startswith("11 problems:")


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"cpift": {"top_p": 1.5}}, "`cpift.top_p`"),
        ({"cpift": {"top_p": -0.1}}, "`cpift.top_p`"),
        ({"safety": {"data": "toyworld", "core": {"top_p": 0}}}, "`safety.core.top_p`"),
        ({"safety": {"data": "toyworld", "mix_fraction": 1.0}}, "`safety.mix_fraction`"),
        ({"cpift": {"slerp_t": 2}}, "`cpift.slerp_t`"),
        ({"budget": {"examples_per_method": 0}}, "`budget.examples_per_method`"),
    ],
)
def test_out_of_range_names_the_field(patch, field):
    problems = problems_of({**MINIMAL, **patch})
    assert len(problems) == 1 and problems[0].startswith(field), problems


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"seed": "zero"}, "`seed` must be an integer"),
        ({"seed": True}, "`seed` must be an integer"),
        ({"cpift": {"freeze_safety_core": "yes"}}, "`cpift.freeze_safety_core` must be true or false"),
        ({"baselines": "cpift"}, "`baselines` must be a list"),
        ({"tasks": 3}, "`tasks` must be `toyworld` or a list of tasks"),
        ({"cpift": [1, 2]}, "`cpift` must be a mapping"),
        ({"eval": 3, "seed": "x"}, "`eval` must be a mapping"),
        ({"safety": "toyworld"}, "`safety` must be a mapping"),
        ({"model": {"source": "toyworld", "dtype": "fp8"}}, "`model.dtype` must be one of"),
        ({"training": {"learning_rate": "fast"}}, "`training.learning_rate` must be a number"),
    ],
)
def test_bad_types(patch, expected):
    problems = problems_of({**MINIMAL, **patch})
    assert any(expected in p for p in problems), problems


def test_missing_required_sections():
    problems = problems_of({})
    assert any("`model.source`" in p for p in problems)
    assert any("`tasks`" in p for p in problems)
    assert any("`safety.data.source`" in p for p in problems)


def test_cross_field_checks():
    problems = problems_of({**MINIMAL, "model": {"source": "org/model"}, "safety": {
        "data": "toyworld", "core": {"scorer": "alignment"}}})
    assert any("`model.base` is required" in p for p in problems)
    problems = problems_of({**MINIMAL, "tasks": [{"name": "a", "source": "a.jsonl", "metric": "regex"},
                                                   {"name": "a", "source": "b/c", "metric": "regex",
                                                    "answer_pattern": "(unclosed"}]})
    text = "\n".join(problems)
    assert "`tasks[0].answer_pattern` is required" in text and "`tasks[1].answer_pattern` is not a valid regex" in text
    assert "task name `a` is used twice" in text


def test_user_tasks_from_files():
    raw = {**MINIMAL, "tasks": [
        {"name": "chat", "source": str(FIXTURES / "chat.jsonl"), "test_source": str(FIXTURES / "chat.jsonl")},
        {"name": "gsm", "source": "openai/gsm8k", "subset": "main", "columns": {"prompt": "question",
                                                                              "completion": "answer"},
         "metric": "regex", "answer_pattern": r"####\s*(-?[\d,.]+)"},
    ]}
    r = recipe_from_dict(raw)
    assert r.tasks[0].format == "auto" and r.tasks[1].columns == {"prompt": "question", "completion": "answer"}
    assert r.tasks[1].test_source is None  # hub: the same id, split `test`


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "training": {"learning_rate": 0.001}}))
    r = load_recipe(path, ["cpift.top_p=0.02", "training.learning_rate=1e-4", "model.source=1234",
                           "tasks.0.test_limit=7", "baselines=[cpift]", "cpift.mix_safety=false",
                           "eval.benign.where={label: safe}"])
    assert r.cpift.top_p == 0.02 and isinstance(r.cpift.top_p, float)
    assert r.training["learning_rate"] == 1e-4  # YAML reads "1e-4" as a string; the schema makes it a float
    assert r.model.source == "1234"  # a string field keeps the text
    assert r.tasks[0].test_limit == 7 and r.baselines == ["cpift"] and r.cpift.mix_safety is False
    assert r.eval.benign.where == {"label": "safe"} and r.eval.benign.source == "toyworld"


def test_override_typos_and_bad_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(ConfigError) as err:
        load_recipe(path, ["cpift.top_q=0.02", "cpift.top_p=2"])
    text = str(err.value)
    assert "did you mean `top_p`" in text and "`cpift.top_p` must be <= 1.0" in text
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_recipe(path, ["cpift.top_p"])
    with pytest.raises(ConfigError, match="needs a list index below 6"):
        load_recipe(path, ["tasks.9.split=x"])


def test_replay_fraction_takes_a_share_or_balanced(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert load_recipe(path).cpift.replay_fraction == "balanced"  # the default (docs/efficacy.md section 00)
    assert load_recipe(path, ["cpift.replay_fraction=0.5"]).cpift.replay_fraction == 0.5
    for bad in ("balance", "1", "true"):
        with pytest.raises(ConfigError, match=r"`cpift.replay_fraction` must be a number in \[0, 1\) or `balanced`"):
            load_recipe(path, [f"cpift.replay_fraction={bad}"])


def test_apply_overrides_does_not_mutate():
    raw = copy.deepcopy(MINIMAL)
    out = apply_overrides(raw, ["seed=3"])
    assert out["seed"] == 3 and "seed" not in raw


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(bad)


def test_help_strings_on_every_field():
    from safe_cpift.recipe import CoreConfig, CpiftConfig, EvalConfig, TaskSpec

    for cls in (Recipe, CpiftConfig, CoreConfig, TaskSpec, EvalConfig):
        assert all(h for h in cls.help().values()), cls


def test_build_metric():
    def task(**kw):
        return recipe_from_dict({**MINIMAL, "tasks": [{"name": "t", "source": "org/x", **kw}]}).tasks[0]

    exact = build_metric(task())
    assert exact(" a b ", "a b") == 1.0 and exact("a b c", "a b") == 0.0
    contains = build_metric(task(metric="contains"))
    assert contains("so the answer is 42.", "42") == 1.0 and contains("41", "42") == 0.0
    gsm = build_metric(task(metric="regex", answer_pattern=r"####\s*(-?[\d,.]+)"))
    assert gsm("work... #### 72", "Natalia sold 48/2 = 24 ... #### 72") == 1.0
    assert gsm("#### 71", "#### 72") == 0.0 and gsm("72", "#### 72") == 0.0
    py = build_metric(task(metric="python:os.path:samefile"))
    assert py(__file__, __file__) == 1.0
    with pytest.raises(ValueError, match="cannot import"):
        build_metric(task(metric="python:no_such_module_x:f"))


def test_user_recipe_fixture_resolves_paths_beside_the_file(tmp_path, monkeypatch):
    from safe_cpift.data import load_task_dataset

    monkeypatch.chdir(tmp_path)  # paths are found beside the recipe, not in the working directory
    recipe = load_recipe(FIXTURES / "user" / "recipe.yaml")
    assert [t.name for t in recipe.tasks] == ["upper", "double"]
    for task in recipe.tasks:
        assert Path(task.source).is_absolute() and Path(task.test_source).is_file()
        train = load_task_dataset(task.source, format=task.format, name=task.name)
        test = load_task_dataset(task.test_source, format=task.format, name=task.name)
        assert (len(train), len(test)) == (48, 12)
        assert not {m[0]["content"] for m in train["messages"]} & {m[0]["content"] for m in test["messages"]}
    assert recipe.model.source == "toyworld" and recipe.toyworld.quick is True


def test_attack_section():
    assert recipe_from_dict(MINIMAL).attack is None
    r = recipe_from_dict({**MINIMAL, "attack": {"data": "toyworld", "fraction": 0.2}})
    assert r.attack.data.source == "toyworld" and r.attack.fraction == 0.2
    assert recipe_from_dict(r.to_dict()) == r
    problems = problems_of({**MINIMAL, "attack": {"data": "toyworld", "fraction": 1.5, "fractoin": 1}})
    assert any("`attack.fraction` must be < 1.0" in p for p in problems)
    assert any("did you mean `fraction`" in p for p in problems)


def test_slerp_weights_checked_against_tasks():
    from safe_cpift.recipe import _world_tasks

    names = list(_world_tasks())
    good = recipe_from_dict({**MINIMAL, "cpift": {"slerp_weights": {n: i + 1 for i, n in enumerate(names)}}})
    assert good.cpift.slerp_weights == {n: i + 1 for i, n in enumerate(names)}
    wrong = {names[0]: 1.0, names[1] + "x": 1.0}
    problems = problems_of({**MINIMAL, "cpift": {"slerp_weights": wrong}})
    assert any(p.startswith(f"`cpift.slerp_weights.{names[1]}x`: no task") and f"did you mean `{names[1]}`" in p
               for p in problems), problems
    problems = problems_of({**MINIMAL, "cpift": {"slerp_weights": {names[0]: 1.0}}})
    assert problems == [f"`cpift.slerp_weights` needs a weight for every task (missing: {', '.join(names[1:])})"]
    problems = problems_of({**MINIMAL, "cpift": {"slerp_weights": {n: -1.0 for n in names}}})
    assert problems == [f"`cpift.slerp_weights.{n}` must be >= 0.0, got -1.0" for n in names]
    problems = problems_of({**MINIMAL, "cpift": {"slerp_weights": {n: float("inf") for n in names}}})
    assert len(problems) == len(names) and all("finite" in p for p in problems)
    problems = problems_of({**MINIMAL, "cpift": {"slerp_t": 0.3, "slerp_weights": {n: 1.0 for n in names}}})
    assert problems == ["set either `cpift.slerp_t` or `cpift.slerp_weights`, not both (two tasks: weights "
                        "(1-t, t) are slerp_t=t)"]
    problems = problems_of({**MINIMAL, "cpift": {"slerp_weights": {n: 0 for n in names}}})
    assert problems == ["`cpift.slerp_weights` are all 0: give at least one task a positive weight"]
