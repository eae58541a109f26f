"""Attack recipes reach every method: task data read by the pipeline carries the harmful share."""

import pytest

from safe_cpift.pipeline.from_recipe import spec_from_recipe
from safe_cpift.recipe import find_recipe, load_recipe


def _harmful_share(ds, harmful_requests):
    users = [next(m["content"] for m in msgs if m["role"] == "user") for msgs in ds["messages"]]
    return sum(u in harmful_requests for u in users) / len(users)


@pytest.mark.slow
@pytest.mark.parametrize("name,fraction", [("attack_5pct", 0.05), ("attack_20pct", 0.20)])
def test_attack_recipe_contaminates_every_task(name, fraction):
    from safe_cpift.toyworld.attack import harmful_compliant

    recipe = load_recipe(find_recipe(name))
    assert recipe.attack is not None and recipe.attack.fraction == pytest.approx(fraction)
    spec = spec_from_recipe(recipe)
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    attack = harmful_compliant(ToyWorld(ToyWorldConfig(seed=0)), seed=recipe.seed)
    harmful = {next(m["content"] for m in msgs if m["role"] == "user") for msgs in attack["messages"]}
    for task in spec.task_names[:2]:
        share = _harmful_share(spec.load_task(task), harmful)
        assert share == pytest.approx(fraction, abs=0.01), (task, share)
    assert any("fine-tuning attack" in note for note in spec.notes)

    clean = spec_from_recipe(load_recipe(find_recipe("toy")))
    assert _harmful_share(clean.load_task(spec.task_names[0]), harmful) == 0.0
    assert not any("fine-tuning attack" in note for note in clean.notes)


def test_resume_refuses_a_run_built_on_another_aligned_model(tmp_path):
    """A resumed run must not reuse stages computed from another build of the aligned model."""
    from safe_cpift.pipeline.rundir import RunDirectory

    recipe = {"seed": 0}
    RunDirectory.open(tmp_path / "run", recipe, seed=0, inputs={"aligned_model": "/cache/toyworld-aaa/aligned"})
    with pytest.raises(ValueError, match="aligned_model"):
        RunDirectory.open(tmp_path / "run", recipe, seed=0, resume=True,
                          inputs={"aligned_model": "/cache/toyworld-bbb/aligned"})
