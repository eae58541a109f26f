"""`PipelineSpec`: everything the Safe-CPI-FT pipeline needs, independent of where it came from.

A recipe (`safe_cpift.recipe.Recipe`) or the built-in tiny world is turned into a `PipelineSpec` by
`safe_cpift.pipeline.from_recipe`; the stages only ever read this object. Sizes are counted in
training *examples* (one epoch over a dataset of exactly that many rows), so the cost of every method
is comparable: `examples_seen` is what each method paid.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METHODS = ("aligned", "multitask_sft", "sequential_sft", "safety_mix_sft", "cpift", "safe_cpift")
BASELINES = ("multitask_sft", "sequential_sft", "safety_mix_sft", "cpift")
# peer baselines from the safety literature, run when asked for (`sppft`: frozen safety layers; `resta`:
# multitask_sft + the safety vector re-added; `lora_sft` / `safe_lora`: LoRA SFT, and Safe LoRA's projection
# of its adapter; `protected_sft`: multi-task SFT with safe_cpift's protections and no CPI-FT pipeline, the
# ablation of the pipeline itself); in report order among all methods
PEER_BASELINES = ("sppft", "resta", "lora_sft", "safe_lora", "protected_sft")
ALL_METHODS = ("aligned", "multitask_sft", "sequential_sft", "safety_mix_sft", *PEER_BASELINES, "cpift", "safe_cpift")
# the methods trained with `protections` (`protected_sft`: the same composition without the CPI-FT pipeline)
PROTECTED_METHODS = ("safe_cpift", "protected_sft")
PROTECTIONS = ("freeze", "safety_mix", "direction", "projection", "token_kl", "repair")
DEFAULT_PROTECTIONS = ("freeze", "safety_mix", "token_kl")
SCORERS = ("update", "alignment", "importance")
SCOPES = ("global", "tensor", "layer")
PROTECT_SOURCES = ("aligned", "safety_probe")
BALANCED = "balanced"  # `replay_fraction`: every task seen so far gets an equal share of a stage

Evaluator = Callable[[Any, Any], dict[str, Any]]
DatasetLoader = Callable[[], Any]


@dataclass
class TrainSettings:
    """Optimiser settings shared by every SFT of the run (probes, stages, baselines).

    Args:
        learning_rate (`float`, defaults to `1e-3`).
        batch_size (`int`, defaults to `16`): per-device batch size.
        max_length (`int`, *optional*): truncation length passed to `SFTConfig.max_length`.
        overrides (`dict`, *optional*): further `trl.SFTConfig` fields (e.g. `weight_decay`), passed as
            written.
        precision (`str`, defaults to `"auto"`): `fp32`, `bf16-mixed`, `bf16-sr` or `auto` (`bf16-mixed`
            when `overrides` has `bf16: true`), see `safe_cpift.precision`.
    """

    learning_rate: float = 1e-3
    batch_size: int = 16
    max_length: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"

    def __post_init__(self) -> None:
        from safe_cpift.precision import resolve_precision

        self.precision = resolve_precision(self.precision, self.overrides)


@dataclass
class PipelineSpec:
    """The resolved inputs and settings of one Safe-CPI-FT run.

    Args:
        aligned_model (`str`): directory or hub id of the aligned model θ0 every method starts from.
        task_names (`list[str]`): the user tasks, in recipe order.
        load_task (`Callable[[str], Dataset]`): task name → training `messages` dataset.
        load_safety (`Callable[[], Dataset]`): the safety training data (`messages`).
        evaluate (`Callable[[model, tokenizer], dict]`): returns `task_scores`, `task_mean`,
            `refusal_rate`, `over_refusal_rate` for a model (the same suites for every method).
        seed (`int`, defaults to `0`).
        tokenizer (`str`, *optional*): defaults to `aligned_model`.
        base_model (`str`, *optional*): the pre-alignment model, needed by the `alignment` scorer.
        top_p / scope (task cores; the paper: global 1%).
        tau (`float`): Jaccard threshold joining tasks into one group.
        slerp_t (`float`): SLERP factor of the fusion (0.5 for three or more tasks).
        slerp_weights (`dict[str, float]`, *optional*): one weight per task for the weighted N-model
            SLERP of the fusion (`safe_cpift.merge.fuse(weights=...)`); equal weights when `None`.
        safety_top_p / safety_scope / safety_scorer: the safety core.
        safety_mix (`float`): share of safety examples in each pipelined stage and in `safety_mix_sft`.
        protect_source (`str`): `aligned` (θ0's values are protected) or `safety_probe` (the values
            of the short safety SFT).
        safety_probe_examples / probe_examples (`int`): training examples of the safety probe and of
            each task probe (one epoch each).
        probe_lora (`dict`, *optional*): train the task probes as LoRA adapters, merged into the probe
            models (`rank`, `alpha`, `target_modules`, `learning_rate`; see `safe_cpift.pipeline.probes`);
            `None` (default): full fine-tunes.
        examples_per_method (`int`): the budget of every method's final fine-tuning: each SFT baseline,
            and the pipelined stages of `cpift` / `safe_cpift` together (split over groups like the tasks).
        include_probes (`bool`): give each SFT baseline `safe_cpift`'s probe examples on top, so that
            it trains on exactly as many examples as `safe_cpift` in total (the fair default).
        single_task (`str`): the report's single-task reference (the seesaw check): `probe` (default) scores
            the probe models, free but at `probe_examples` per task; `matched` trains each task alone at
            `multitask_sft`'s examples per task (costs one more multi-task budget, outside every method's).
        task_scorer (`str`): `update` (the paper) or `importance` for the task cores.
        freeze_safety_core / freeze_earlier_groups / mix_safety (`bool`): the parts of safe_cpift's
            pipelined SFT (each can be switched off for an ablation).
        replay_fraction (`float` or `"balanced"`): share of each later stage's task examples drawn from
            the tasks of earlier groups (mixed-task stages, as in the paper); 0 trains a stage on its group
            alone; `balanced` (default) gives every task seen so far an equal share of the stage
            (docs/efficacy.md section 00: better than 0.8 for `safe_cpift` on every seed).
        track_stages (`bool`): score every task after fusion and after every pipelined stage.
        protections (`tuple[str, ...]`): `safe_cpift`'s composition of `PROTECTIONS` (`freeze` and
            `safety_mix` are `freeze_safety_core` and `mix_safety`; see `safe_cpift.pipeline.protections`).
        protect_settings (`dict`): strengths and settings of the protections (`direction_strength`,
            `projection_every`, `token_kl_strength`, `token_kl_first_k`, `repair_scales`, `repair_margin`,
            `sppft_top_p`; for `lora_sft` / `safe_lora`: `lora_r`, `lora_alpha`, `lora_target_modules`,
            `lora_learning_rate`, `safe_lora_threshold`, `safe_lora_layers`, see `safe_cpift.pipeline.lora`).
        methods (`tuple[str, ...]`): which of `ALL_METHODS` to run (`aligned` and `safe_cpift` always run).
        train (`TrainSettings`).
        dtype (`str`): the dtype models are evaluated and the final model is written in; `auto` = the
            checkpoint's own dtype. Training loads weights in the precision's dtype (docs/dtypes.md).
        trust_remote_code: how models are loaded (`safe_cpift.models.load_causal_lm`).
        prune_models (`bool`): delete each stage's model once every stage that reads it is done
            (`safe_cpift.pipeline.prune`); final models stay.
        device (`str`, *optional*): where models train and are evaluated; `None` follows `--device` /
            `$SAFE_CPIFT_DEVICE`, else `auto` (a GPU when present). See `safe_cpift.runtime.resolve_device`.
        num_threads (`int`, *optional*): torch CPU threads (`configure_runtime`).
        recipe (`dict`): the recipe as written, stored in the manifest.
        name (`str`): run name used in the report.
        notes (`list[str]`): what the source of this spec could not provide (copied to results).
    """

    aligned_model: str
    task_names: list[str]
    load_task: Callable[[str], Any]
    load_safety: DatasetLoader
    evaluate: Evaluator
    seed: int = 0
    tokenizer: str | None = None
    base_model: str | None = None
    top_p: float = 0.01
    scope: str = "global"
    tau: float = 0.1
    slerp_t: float = 0.5
    slerp_weights: dict[str, float] | None = None
    safety_top_p: float = 0.01
    safety_scope: str = "global"
    safety_scorer: str = "update"
    safety_mix: float = 0.03
    protect_source: str = "aligned"
    safety_probe_examples: int = 256
    probe_examples: int = 256
    probe_lora: dict[str, Any] | None = None
    examples_per_method: int = 1024
    include_probes: bool = True
    single_task: str = "probe"
    task_scorer: str = "update"
    freeze_safety_core: bool = True
    freeze_earlier_groups: bool = True
    mix_safety: bool = True
    replay_fraction: float | str = BALANCED
    track_stages: bool = True
    protections: tuple[str, ...] = DEFAULT_PROTECTIONS
    protect_settings: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = METHODS
    train: TrainSettings = field(default_factory=TrainSettings)
    dtype: str = "auto"
    device: str | None = None
    prune_models: bool = False
    trust_remote_code: bool = False
    num_threads: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    name: str = "safe-cpift run"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if not self.task_names:
            problems.append("`tasks` is empty: name at least one task")
        if len(set(self.task_names)) != len(self.task_names):
            problems.append(f"`tasks` has duplicate names: {self.task_names}")
        for t in self.task_names:
            if not t or "/" in t or t.startswith("."):
                problems.append(f"task name {t!r} must be a plain, non-empty name (it names a stage directory)")
        for fld in ("top_p", "safety_top_p"):
            v = getattr(self, fld)
            if not 0 < v <= 1:
                problems.append(f"`{fld}` must be in (0, 1], got {v}")
        for fld, allowed in (("scope", SCOPES), ("safety_scope", SCOPES), ("safety_scorer", SCORERS),
                             ("protect_source", PROTECT_SOURCES)):
            if getattr(self, fld) not in allowed:
                problems.append(f"`{fld}` must be one of {', '.join(allowed)}, got {getattr(self, fld)!r}")
        if not 0 <= self.safety_mix < 1:
            problems.append(f"`safety_mix` must be in [0, 1), got {self.safety_mix}")
        r = self.replay_fraction
        if r != BALANCED and (isinstance(r, (bool, str)) or not isinstance(r, (int, float)) or not 0 <= r < 1):
            problems.append(f"`replay_fraction` must be a number in [0, 1) or {BALANCED!r}, got {r!r}")
        if self.safety_scorer == "alignment" and not self.base_model:
            problems.append("`safety_scorer: alignment` needs `base_model` (the model before alignment)")
        if self.protect_source == "safety_probe" and self.safety_scorer != "update":
            problems.append("`protect_source: safety_probe` needs `safety_scorer: update` (no probe is trained otherwise)")
        if self.single_task not in SINGLE_TASK_BUDGETS:
            problems.append(f"`single_task` must be one of {', '.join(SINGLE_TASK_BUDGETS)}, got {self.single_task!r}")
        if self.task_scorer not in ("update", "importance"):
            problems.append(f"`task_scorer` must be update or importance, got {self.task_scorer!r}")
        for fld in ("safety_probe_examples", "probe_examples", "examples_per_method"):
            v = getattr(self, fld)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"`{fld}` must be an integer >= 1, got {v!r}")
        if isinstance(self.examples_per_method, int) and self.examples_per_method < len(self.task_names):
            problems.append(f"`examples_per_method` ({self.examples_per_method}) must be at least the number of "
                            f"tasks ({len(self.task_names)})")
        problems += probe_lora_problems(self.probe_lora)
        if self.probe_lora is not None and self.scope == "tensor" and self.task_scorer == "update":
            problems.append("`probe_lora` needs `scope: global` or `layer` for the task cores: with `tensor` every "
                            "tensor gets its share of a core, also those LoRA leaves unchanged (their entries all tie "
                            "at 0)")
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            problems.append(f"unknown methods {unknown}; available: {', '.join(ALL_METHODS)}")
        unknown = [m for m in self.protections if m not in PROTECTIONS]
        if unknown:
            problems.append(f"unknown protections {unknown}; available: {', '.join(PROTECTIONS)}")
        needs_base = sorted(({"direction", "repair"} & set(self.protections))
                            | ({"resta", "safe_lora"} & set(self.methods)))
        if needs_base and not self.base_model:
            problems.append(f"{', '.join(needs_base)} need `base_model` (the model before alignment): "
                            "θ_aligned − θ_base is their safety direction")
        if problems:
            raise ValueError("invalid pipeline settings:\n  - " + "\n  - ".join(problems))
        self.methods = tuple(m for m in ALL_METHODS if m in set(self.methods) | {"aligned", "safe_cpift"})
        for method, needs in (("resta", "multitask_sft"), ("safe_lora", "lora_sft")):  # reuse that method's model
            if method in self.methods and needs not in self.methods:
                self.methods = tuple(m for m in ALL_METHODS if m in set(self.methods) | {needs})
        # the composition and the older switches say the same thing
        self.freeze_safety_core = self.freeze_safety_core and "freeze" in self.protections
        self.mix_safety = self.mix_safety and "safety_mix" in self.protections

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.aligned_model

    def stage_seed(self, stage: str) -> int:
        """A seed for `stage`, fixed by the run seed and the stage name (so resume replays it)."""
        return (self.seed * 1_000_003 + zlib.crc32(stage.encode("utf-8"))) % (2**31 - 1)


SINGLE_TASK_BUDGETS = ("probe", "matched")  # PipelineSpec.single_task
PROBE_LORA_KEYS = ("rank", "alpha", "target_modules", "learning_rate")


def probe_lora_problems(settings: dict[str, Any] | None) -> list[str]:
    """What is wrong with `PipelineSpec.probe_lora` (empty when it is `None` or valid)."""
    if settings is None:
        return []
    if not isinstance(settings, dict):
        return [f"`probe_lora` must be a dict with {', '.join(PROBE_LORA_KEYS)} (or None), got {settings!r}"]
    problems = [f"unknown key `probe_lora.{k}`; keys: {', '.join(PROBE_LORA_KEYS)}" for k in settings
                if k not in PROBE_LORA_KEYS]
    rank = settings.get("rank", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        problems.append(f"`probe_lora.rank` must be an integer >= 1, got {rank!r}")
    for key in ("alpha", "learning_rate"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            problems.append(f"`probe_lora.{key}` must be a number > 0, got {value!r}")
    return problems
