"""The built-in tiny world: six letter-string tasks (three conflicting pairs), harmful requests and
benign look-alikes split into train and held-out parts, a byte-level BPE tokenizer with a chat
template, and a tiny Llama pretrained on the world's text (`base`) then aligned with instruction +
safety SFT (`aligned`). Deterministic for a seed; models are built on first use and cached.
"""

from safe_cpift.toyworld.safety import HELPFUL_TEST, HELPFUL_TRAIN, REFUSALS_TEST, REFUSALS_TRAIN
from safe_cpift.toyworld.tasks import TASK_NAMES
from safe_cpift.toyworld.world import CODE_VERSION, ToyWorld, ToyWorldConfig, build_info, default_cache_dir

__all__ = [
    "CODE_VERSION", "HELPFUL_TEST", "HELPFUL_TRAIN", "REFUSALS_TEST", "REFUSALS_TRAIN", "TASK_NAMES",
    "ToyWorld", "ToyWorldConfig", "build_info", "default_cache_dir",
]
