"""Safe LoRA (`safe_cpift.protect.safe_lora`): the projection against the paper's formula computed directly,
its layer selection, and the same result on a PEFT model and on the merged model."""

from __future__ import annotations

import copy

import pytest
import torch
from scripts.tiny import tiny_llama

from safe_cpift.protect.safe_lora import project_lora, safe_lora_projection, select_layers


def lora_model(aligned, seed: int = 0, r: int = 4, alpha: float = 8.0):
    """`aligned` with a LoRA adapter on q_proj / v_proj whose B is random (a trained-looking update)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(aligned), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@torch.no_grad()
def direct(model, aligned_sd, base_sd):
    """The paper's quantities formed in full: name -> (ΔW, C ΔW, cos) for each LoRA layer, in float64."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in model.get_base_model().named_modules():
        if isinstance(m, LoraLayer):
            w = f"{name}.weight"
            dw = (m.lora_B["default"].weight @ m.lora_A["default"].weight).double() * m.scaling["default"]
            v = (aligned_sd[w] - base_sd[w]).double()
            c = v @ v.T / torch.linalg.matrix_norm(v)
            cdw = c @ dw
            out[w] = (dw, cdw, float((dw * cdw).sum() / (dw.norm() * cdw.norm())))
    return out


@pytest.fixture(scope="module")
def pair():
    base, aligned = tiny_llama(seed=1), tiny_llama(seed=2)
    return base, aligned, base.state_dict(), aligned.state_dict()


def test_project_lora_matches_the_papers_formula_and_projects_only_below_tau(pair):
    _, aligned, b_sd, a_sd = pair
    model = lora_model(aligned)
    want = direct(model, a_sd, b_sd)
    assert len(want) == 4  # 2 layers x (q_proj, v_proj)
    measured = project_lora(copy.deepcopy(model), a_sd, b_sd, threshold=0.0)  # nothing is below 0: measure only
    assert measured["projected"] == [] and set(measured["cosine"]) == set(want)
    for name, (_, _, cos) in want.items():
        assert measured["cosine"][name] == pytest.approx(cos, abs=1e-6)
        assert 0.0 <= cos <= 1.0  # ⟨ΔW, CΔW⟩ = ‖VᵀΔW‖² / ‖V‖ ≥ 0
        dw, cdw, _ = want[name]
        assert measured["kept_norm"][name] == pytest.approx(float(cdw.norm() / dw.norm()), rel=1e-6)
    ranked = sorted(want, key=lambda n: want[n][2])
    tau = (want[ranked[1]][2] + want[ranked[2]][2]) / 2  # two layers below, two above
    out = project_lora(model, a_sd, b_sd, threshold=tau)
    assert sorted(out["projected"]) == sorted(ranked[:2])
    got = direct(model, a_sd, b_sd)
    for name in want:
        expected = want[name][1] if name in ranked[:2] else want[name][0]  # C ΔW below τ, ΔW untouched above
        assert torch.allclose(got[name][0], expected, atol=1e-6), name


def test_num_layers_projects_the_least_aligned_layers(pair):
    _, aligned, b_sd, a_sd = pair
    model = lora_model(aligned, seed=3)
    want = direct(model, a_sd, b_sd)
    out = project_lora(model, a_sd, b_sd, num_layers=1)
    assert out["projected"] == [min(want, key=lambda n: want[n][2])]
    assert select_layers({"a": 0.2, "b": 0.1, "c": 0.9}, num_layers=2) == ["a", "b"]
    assert select_layers({"a": 0.2, "b": 0.1, "c": 0.9}, threshold=0.15) == ["b"]
    with pytest.raises(ValueError, match="`threshold`"):
        select_layers({"a": 0.2}, threshold=None)


def test_adapter_and_merged_projection_give_the_same_model(pair):
    _, aligned, b_sd, a_sd = pair
    model = lora_model(aligned, seed=4)
    merged = copy.deepcopy(model).merge_and_unload()
    tau = sorted(direct(model, a_sd, b_sd)[n][2] for n in direct(model, a_sd, b_sd))[2]  # projects the two lowest
    on_adapter = project_lora(model, a_sd, b_sd, threshold=tau)
    on_merged = safe_lora_projection(merged, a_sd, b_sd, threshold=tau)
    assert on_adapter["projected"] and sorted(on_adapter["projected"]) == sorted(on_merged["projected"])
    projected = model.merge_and_unload().state_dict()
    for name, w in merged.state_dict().items():
        assert torch.allclose(w, projected[name], atol=1e-5), name
    untouched = set(a_sd) - set(on_adapter["cosine"])  # no adapter there: exactly the aligned weights
    assert all(torch.equal(projected[n], a_sd[n]) for n in untouched)


def test_errors_name_the_problem(pair):
    base, aligned, b_sd, a_sd = pair
    with pytest.raises(ValueError, match="no LoRA layers"):
        project_lora(copy.deepcopy(aligned), a_sd, b_sd)
    model = lora_model(aligned)
    partial = {k: v for k, v in b_sd.items() if "q_proj" not in k}
    with pytest.raises(ValueError, match="missing from `aligned` or `base`"):
        project_lora(model, a_sd, partial)
