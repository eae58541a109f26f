"""The Safe-CPI-FT pipeline: CPI-FT stages with safety as the protected task, baselines, report.

```python
from safe_cpift.pipeline import run_pipeline
results = run_pipeline("recipes/toy.yaml", "runs/toy", resume=True)   # or a Recipe / PipelineSpec
```
See `safe_cpift.pipeline.runner` for the stage order.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_pipeline": "safe_cpift.pipeline.runner",
    "run_spec": "safe_cpift.pipeline.runner",
    "stage_names": "safe_cpift.pipeline.runner",
    "PipelineSpec": "safe_cpift.pipeline.spec",
    "TrainSettings": "safe_cpift.pipeline.spec",
    "spec_from_recipe": "safe_cpift.pipeline.from_recipe",
    "verify_safety_core": "safe_cpift.pipeline.safety_core",
    "strip_timing": "safe_cpift.pipeline.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safe_cpift.pipeline' has no attribute {name!r}")


__all__ = list(_LAZY)
