"""Merging fine-tuned models: per-tensor SLERP math and CPI-FT fusion (core transplant + SLERP).

Note: `safe_cpift.merge.fuse` is the function (it shadows the submodule of the same name); the
module is still importable as `import safe_cpift.merge.fuse` / `sys.modules`.
"""

from __future__ import annotations

from safe_cpift.merge.fuse import FUSION_MANIFEST, fuse, fuse_with_manifest
from safe_cpift.merge.slerp import lerp, slerp, spherical_mean

__all__ = ["slerp", "lerp", "spherical_mean", "fuse", "fuse_with_manifest", "FUSION_MANIFEST"]
