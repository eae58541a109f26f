"""The built-in tiny world: six user tasks (v2, the default: sentence answers of three skills; v1:
letter strings in three conflicting pairs), harmful requests and
benign look-alikes split into train and held-out parts, a byte-level BPE tokenizer with a chat
template, and a tiny Llama pretrained on the world's text (`base`) then aligned with instruction +
safety SFT (`aligned`). Deterministic for a seed; models are built on first use and cached.
"""

from safe_cpift.toyworld.safety import HELPFUL_TEST, HELPFUL_TRAIN, REFUSALS_TEST, REFUSALS_TRAIN
from safe_cpift.toyworld.world import (
    CODE_VERSION,
    DEFAULT_WORLD_VERSION,
    ToyWorld,
    ToyWorldConfig,
    build_info,
    default_cache_dir,
    world_task_names,
)

TASK_NAMES = world_task_names(DEFAULT_WORLD_VERSION)  # the default world's tasks

__all__ = [
    "CODE_VERSION", "HELPFUL_TEST", "HELPFUL_TRAIN", "REFUSALS_TEST", "REFUSALS_TRAIN", "TASK_NAMES",
    "DEFAULT_WORLD_VERSION", "ToyWorld", "ToyWorldConfig", "build_info", "default_cache_dir", "world_task_names",
]
