"""safe_cpift.schema: every problem reported at once, with did-you-mean hints."""

import pytest

from safe_cpift.schema import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_str_list,
    raise_if_problems,
)


def test_check_keys_suggests_the_closest_key():
    problems = check_keys({"top_q": 1, "tau": 0.1}, ["top_p", "tau", "scope"], "cpift")
    assert len(problems) == 1
    assert "unknown key `top_q` in `cpift`" in problems[0]
    assert "did you mean `top_p`?" in problems[0]
    assert "allowed: scope, tau, top_p" in problems[0]


def test_check_keys_without_close_match_lists_allowed_only():
    (problem,) = check_keys({"zzzzzz": 1}, ["top_p", "tau"], "cpift")
    assert "did you mean" not in problem and "allowed: tau, top_p" in problem


def test_config_error_lists_every_problem():
    problems = check_keys({"lerning_rate": 1}, ["learning_rate"], "training") + check_float(
        2.0, "cpift.top_p", min=0, max=1, min_exclusive=True)
    err = ConfigError(problems, source="r.yaml")
    assert isinstance(err, ValueError)
    assert err.problems == problems
    text = str(err)
    assert text.startswith("2 problems in r.yaml:")
    assert "`lerning_rate`" in text and "`cpift.top_p` must be <= 1, got 2.0" in text


@pytest.mark.parametrize(
    "check, expected",
    [
        (lambda: check_int(True, "seed"), "`seed` must be an integer"),
        (lambda: check_int("3", "seed"), "`seed` must be an integer"),
        (lambda: check_int(-1, "seed", min=0), "`seed` must be >= 0"),
        (lambda: check_float("x", "tau"), "`tau` must be a number"),
        (lambda: check_float(0.0, "top_p", min=0, min_exclusive=True), "`top_p` must be > 0"),
        (lambda: check_bool("yes", "freeze"), "`freeze` must be true or false"),
        (lambda: check_choice("globl", ["global", "tensor"], "scope"), "did you mean `global`?"),
        (lambda: check_str_list(["cpift", "multitsk_sft"], "baselines", choices=["cpift", "multitask_sft"]),
         "`baselines[1]`"),
    ],
)
def test_typed_checks_name_the_field(check, expected):
    problems = check()
    assert len(problems) == 1 and expected in problems[0]


def test_valid_values_have_no_problems():
    assert check_int(3, "seed", min=0) == [] and check_float(1, "tau", min=0) == []
    assert check_choice("global", ["global"], "scope") == [] and check_bool(False, "f") == []
    raise_if_problems([])
    with pytest.raises(ConfigError):
        raise_if_problems(["x"])
