"""Safety protections around fine-tuning, each usable alone and named in recipes through a registry.

| name | module | kind | what it does |
|---|---|---|---|
| `freeze` | `safe_cpift.protect.freeze` | callback | keeps a core region (safety core, safety layers) bit-identical |
| `guard` | `safe_cpift.protect.guard` | callback | probes refusal every N steps: warn, stop or roll back |
| `direction` | `protect.direction` | callback | AsFT-style penalty on updates orthogonal to θ_aligned − θ_base |
| `projection` | `protect.direction` | callback | removes the task-gradient part that conflicts with the safety gradient |
| `token_kl` | `protect.token_kl` | callback | KL to the aligned model on the first response tokens of safety chats |
| `safety_mix` | `safe_cpift.pipeline` | data | safety chats (refusals + benign look-alike answers) mixed into SFT |
| `repair` | `protect.repair` | post-hoc | re-adds a scaled safety vector (RESTA) / restores entries after training |
| `safe_lora` | `protect.safe_lora` | post-hoc | projects LoRA updates far from the alignment subspace onto it (Safe LoRA) |

A recipe names a composition (e.g. `safe_cpift` = `freeze` + `safety_mix`); see docs/efficacy.md for
what each measured.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROTECTIONS", "Protection", "get_protection"]


@dataclass(frozen=True)
class Protection:
    """A registry entry: where the mechanism lives and when it acts (`callback`, `data`, `post-hoc`)."""

    name: str
    target: str
    kind: str
    help: str


PROTECTIONS: dict[str, Protection] = {p.name: p for p in (
    Protection("freeze", "safe_cpift.protect.freeze:CoreFreezeCallback", "callback",
               "keep a core region's entries bit-identical (exact under AdamW)"),
    Protection("guard", "safe_cpift.protect.guard:SafetyGuardCallback", "callback",
               "probe refusal every N steps; warn, stop or roll back"),
    Protection("direction", "safe_cpift.protect.direction:AlignmentDirectionPenalty", "callback",
               "AsFT-style penalty on the update orthogonal to the alignment direction"),
    Protection("projection", "safe_cpift.protect.direction:SafetyGradientProjection", "callback",
               "drop the task-gradient component that conflicts with the safety gradient"),
    Protection("token_kl", "safe_cpift.protect.token_kl:ResponseTokenKL", "callback",
               "KL to the aligned model on the first response tokens of safety chats"),
    Protection("safety_mix", "safe_cpift.pipeline.common:mix", "data",
               "safety chats (refusals and benign look-alike answers) mixed into the SFT data"),
    Protection("repair", "safe_cpift.protect.repair:add_safety_vector", "post-hoc",
               "re-add a scaled safety vector (RESTA) or restore entries after training"),
    Protection("safe_lora", "safe_cpift.protect.safe_lora:project_lora", "post-hoc",
               "project LoRA updates far from the alignment subspace onto it (Safe LoRA)"),
)}


def get_protection(name: str) -> Protection:
    """The registry entry `name`, with a did-you-mean for a misspelt one."""
    import difflib

    if name not in PROTECTIONS:
        close = difflib.get_close_matches(name, PROTECTIONS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ValueError(f"unknown protection `{name}`{hint} available: {', '.join(PROTECTIONS)}")
    return PROTECTIONS[name]
