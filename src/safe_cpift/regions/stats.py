"""Where a core region lives: its share by module type and by decoder layer."""

from __future__ import annotations

import math
import re
from typing import Any

from safe_cpift.regions.select import layer_index

MODULE_TYPES = ("embed", "attn", "mlp", "norm", "lm_head", "other")

_PATTERNS = (
    ("lm_head", re.compile(r"(^|\.)(lm_head|embed_out|output_layer)(\.|$)")),
    ("embed", re.compile(r"embed|(^|\.)(wte|wpe|word_embeddings|position_embeddings|tok_embeddings)(\.|$)")),
    ("norm", re.compile(r"norm|(^|\.)ln_?\w*(\.|$)")),
    ("attn", re.compile(r"attn|attention|(^|\.)(q_proj|k_proj|v_proj|o_proj|qkv_proj|query_key_value)(\.|$)")),
    ("mlp", re.compile(r"mlp|ffn|feed_forward|(^|\.)(gate_proj|up_proj|down_proj|fc1|fc2|c_fc|w1|w2|w3)(\.|$)")),
)


def module_type(name: str) -> str:
    """Classify a parameter name as one of `embed`, `attn`, `mlp`, `norm`, `lm_head` or `other`.

    Norms are tested before attention so that `post_attention_layernorm` counts as a norm.
    """
    for kind, pattern in _PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


def _row(selected: int, total: int, region_total: int) -> dict[str, Any]:
    return {
        "selected": selected,
        "total": total,
        "fraction": selected / total if total else 0.0,  # of that group's entries
        "share": selected / region_total if region_total else 0.0,  # of the region's entries
    }


def region_stats(counts: dict[str, int], fingerprint: dict[str, tuple[list[int], str]]) -> dict[str, Any]:
    """Selected entries by module type and by layer.

    Args:
        counts: selected entries per tensor name.
        fingerprint: name -> (shape, dtype) of every tensor of the model.

    Returns:
        `dict` with `num_selected`, `num_total`, `fraction`, `by_module` (type -> row) and
        `by_layer` (layer index as a string, or `"none"` for tensors outside decoder layers -> row),
        each row holding `selected`, `total`, `fraction` (of the group) and `share` (of the region).
    """
    region_total = sum(counts.values())
    total = sum(math.prod(shape) for shape, _ in fingerprint.values())
    by_module: dict[str, list[int]] = {k: [0, 0] for k in MODULE_TYPES}
    by_layer: dict[int | None, list[int]] = {}
    for name, (shape, _dtype) in fingerprint.items():
        n, sel = math.prod(shape), counts.get(name, 0)
        row = by_module[module_type(name)]
        row[0] += sel
        row[1] += n
        lrow = by_layer.setdefault(layer_index(name), [0, 0])
        lrow[0] += sel
        lrow[1] += n
    layers = sorted(k for k in by_layer if k is not None)
    layer_rows = {str(k): _row(*by_layer[k], region_total) for k in layers}
    if None in by_layer:
        layer_rows["none"] = _row(*by_layer[None], region_total)
    return {
        "num_selected": region_total,
        "num_total": total,
        "fraction": region_total / total if total else 0.0,
        "by_module": {k: _row(s, t, region_total) for k, (s, t) in by_module.items() if t},
        "by_layer": layer_rows,
    }
