"""CoreRegion: exact recovery of planted cores, ties, scopes, validation, set algebra, stats."""

import random

import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.regions import CoreRegion, normalize_name
from safe_cpift.regions import scoring as region_scoring
from safe_cpift.regions import select as region_select


def planted_pair(seed=0, frac=0.02):
    """(base, tuned, planted) where planted entries moved by >= 1 and all others by < 1e-3."""
    base = {k: v.detach().clone() for k, v in make_tiny_llama(seed=seed).state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    tuned, planted = {}, {}
    for name, v in base.items():
        n = v.numel()
        delta = torch.rand(n, generator=g) * 1e-3
        sel = torch.randperm(n, generator=g)[: max(1, int(n * frac))]
        delta[sel] = 1.0 + torch.rand(sel.numel(), generator=g)
        sign = torch.where(torch.rand(n, generator=g) > 0.5, 1.0, -1.0)
        tuned[name] = v + (delta * sign).view(v.shape)
        planted[name] = set(sel.tolist())
    return base, tuned, planted


def test_global_scope_recovers_planted_core_exactly():
    base, tuned, planted = planted_pair()
    k = sum(len(s) for s in planted.values())
    total = sum(v.numel() for v in base.values())
    region = CoreRegion.from_update(base, tuned, top_p=k / total, scope="global")
    assert region.num_selected == k
    for name in base:
        assert set(region.indices(name).tolist()) == planted[name], name
    assert region.scope == "global" and region.scorer == "update"
    assert region.fraction == pytest.approx(k / total)


def test_tensor_scope_takes_top_p_of_every_tensor():
    base = {"a.weight": torch.zeros(100), "b.weight": torch.zeros(10, 20), "c.weight": torch.zeros(30)}
    g = torch.Generator().manual_seed(0)
    tuned = {k: torch.rand(v.shape, generator=g) * 1e-3 for k, v in base.items()}
    # plant 10% big updates in `a` and `b`; `c` only has tiny ones, its top 10% are its largest
    planted = {"c.weight": set(torch.topk(tuned["c.weight"], 3).indices.tolist())}
    for name in ("a.weight", "b.weight"):
        flat = tuned[name].view(-1)
        sel = torch.randperm(flat.numel(), generator=g)[: flat.numel() // 10]
        flat[sel] = 1.0 + torch.rand(sel.numel(), generator=g)
        planted[name] = set(sel.tolist())
    region = CoreRegion.from_update(base, tuned, top_p=0.1, scope="tensor")
    for name in base:
        assert set(region.indices(name).tolist()) == planted[name]
    # one global threshold instead: the 30 big updates, then the 3 largest tiny ones of any tensor
    glob = CoreRegion.from_update(base, tuned, top_p=0.1, scope="global")
    assert glob.num_selected == region.num_selected == 33
    assert set(glob.indices("b.weight").tolist()) >= planted["b.weight"]
    assert set(glob.indices("a.weight").tolist()) >= planted["a.weight"]
    assert glob.indices("c.weight").numel() < 3


def test_layer_scope_selects_whole_layers_by_summed_score():
    base = {k: v.detach().clone() for k, v in make_tiny_llama(layers=4).state_dict().items()}
    tuned = {k: v.clone() for k, v in base.items()}
    for k in tuned:
        if ".layers.2." in k:
            tuned[k] = base[k] + 1.0
    layer_size = sum(v.numel() for k, v in base.items() if ".layers.2." in k)
    total = sum(v.numel() for v in base.values())
    region = CoreRegion.from_update(base, tuned, top_p=0.5 * layer_size / total, scope="layer")
    assert region.metadata["layers"] == [2]
    assert region.num_selected == layer_size
    for k, v in base.items():
        assert region.indices(k).numel() == (v.numel() if ".layers.2." in k else 0)
    # more than one layer's worth: the next best layer (all equal -> lowest index) is added
    two = CoreRegion.from_update(base, tuned, top_p=1.5 * layer_size / total, scope="layer")
    assert two.metadata["layers"] == [0, 2]
    with pytest.raises(ValueError, match="`scope='layer'`"):
        CoreRegion.from_update({"w": torch.zeros(4)}, {"w": torch.ones(4)}, top_p=0.5, scope="layer")


def reference_topk(scores: dict, k: int) -> dict:
    """Brute force: sort by (score desc, natural name order, flat index asc)."""
    names = sorted(scores, key=region_scoring.natural_key)
    entries = [(-float(v), rank, i) for rank, n in enumerate(names) for i, v in enumerate(scores[n].view(-1).tolist())]
    entries.sort()
    out = {}
    for _, rank, i in entries[:k]:
        out.setdefault(names[rank], []).append(i)
    return {n: sorted(v) for n, v in out.items()}


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("floor", ["sampled", "none", "too_high", "too_low"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_topk_matches_brute_force_with_many_ties(monkeypatch, seed, floor, threads):
    monkeypatch.setattr(region_select, "CHUNK", 7)  # many chunks per tensor, pool reductions
    monkeypatch.setattr(region_select, "SAMPLE_BLOCK", 4)
    fixed = {"none": None, "too_high": 1e9, "too_low": -1.0}
    if floor in fixed:  # a misleading sample must never change the result, only the cost
        monkeypatch.setattr(region_select, "estimate_floor", lambda *a, _v=fixed[floor]: _v)
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.10.w": (5, 6), "layers.2.w": (40,), "layers.1.w": (3,), "emb": (9, 4), "z": (1,)}
    scores = {n: torch.randint(0, 4, s, generator=g).float() for n, s in shapes.items()}
    total = sum(v.numel() for v in scores.values())
    for k in (1, 5, 17, 60, total - 1):
        region = CoreRegion.from_scores(scores, top_p=k / total, scorer="custom", num_threads=threads)
        got = {n: region.indices(n).tolist() for n in region.names()}
        assert got == reference_topk(scores, k), k
        per_tensor = CoreRegion.from_scores(scores, top_p=k / total, scope="tensor", scorer="custom")
        for n, v in scores.items():
            kt = int(k / total * v.numel() + 0.5)
            expected = reference_topk({n: v}, kt).get(n, []) if kt else []
            assert per_tensor.indices(n).tolist() == expected, (k, n)


def test_ties_are_deterministic_and_independent_of_input_order():
    base = {f"model.layers.{i}.w": torch.zeros(10) for i in (10, 2, 1)}
    tuned = {k: torch.ones(10) for k in base}  # every score ties
    region = CoreRegion.from_update(base, tuned, top_p=15 / 30)
    # natural order: layers.1, layers.2, layers.10; lowest flat indices first
    assert region.indices("model.layers.1.w").tolist() == list(range(10))
    assert region.indices("model.layers.2.w").tolist() == list(range(5))
    assert region.indices("model.layers.10.w").numel() == 0
    shuffled = dict(reversed(list(base.items())))
    assert CoreRegion.from_update(shuffled, tuned, top_p=0.5) == region


def test_all_unchanged_entries_do_not_blow_up_the_pool():
    base = {f"t{i}": torch.zeros(1000) for i in range(5)}
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["t3"][[5, 7]] = 1.0
    region = CoreRegion.from_update(base, tuned, top_p=0.001)  # k = 5: 2 real updates + 3 ties at zero
    assert region.num_selected == 5
    assert region.indices("t3").tolist() == [5, 7]
    assert region.indices("t0").tolist() == [0, 1, 2]


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1", None])
def test_top_p_out_of_range_is_rejected_naming_top_p(bad):
    base = {"w": torch.zeros(10)}
    with pytest.raises(ValueError, match="`top_p`"):
        CoreRegion.from_update(base, {"w": torch.ones(10)}, top_p=bad)


def test_top_p_one_selects_everything_and_bad_scope_or_scorer_is_rejected():
    base = {"w": torch.zeros(3, 4), "b": torch.zeros(2)}
    tuned = {"w": torch.rand(3, 4), "b": torch.rand(2)}
    assert CoreRegion.from_update(base, tuned, top_p=1.0).num_selected == 14
    with pytest.raises(ValueError, match="`scope`"):
        CoreRegion.from_update(base, tuned, top_p=0.1, scope="row")
    with pytest.raises(ValueError, match="`scorer`"):
        CoreRegion.from_update(base, tuned, top_p=0.1, scorer="magic")


def test_base_and_tuned_must_match():
    with pytest.raises(ValueError, match="`w`.*shape"):
        CoreRegion.from_update({"w": torch.zeros(3)}, {"w": torch.zeros(4)}, top_p=0.5)
    with pytest.raises(ValueError, match="`v`"):
        CoreRegion.from_update({"w": torch.zeros(3)}, {"w": torch.zeros(3), "v": torch.zeros(1)}, top_p=0.5)


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="NaN"):
        CoreRegion.from_update({"w": torch.zeros(4)}, {"w": torch.tensor([1.0, float("nan"), 0, 0])}, top_p=0.5)


def test_which_tensors_count():
    model = make_tiny_llama()
    sd = dict(model.state_dict())
    sd["model.rotary_emb.inv_freq"] = torch.ones(4)
    sd["model.position_ids"] = torch.arange(4)
    region = CoreRegion.from_update(sd, {k: v.float() + 1 if v.is_floating_point() else v for k, v in sd.items()},
                                    top_p=0.01)
    assert "model.rotary_emb.inv_freq" not in region.fingerprint
    assert "model.position_ids" not in region.fingerprint
    assert set(region.fingerprint) == {n for n, _ in model.named_parameters()}
    # a module gives the same fingerprint as its state dict
    assert CoreRegion.from_update(model, model, top_p=0.01).fingerprint == region.fingerprint


def test_indices_mask_and_wrapped_names():
    base = {"model.layers.0.q_proj.weight": torch.zeros(4, 5)}
    tuned = {"model.layers.0.q_proj.weight": torch.arange(20.0).view(4, 5)}
    region = CoreRegion.from_update(base, tuned, top_p=0.2)
    idx = region.indices("model.layers.0.q_proj.weight")
    assert idx.dtype == torch.int64 and idx.tolist() == [16, 17, 18, 19]
    m = region.mask("model.layers.0.q_proj.weight")
    assert m.shape == (4, 5) and m[3, 1:].all() and int(m.sum()) == 4
    for wrapped in ("module.model.layers.0.q_proj.weight", "base_model.model.model.layers.0.q_proj.base_layer.weight",
                    "_orig_mod.model.layers.0.q_proj.weight"):
        assert torch.equal(region.indices(wrapped), idx)
    assert normalize_name("base_model.model.model.layers.0.q_proj.lora_A.default.weight") is None
    with pytest.raises(KeyError, match="not part of the model"):
        region.indices("model.layers.1.q_proj.weight")


def region_of(indices, shapes):
    fp = {n: (list(s), "float32") for n, s in shapes.items()}
    return CoreRegion({n: torch.tensor(v) for n, v in indices.items()}, fp, top_p=0.1, scope="global", scorer="update")


def test_set_algebra_and_similarity():
    shapes = {"a": (10,), "b": (4, 4)}
    r1 = region_of({"a": [1, 2, 3], "b": [0, 15]}, shapes)
    r2 = region_of({"a": [3, 4], "b": [15]}, shapes)
    assert r1.intersection_size(r2) == 2
    assert r1.jaccard(r2) == pytest.approx(2 / 6)
    assert r1.overlap(r2) == pytest.approx(2 / 3)
    u, i = r1.union(r2), r1.intersection(r2)
    assert u.indices("a").tolist() == [1, 2, 3, 4] and u.indices("b").tolist() == [0, 15]
    assert i.indices("a").tolist() == [3] and i.indices("b").tolist() == [15]
    assert (r1 | r2) == u and (r1 & r2) == i
    assert u.top_p == pytest.approx(6 / 26)
    assert r1.jaccard(r1) == 1.0
    other = region_of({"a": [1]}, {"a": (11,), "b": (4, 4)})
    with pytest.raises(ValueError, match="`a`"):
        r1.jaccard(other)


def test_constructor_validates_indices():
    fp = {"a": ([5], "float32")}
    with pytest.raises(ValueError, match="outside"):
        CoreRegion({"a": torch.tensor([5])}, fp, top_p=0.1, scope="global", scorer="update")
    with pytest.raises(ValueError, match="duplicates"):
        CoreRegion({"a": torch.tensor([1, 1])}, fp, top_p=0.1, scope="global", scorer="update")
    with pytest.raises(ValueError, match="`b`"):
        CoreRegion({"b": torch.tensor([1])}, fp, top_p=0.1, scope="global", scorer="update")


def test_check_compatible_names_the_first_difference(tmp_path):
    model = make_tiny_llama()
    region = CoreRegion.from_update(model, make_tiny_llama(seed=1), top_p=0.05)
    region.check_compatible(model)
    region.check_compatible(model.state_dict())

    class DDPLike(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    region.check_compatible(DDPLike(model))
    with pytest.raises(ValueError, match="`lm_head.weight` has shape"):
        region.check_compatible(make_tiny_llama(hidden=48))
    with pytest.raises(ValueError, match="`model.layers.2.*` of the model is not in the region"):
        region.check_compatible(make_tiny_llama(layers=3))
    with pytest.raises(ValueError, match="`model.layers.1.*` of the region is missing"):
        region.check_compatible(make_tiny_llama(layers=1))
    with pytest.raises(ValueError, match="bfloat16 in the model"):
        region.check_compatible(make_tiny_llama().to(torch.bfloat16))
    region.check_compatible(make_tiny_llama().to(torch.bfloat16), check_dtype=False)


def test_stats_by_module_type_and_layer():
    model = make_tiny_llama(layers=2)
    region = CoreRegion.from_update(model, make_tiny_llama(seed=5), top_p=1.0)
    s = region.stats()
    by = s["by_module"]
    assert set(by) == {"embed", "attn", "mlp", "norm", "lm_head"}
    assert by["norm"]["total"] == 32 * 5  # 2 layers x 2 norms + final norm
    assert by["embed"]["total"] == by["lm_head"]["total"] == 64 * 32
    assert by["attn"]["total"] == 2 * 4 * 32 * 32 and by["mlp"]["total"] == 2 * 3 * 32 * 64
    assert sum(v["share"] for v in by.values()) == pytest.approx(1.0)
    assert set(s["by_layer"]) == {"0", "1", "none"}
    assert s["by_layer"]["0"]["selected"] == s["by_layer"]["1"]["selected"]
    assert s["num_selected"] == s["num_total"] == region.num_total

    from safe_cpift.regions.stats import module_type

    assert module_type("model.layers.0.post_attention_layernorm.weight") == "norm"
    assert module_type("transformer.h.0.attn.c_attn.weight") == "attn"
    assert module_type("transformer.h.0.mlp.c_fc.weight") == "mlp"
    assert module_type("transformer.wte.weight") == "embed"
    assert module_type("transformer.ln_f.weight") == "norm"
    assert module_type("score.weight") == "other"


def test_from_importance_matches_snip_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(12, 1, bias=False)
    batches = [torch.randn(4, 12) for _ in range(3)]

    def loss_fn(m, x):
        return m(x).sum()

    region = CoreRegion.from_importance(model, batches, top_p=0.25, loss_fn=loss_fn, progress=False)
    w = model.weight.detach()
    expected = sum((w * x.sum(0)).abs() for x in batches).view(-1)  # d/dw sum(x w) = sum_rows x
    top = torch.topk(expected, 3).indices.sort().values
    assert region.scorer == "importance"
    assert region.indices("weight").tolist() == top.tolist()
    assert model.weight.grad is None and model.weight.requires_grad


def test_from_importance_on_text_rows(word_tokenizer):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"messages": [{"role": "user", "content": f"what is {a} ?"}, {"role": "assistant", "content": f"{a}"}]}
            for a in range(6)]
    region = CoreRegion.from_importance(model, rows, top_p=0.01, tokenizer=word_tokenizer, batch_size=4,
                                        progress=False)
    assert region.num_selected == round(0.01 * region.num_total)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # embedding rows of tokens never seen get zero gradient, so no core entries there
    emb = region.mask("model.embed_tokens.weight")
    unseen = [word_tokenizer.convert_tokens_to_ids("sorry"), word_tokenizer.convert_tokens_to_ids("cannot")]
    assert not emb[unseen].any()
    with pytest.raises(ValueError, match="`tokenizer`"):
        CoreRegion.from_importance(model, rows, top_p=0.01)


def test_random_regions_round_trip_through_jaccard_identity():
    rnd = random.Random(0)
    shapes = {"a": (50,), "b": (7, 7)}
    for _ in range(5):
        ia = sorted(rnd.sample(range(50), 10))
        ib = sorted(rnd.sample(range(49), 5))
        r = region_of({"a": ia, "b": ib}, shapes)
        assert r.union(r) == r and r.intersection(r) == r and r.overlap(r) == 1.0


def test_indices_above_equals_torch_nonzero():
    from safe_cpift.regions.select import indices_above

    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g).abs()
    x[::7] = 0.5  # ties at the value
    x[3] = float("nan")
    for value in (0.5, 0.1, 3.0, float(x[11])):
        for strict in (False, True):
            want = torch.nonzero(x > value if strict else x >= value).squeeze(1)
            got = indices_above(x, value, strict)
            assert got.dtype == torch.int64 and torch.equal(got, want)
            # other layouts/dtypes take torch's path and agree too
            assert torch.equal(indices_above(x.double(), value, strict), want)
            wide = torch.stack([x, x], 1)[:, 0]  # non-contiguous view
            assert torch.equal(indices_above(wide, value, strict), want)


@pytest.mark.parametrize("threads", [2, 4])
def test_threads_give_the_same_region(monkeypatch, tmp_path, threads):
    monkeypatch.setattr(region_select, "CHUNK", 1000)  # several chunks per tensor, pool reductions mid-scan
    used = []
    real = region_select.iter_candidates
    monkeypatch.setattr(region_select, "iter_candidates", lambda *a, **k: used.append(a[2]) or real(*a, **k))
    base, tuned, planted = planted_pair(seed=3, frac=0.05)
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")  # one thread without the fused kernel: the plain chunk scan
    one = CoreRegion.from_update(base, tuned, top_p=0.03, num_threads=1)
    monkeypatch.delenv("SAFE_CPIFT_FUSED")
    assert used == []
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")  # the torch path's threaded scan (the fused scan: test_regions_fused)
    many = CoreRegion.from_update(base, tuned, top_p=0.03, num_threads=threads)
    assert used == [threads]  # the threaded scan ran
    assert many == one and one.num_selected > 0
    from safe_cpift.io import ShardedWriter

    for name, sd in (("base", base), ("tuned", tuned)):  # checkpoints: mmap views scored on worker threads
        with ShardedWriter(tmp_path / name, max_shard_bytes=1 << 14) as w:
            for n, v in sd.items():
                w.add(n, v)
    assert CoreRegion.from_update(tmp_path / "base", tmp_path / "tuned", top_p=0.03, num_threads=threads) == one
    with pytest.raises(ValueError, match="`num_threads`"):
        CoreRegion.from_update(base, tuned, top_p=0.03, num_threads=0)


@pytest.mark.parametrize("target", [1.0, 37.5, 400.0, 2_000.0, 9_999.0])
def test_estimate_floor_is_the_weighted_quantile_of_the_sample(target):
    """The floor is the highest sampled score whose weighted count of scores at or above it reaches
    `target` (each part's entries weigh what the part stands for), checked by brute force."""
    g = torch.Generator().manual_seed(3)
    samples = [(0, torch.rand(300, generator=g), 7.0), (1, torch.rand(50, generator=g) * 2, 1.0),
               (2, torch.rand(1000, generator=g).to(torch.bfloat16), 3.5), (3, torch.rand(0), 2.0)]
    scores = torch.cat([s.float() for _, s, _ in samples])
    weights = torch.cat([torch.full((s.numel(),), w, dtype=torch.float64) for _, s, w in samples])
    want = max((float(v) for v in scores if float(weights[scores >= v].sum()) >= target), default=None)
    assert region_select.estimate_floor(samples, target) == want
    assert region_select.estimate_floor(samples, float(weights.sum()) + 1) is None  # more than all: keep all
