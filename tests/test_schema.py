"""safe_cpift.schema: pydantic errors become one line per problem, with did-you-mean hints."""

from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

from safe_cpift.schema import (
    ConfigError,
    Section,
    annotation_at,
    did_you_mean,
    draft,
    number,
    parse_value,
    problems_from,
    set_dotted,
)


class Inner(Section):
    shorthand = "source"
    source: str = Field(description="where")
    limit: Annotated[int, Field(ge=1)] | None = Field(None, description="how many")


class Outer(Section):
    top_p: number(gt=0.0, le=1.0) = Field(0.01, description="fraction")  # type: ignore[valid-type]
    scope: Literal["global", "tensor"] = Field("global", description="scope")
    flag: bool = Field(False, description="a flag")
    data: Inner = Field(description="data")
    items: list[Inner] = Field([], description="items")
    either: int | str | None = Field(None, description="an int or a string")


def problems(raw) -> list[str]:
    with pytest.raises(ValidationError) as err:
        Outer.model_validate(raw)
    return problems_from(err.value, Outer)


def test_unknown_key_suggests_the_closest_key_and_lists_allowed():
    (line,) = problems({"data": "x", "top_q": 0.1})
    assert line == ("unknown key `top_q` in `recipe` — did you mean `top_p`? "
                    "(allowed: data, either, flag, items, scope, top_p)")
    (line,) = problems({"data": {"source": "x", "zzzzzz": 1}})
    assert "did you mean" not in line and line.startswith("unknown key `zzzzzz` in `data` (allowed: limit, source)")


def test_every_problem_one_line_with_dotted_paths():
    lines = problems({"top_p": 0, "scope": "globl", "flag": "yes", "items": [{"source": "a"}, {"limit": 0}],
                      "either": [1]})
    assert lines == [
        "`top_p` must be > 0.0, got 0",
        "`scope` must be one of global, tensor, got 'globl' — did you mean `global`?",
        "`flag` must be true or false, got 'yes' (str)",
        "missing required key `data.source` (where)",
        "missing required key `items[1].source` (where)",
        "`items[1].limit` must be >= 1, got 0",
        "`either` must be an integer or a string or null, got [1]",  # a union's errors are one line
    ]
    err = ConfigError(lines, source="r.yaml")
    assert isinstance(err, ValueError) and err.problems == lines
    assert str(err).startswith("7 problems in r.yaml:\n  - `top_p`")


def test_shorthand_and_number_text():
    out = Outer.model_validate({"data": "file.jsonl", "top_p": "1e-2"})
    assert out.data.source == "file.jsonl" and out.top_p == 0.01
    assert problems({"data": 3}) == ["`data` must be a mapping, got 3 (int)"]
    assert problems({"data": "x", "top_p": "high"}) == ["`top_p` must be a number, got 'high' (str)"]
    schema = Outer.model_json_schema()
    assert schema["$defs"]["Inner"]["anyOf"][0]["type"] == "string"  # the shorthand, for editors
    assert schema["properties"]["top_p"]["exclusiveMinimum"] == 0.0


def test_draft_keeps_what_it_can_for_cross_field_checks():
    d = draft(Outer, {"scope": "globl", "data": "x", "items": [{"source": "a"}, 3]})
    assert d.scope == "globl" and d.data.source == "x" and d.top_p == 0.01
    assert [i.source for i in d.items] == ["a", None]


def test_overrides_typed_by_the_annotation():
    assert annotation_at(Outer, ["items", "0", "source"]) is str
    out = set_dotted({"data": {"source": "x"}}, ["data.source=1234", "top_p=0.5", "data.limit=3"],
                     lambda parts: annotation_at(Outer, parts))
    assert out == {"data": {"source": "1234", "limit": 3}, "top_p": 0.5}
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("true") is True
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        set_dotted({}, ["top_p"])


def test_did_you_mean():
    assert did_you_mean("globl", ["global", "tensor"]) == "global"
    assert did_you_mean("zzz", ["global"]) is None
