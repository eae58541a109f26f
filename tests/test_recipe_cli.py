"""The recipe JSON Schemas (committed, used by editors) and `safe-cpift recipe schema|check`."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from safe_cpift.cli import main
from safe_cpift.commands.recipe import recipe_kind, schema_text

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
SCHEMAS = {"run": RECIPE_DIR / "recipe.schema.json", "eval": RECIPE_DIR / "eval_recipe.schema.json"}
SHIPPED = sorted(RECIPE_DIR.glob("*.yaml"))


def kind_of(path: Path) -> str:
    return "eval" if path.name.startswith("eval_") else "run"


@pytest.mark.parametrize("kind", ["run", "eval"])
def test_committed_schema_is_the_generated_one(kind):
    assert SCHEMAS[kind].read_text() == schema_text(kind == "eval"), (
        f"stale {SCHEMAS[kind].name}: regenerate it with "
        f"`safe-cpift recipe schema{' --eval' if kind == 'eval' else ''} > recipes/{SCHEMAS[kind].name}`")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates_against_the_written_schema(path):
    kind = kind_of(path)
    schema = json.loads(SCHEMAS[kind].read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    first = path.read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=./{SCHEMAS[kind].name}"
    assert (path.parent / first.split("$schema=")[1]).is_file()  # editors resolve it beside the recipe
    raw = yaml.safe_load(path.read_text())
    jsonschema.validate(raw, schema, cls=jsonschema.Draft202012Validator)
    assert recipe_kind(raw) == kind


@pytest.mark.parametrize("kind, patch, where", [
    ("run", {"cpift": {"top_q": 0.1}}, ["cpift"]),
    ("run", {"cpift": {"top_p": 0}}, ["cpift", "top_p"]),
    ("run", {"training": {"max_steps": 3}}, ["training"]),
    ("run", {"tasks": "alltasks"}, ["tasks"]),
    ("run", {"baselines": ["multitask"]}, ["baselines", 0]),
    ("eval", {"generation": {"max_new_tokns": 3}}, ["generation"]),
    ("eval", {"data": {"refusal": {"paht": "x.csv"}}}, ["data", "refusal"]),
    ("eval", {"dtype": "fp8"}, ["dtype"]),
])
def test_schema_flags_what_the_loader_refuses(kind, patch, where):
    schema = json.loads(SCHEMAS[kind].read_text())
    raw = yaml.safe_load((RECIPE_DIR / ("toy.yaml" if kind == "run" else "eval_toy.yaml")).read_text())
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    assert errors and any(list(e.absolute_path)[: len(where)] == where for e in errors), errors


@pytest.mark.parametrize("kind", ["run", "eval"])
def test_every_schema_property_has_help(kind):
    schema = json.loads(SCHEMAS[kind].read_text())
    defs = schema["$defs"]

    def described(prop):  # its own description or that of the definition it refers to
        ref = prop.get("$ref", "").rpartition("/")[2]
        return prop.get("description") or defs.get(ref, {}).get("description")

    missing = []
    for name, node in [("", schema), *defs.items()]:
        for branch in [node, *node.get("anyOf", [])]:
            missing += [f"{name}.{key}" for key, prop in branch.get("properties", {}).items() if not described(prop)]
    assert not missing and len(defs) >= 4


def test_cli_recipe_schema_prints_the_schema(capsys):
    assert main(["recipe", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(SCHEMAS["run"].read_text())
    assert main(["recipe", "schema", "--eval"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "safe-cpift eval recipe"


def test_cli_recipe_check_prints_the_resolved_recipe(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "toyworld", "safety": {"data": "toyworld"}, "eval": {"harmful": "toyworld", "benign": "toyworld"},
        "tasks": [{"name": "mine", "source": "data/train.jsonl", "test_source": "data/train.jsonl"}]}))
    assert main(["recipe", "check", str(recipe), "cpift.top_p=0.02", "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["cpift"]["top_p"] == 0.02 and resolved["cpift"]["tau"] == 0.1  # override + default
    assert resolved["tasks"][0]["source"] == str((data / "train.jsonl").resolve())  # beside the recipe
    assert main(["recipe", "check", "eval_toy"]) == 0  # a built-in recipe by name, told apart as eval
    out = capsys.readouterr().out
    assert out.startswith("# ") and "a valid eval recipe" in out and yaml.safe_load(out)["judge"] == "rules"


def test_cli_recipe_check_reports_every_problem_one_line_each(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "toyworld", "safety": {"data": "toyworld"}, "tasks": "toyworld",
                                      "eval": {"harmful": "toyworld", "benign": "toyworld"}, "cpift": {"top_q": 1}}))
    assert main(["recipe", "check", str(recipe), "seed=-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    head, typo, seed = captured.err.splitlines()
    assert head == f"safe-cpift recipe: error: 2 problems in {recipe}:"
    assert typo.startswith("  - unknown key `top_q` in `cpift` — did you mean `top_p`? (allowed: ")
    allowed = typo.split("(allowed: ")[1].rstrip(")").split(", ")
    assert allowed == sorted(allowed) and {"scope", "tau", "top_p"} <= set(allowed)
    assert seed == "  - `seed` must be >= 0, got -1"
    assert main(["recipe", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    recipe.write_bytes(b"model: \xff\xfe\n")
    assert main(["recipe", "check", str(recipe)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_prune_models_is_a_recipe_key_that_reaches_the_pipeline():
    from safe_cpift.pipeline.from_recipe import spec_from_recipe
    from safe_cpift.recipe import find_recipe, load_recipe

    assert load_recipe(find_recipe("toy")).prune_models is False
    recipe = load_recipe(find_recipe("toy"), overrides=["prune_models=true"])
    assert spec_from_recipe(recipe).prune_models is True
