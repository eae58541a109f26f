"""safe-cpift: Core Parameter Isolation Fine-Tuning with safety alignment as a protected task.

Heavy modules are imported lazily so that `import safe_cpift` and the CLI start fast.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# trl sends telemetry at train start unless told not to; a user can still opt in explicitly.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

_LAZY = {
    "CoreRegion": "safe_cpift.regions",
    "CoreFreezeCallback": "safe_cpift.protect.freeze",
    "restore_region": "safe_cpift.protect.freeze",
    "FrozenEntries": "safe_cpift.protect.freeze",
    "SafetyGuardCallback": "safe_cpift.protect.guard",
    "RefusalProbe": "safe_cpift.protect.guard_probe",
    "cluster_tasks": "safe_cpift.cluster",
    "configure_runtime": "safe_cpift.runtime",
}

if TYPE_CHECKING:  # pragma: no cover
    from safe_cpift.cluster import cluster_tasks
    from safe_cpift.protect.freeze import CoreFreezeCallback, FrozenEntries, restore_region
    from safe_cpift.protect.guard import SafetyGuardCallback
    from safe_cpift.protect.guard_probe import RefusalProbe
    from safe_cpift.regions import CoreRegion
    from safe_cpift.runtime import configure_runtime


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safe_cpift' has no attribute {name!r}")


__all__ = [
    "__version__",
    "CoreRegion",
    "CoreFreezeCallback",
    "restore_region",
    "FrozenEntries",
    "SafetyGuardCallback",
    "RefusalProbe",
    "cluster_tasks",
    "configure_runtime",
]
