"""Core regions: which scalar entries of which tensors are "core", and how they are found.

- `core`: `CoreRegion` (extraction from an update, scores or importance; save/load; set operations;
  fingerprint checks);
- `scoring`: streaming scores over checkpoints, state dicts and modules (`UpdateScores`,
  `importance_scores`, `TensorSource`);
- `select`: exact top-p selection over streamed shards (global, tensor or layer scope);
- `fused_scan` and `fused`: the one-pass global selection over float32 pairs with compiled kernels
  (the `fast` extra, numba), on worker threads;
- `stats`: per-module and per-layer counts of a region.
"""

from safe_cpift.regions.core import (
    FORMAT,
    META_FILE,
    REGION_FILE,
    SCOPES,
    SCORERS,
    VERSION,
    CoreRegion,
    check_top_p,
    normalize_name,
)

__all__ = ["CoreRegion", "normalize_name", "check_top_p", "SCOPES", "SCORERS", "REGION_FILE", "META_FILE",
           "FORMAT", "VERSION"]
