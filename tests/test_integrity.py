"""The safety-core integrity check compares like with like across dtypes: no false alarms, no missed changes."""

import torch

from safe_cpift import CoreRegion
from safe_cpift.pipeline.safety_core import save_protected_values, verify_safety_core


def _setup(tiny_qwen2, qwen_tokenizer, tmp_path):
    theta0 = {n: p.detach() for n, p in tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16).named_parameters()}
    gen = torch.Generator().manual_seed(0)
    region = CoreRegion.from_scores({n: torch.rand(t.shape, generator=gen) for n, t in theta0.items()}, top_p=0.1)
    save_protected_values(region, theta0, tmp_path / "protected.safetensors")
    return theta0, region, tmp_path / "protected.safetensors"


def test_fp32_model_holding_the_bf16_values_is_intact(tiny_qwen2, qwen_tokenizer, tmp_path):
    theta0, region, protected = _setup(tiny_qwen2, qwen_tokenizer, tmp_path)
    fp32 = {n: t.float() for n, t in theta0.items()}
    check = verify_safety_core(fp32, region, protected)
    assert check["intact"] and check["mismatched"] == 0 and check["entries"] == region.num_selected
    assert check["compared_dtypes"] == {"model": ["float32"], "protected": ["bfloat16"]}


def test_changes_below_bf16_resolution_are_found(tiny_qwen2, qwen_tokenizer, tmp_path):
    theta0, region, protected = _setup(tiny_qwen2, qwen_tokenizer, tmp_path)
    fp32 = {n: t.float().clone() for n, t in theta0.items()}
    name = "model.layers.0.mlp.up_proj.weight"
    i = int(region.indices(name)[0])
    flat = fp32[name].view(-1)
    flat[i] = flat[i] * (1 + 2**-12)  # survives in float32, rounds back to the same bf16 value
    assert flat[i].bfloat16() == theta0[name].view(-1)[i]
    check = verify_safety_core(fp32, region, protected)
    assert not check["intact"] and check["mismatched"] == 1 and check["first_mismatch"] == name


def test_narrower_model_than_protected_values(tiny_qwen2, qwen_tokenizer, tmp_path):
    theta0, region, _ = _setup(tiny_qwen2, qwen_tokenizer, tmp_path)
    fp32 = {n: t.float() for n, t in theta0.items()}
    save_protected_values(region, fp32, tmp_path / "p32.safetensors")
    assert verify_safety_core(theta0, region, tmp_path / "p32.safetensors")["intact"]  # exact in bf16
    moved = {n: t.float() + 1e-3 for n, t in theta0.items()}
    save_protected_values(region, moved, tmp_path / "moved.safetensors")
    check = verify_safety_core(theta0, region, tmp_path / "moved.safetensors")
    assert not check["intact"] and check["mismatched"] == region.num_selected
