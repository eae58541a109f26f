"""One dtype policy through fusion: float32 compute, exact transplants, `auto` = the checkpoints' dtype."""

import torch

from safe_cpift import CoreRegion
from safe_cpift.merge import fuse_with_manifest


def _tuned(model, seed: int, scale: float = 2e-4):
    """A float32 copy of `model` moved by small steps (below bf16's resolution for most entries)."""
    gen = torch.Generator().manual_seed(seed)
    return {n: p.detach().float() + scale * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}


def _params(model):
    return {n: p.detach() for n, p in model.named_parameters()}


def test_bf16_base_with_fp32_task_models(tiny_qwen2, qwen_tokenizer):
    base = tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16)
    theta0 = _params(base)
    tasks = {"a": _tuned(base, 1), "b": _tuned(base, 2)}
    regions = {n: CoreRegion.from_update(theta0, sd, top_p=0.05, scope="global", progress=False) for n, sd in tasks.items()}
    safety = CoreRegion.from_update(theta0, _tuned(base, 3), top_p=0.02, scope="global", progress=False)
    fused, manifest = fuse_with_manifest(theta0, tasks, regions, protect=safety)
    assert manifest["dtype"]["written"] == ["float32"] and manifest["counts"]["core_rounded"] == 0
    def mask(region, name):
        m = torch.zeros(theta0[name].numel(), dtype=torch.bool)
        m[region.indices(name).long()] = True
        return m

    core, exact = {}, 0
    for name, out in fused.items():
        assert out.dtype == torch.float32
        flat = out.reshape(-1)
        ma, mb, ms = mask(regions["a"], name), mask(regions["b"], name), mask(safety, name)
        for task, only in (("a", ma & ~mb & ~ms), ("b", mb & ~ma & ~ms)):  # transplanted entries are bit-exact
            assert torch.equal(flat[only], tasks[task][name].reshape(-1)[only])
            exact += int(only.sum())
        assert torch.equal(flat[ms], theta0[name].reshape(-1)[ms].float())  # protected: θ0's values, exactly
        core[name] = ma | mb | ms
    assert exact > 0
    rest = torch.cat([(fused[n].reshape(-1) == theta0[n].reshape(-1).float())[~core[n]] for n in fused])
    assert rest.float().mean() < 0.05, "fused non-core entries fell back to θ0's values"


def test_narrow_output_dtype_is_counted_not_hidden(tiny_qwen2, qwen_tokenizer):
    base = tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16)
    theta0 = _params(base)
    tasks = {"a": _tuned(base, 1), "b": _tuned(base, 2)}
    regions = {n: CoreRegion.from_update(theta0, sd, top_p=0.05, scope="global", progress=False) for n, sd in tasks.items()}
    fused, manifest = fuse_with_manifest(theta0, tasks, regions, dtype="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in fused.values())
    assert manifest["counts"]["core_rounded"] > 0


def test_auto_is_the_checkpoint_dtype(tiny_qwen2, qwen_tokenizer, tmp_path):
    base = tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    theta0 = _params(base)
    tasks = {"a": {n: t.bfloat16() for n, t in _tuned(base, 1, scale=0.05).items()}}
    regions = {"a": CoreRegion.from_update(theta0, tasks["a"], top_p=0.05, progress=False)}
    out, manifest = fuse_with_manifest(tmp_path / "base", tasks, regions, out_dir=tmp_path / "fused")
    assert manifest["dtype"]["written"] == ["bfloat16"]
    from safe_cpift.models import load_causal_lm

    model = load_causal_lm(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    idx = regions["a"].indices("model.norm.weight").long()
    assert torch.equal(model.model.norm.weight.detach().reshape(-1)[idx], tasks["a"]["model.norm.weight"].reshape(-1)[idx])
