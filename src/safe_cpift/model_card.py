"""Model card (README.md) for the final safe_cpift model, with the run's results table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_text
from safe_cpift.report_tables import (
    comparison_sentences,
    integrity_line,
    limitations,
    methods_table,
    task_names,
)

__all__ = ["model_card_text", "write_model_card"]


def model_card_text(results: Mapping[str, Any], *, command: str | None = None,
                    base_model: str | None = None) -> str:
    """The model card: what the model is, how it was trained, the results table and the caveats."""

    core = results.get("safety_core") or {}
    base = base_model or results.get("aligned_model")
    front = ["---", "library_name: transformers", "tags:", "- safe-cpift", "- cpi-ft", "- safety"]
    if base and "/" in str(base) and not Path(str(base)).exists():
        front.append(f"base_model: {base}")
    front.append("---")
    intact = core.get("intact") is True
    parts = [
        *front, "",
        "# safe_cpift fine-tuned model", "",
        "Fine-tuned from an aligned chat model with Safe-CPI-FT: Core Parameter Isolation Fine-Tuning in "
        "which the model's *safety core* (the parameter entries a short safety fine-tune moved most) is "
        "protected during fusion and frozen during training, and safety examples are mixed into each stage.",
        "",
        f"- starting model: `{base or results.get('reference', 'aligned')}`",
        f"- tasks: {', '.join(f'`{t}`' for t in task_names(results))}",
    ]
    if core:
        parts.append(f"- safety core: top_p {core.get('top_p')}, scope {core.get('scope')}, "
                     f"{core.get('entries')} entries")
    parts += ["", f"**{integrity_line(results)}**" if intact else f"**⚠ {integrity_line(results).upper()} ⚠**", "",
              "## Results (held-out data; this model is `safe_cpift`)", "", methods_table(results), "",
              *[f"- {s}" for s in comparison_sentences(results)], "",
              "## Limitations", "", *[f"- {s}" for s in limitations(results)],
              "- Refusal is judged by a rule-based detector of refusal phrasings, not by a human or a "
              "judge model; it measures refusing, not the harm of an answer.", ""]
    if command:
        parts += ["## Reproduce", "", "```", command, "```", ""]
    return "\n".join(parts)


def write_model_card(results: Mapping[str, Any], model_dir: str | Path, *, command: str | None = None,
                     base_model: str | None = None) -> Path:
    """Write `model_dir/README.md` (atomically) and return its path."""
    path = Path(model_dir) / "README.md"
    atomic_write_text(path, model_card_text(results, command=command, base_model=base_model))
    return path
