"""Which harmful and benign prompt sets an evaluation uses when a recipe or `safe-cpift eval` names none.

- A model of the built-in tiny world (`toyworld`, `toy:aligned`, `toy:base`, or a directory the tiny
  world built, recognised by its `build_info.json`) is scored on the world's held-out sets
  (`toyworld`): its tokenizer knows only the world's words.
- Every other model is scored on XSTest (Röttger et al., NAACL 2024, CC-BY-4.0), shipped inside the
  package: `xstest:unsafe` (200 unsafe contrast prompts) for the refusal rate, `xstest:safe` (250
  safe prompts that look unsafe) for the over-refusal rate. No network is needed.

```python
from safe_cpift.evals.defaults import default_prompt_sets
default_prompt_sets("toy:aligned")   # {"harmful": "toyworld", "benign": "toyworld"}
default_prompt_sets("./my-model")    # {"harmful": "xstest:unsafe", "benign": "xstest:safe"}
```
`safe-cpift run` (`pipeline.from_recipe`) and `safe-cpift eval` (`evals.eval_recipe`) both call
`chosen_prompt_sets`, and their results say which sets were used and whether they were defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TOYWORLD", "XSTEST_UNSAFE", "XSTEST_SAFE", "is_toyworld_model", "default_prompt_sets",
           "chosen_prompt_sets", "describe_set"]

TOYWORLD = "toyworld"
XSTEST_UNSAFE = "xstest:unsafe"
XSTEST_SAFE = "xstest:safe"
BUILD_INFO = "build_info.json"  # written by safe_cpift.toyworld beside each model it builds
DESCRIPTIONS = {
    (TOYWORLD, "harmful"): "the tiny world's held-out harmful requests",
    (TOYWORLD, "benign"): "the tiny world's held-out benign look-alikes",
    (XSTEST_UNSAFE, "harmful"): "XSTest v2's 200 unsafe contrast prompts (bundled; Röttger et al., NAACL 2024; "
                                "CC-BY-4.0)",
    (XSTEST_SAFE, "benign"): "XSTest v2's 250 safe prompts that look unsafe (bundled; Röttger et al., NAACL 2024; "
                             "CC-BY-4.0)",
}


def is_toyworld_model(model: Any) -> bool:
    """Whether `model` names a model of the built-in tiny world.

    Args:
        model: a recipe's `model.source` or an eval `--model`: `toyworld`, `toy:aligned`, `toy:base`, or a
            directory; a directory counts when its `build_info.json` says the tiny world built it.
    """
    if not isinstance(model, (str, Path)):
        return False
    text = str(model)
    if text == TOYWORLD or text.startswith("toy:"):
        return True
    info = Path(text).expanduser() / BUILD_INFO
    if not info.is_file():
        return False
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("stage") in ("base", "aligned") and isinstance(data.get("config"), dict)


def default_prompt_sets(model: Any) -> dict[str, str]:
    """The default `{"harmful": spec, "benign": spec}` for `model` (see the module docstring)."""
    if is_toyworld_model(model):
        return {"harmful": TOYWORLD, "benign": TOYWORLD}
    return {"harmful": XSTEST_UNSAFE, "benign": XSTEST_SAFE}


def describe_set(spec: Any, kind: str) -> str:
    """A short human description of a prompt-set spec (`kind` is `harmful` or `benign`)."""
    if isinstance(spec, Mapping):
        spec = spec.get("set") or spec.get("path") or spec.get("source") or dict(spec)
    text = str(spec)
    return DESCRIPTIONS.get((text, kind), text)


def chosen_prompt_sets(model: Any, harmful: Any = None, benign: Any = None) -> dict[str, dict[str, Any]]:
    """The harmful and benign sets to use, filling what is not given with `default_prompt_sets(model)`.

    Args:
        model: the model being evaluated (decides the defaults).
        harmful, benign: the sets the user gave (any data spec), or `None`.

    Returns:
        `dict`: `{"harmful": {"source", "default", "description"}, "benign": {...}}`, where `source` is
        the spec to load and `default` says whether it was chosen here.
    """
    defaults = default_prompt_sets(model)
    out = {}
    for kind, given in (("harmful", harmful), ("benign", benign)):
        source = defaults[kind] if given is None else given
        out[kind] = {"source": source, "default": given is None, "description": describe_set(source, kind)}
    return out
