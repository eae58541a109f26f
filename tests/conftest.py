"""Shared fixtures: everything is built locally, nothing reaches the hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from scripts.tiny import qwen_tokenizer as build_qwen_tokenizer  # noqa: E402
from scripts.tiny import tiny_llama as make_tiny_llama  # noqa: E402
from scripts.tiny import tiny_qwen2 as make_tiny_qwen2  # noqa: E402
from scripts.tiny import word_tokenizer as build_word_tokenizer  # noqa: E402

torch.set_num_threads(1)
torch.set_flush_denormal(True)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (public datasets; read-only)."""
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared data folder at {SHARED}")
    return SHARED


@pytest.fixture
def tiny_llama():
    return make_tiny_llama


@pytest.fixture(scope="session")
def word_tokenizer():
    """A word-level tokenizer with a chat template, for trainer tests that need no real text."""
    return build_word_tokenizer()


@pytest.fixture
def tiny_qwen2():
    """Builder of a tiny Qwen2 with tied embeddings: `tiny_qwen2(seed=0, dtype=torch.float32)`."""
    return make_tiny_qwen2


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """A word-level tokenizer with Qwen2.5's ChatML template (default system turn, no generation markers)."""
    return build_qwen_tokenizer()


@pytest.fixture(scope="module")
def fusion_kernels():
    """`merge.kernels` loaded for one test module, and unloaded after it (other modules keep torch's path)."""
    from safe_cpift.merge import kernels

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels._LAZY, "value", kernels._LAZY.value)
        mp.setattr(kernels._LAZY, "tried", kernels._LAZY.tried)
        assert kernels.warm_up(), "numba is missing: pip install -c constraints-cpu.txt -e '.[dev]'"
        yield kernels.kernels()
