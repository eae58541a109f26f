"""fuse() in memory: transplanted cores, conflict rule, protected region, N-model rule, errors."""

import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.io import state_dict_fingerprint
from safe_cpift.merge import fuse, fuse_with_manifest, slerp, spherical_mean
from safe_cpift.regions import CoreRegion

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
EMB = "model.embed_tokens.weight"


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def perturbed(sd, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {n: v + scale * torch.randn(v.shape, generator=g) for n, v in sd.items()}


def make_region(sd, entries):
    return CoreRegion({n: torch.tensor(i) for n, i in entries.items()}, state_dict_fingerprint(sd),
                      top_p=0.01, scope="global", scorer="update")


def flat(x):
    return x.reshape(-1)


@pytest.fixture(scope="module")
def world():
    base = params(make_tiny_llama(0))
    return {"base": base, "A": perturbed(base, 1), "B": perturbed(base, 2), "C": perturbed(base, 3)}


def test_two_models_cores_exact_rest_slerp(world):
    base, A, B = world["base"], world["A"], world["B"]
    ra = make_region(base, {Q: [0, 5, 9, 100], EMB: [3, 4]})
    rb = make_region(base, {Q: [1, 2], UP: [7, 8, 2047]})
    out, manifest = fuse_with_manifest(base, {"a": A, "b": B}, {"a": ra, "b": rb})
    assert set(out) == set(base)
    for name in base:
        want = slerp(0.5, A[name], B[name])
        core = ra.mask(name) | rb.mask(name)
        assert torch.equal(out[name][~core], want[~core]), name
        assert torch.equal(out[name][ra.mask(name)], A[name][ra.mask(name)]), name
        assert torch.equal(out[name][rb.mask(name)], B[name][rb.mask(name)]), name
        assert out[name].dtype == base[name].dtype and out[name].shape == base[name].shape
    assert manifest["counts"]["transplanted"] == 11
    assert manifest["counts"]["per_task"] == {"a": 6, "b": 5}
    assert manifest["counts"]["conflicts"] == 0
    # the result is not just one of the models
    assert not torch.equal(out[UP], A[UP]) and not torch.equal(out[UP], B[UP])


def test_conflicts_larger_delta_wins_ties_by_name(world):
    base = dict(world["base"])
    base[Q] = base[Q].clone()
    flat(base[Q])[5] = 0.0
    alpha, beta = dict(world["A"]), dict(world["B"])
    alpha[Q], beta[Q] = alpha[Q].clone(), beta[Q].clone()
    b = flat(base[Q])
    for i, (da, db) in enumerate([(0.9, 0.1), (-0.9, 0.1), (0.3, -0.2), (0.1, 0.9), (0.1, -0.5), (0.5, -0.5)]):
        flat(alpha[Q])[i] = b[i] + da
        flat(beta[Q])[i] = b[i] + db
    r = make_region(base, {Q: list(range(6))})
    # beta is given first: the tie at entry 5 still goes to `alpha` (name sorts first)
    out, manifest = fuse_with_manifest(base, {"beta": beta, "alpha": alpha}, {"beta": r, "alpha": r})
    got = flat(out[Q])[:6]
    want = torch.stack([flat(alpha[Q])[0], flat(alpha[Q])[1], flat(alpha[Q])[2],
                        flat(beta[Q])[3], flat(beta[Q])[4], flat(alpha[Q])[5]])
    assert torch.equal(got, want)
    assert manifest["counts"]["conflicts"] == 6
    assert manifest["counts"]["per_task"] == {"alpha": 4, "beta": 2}
    assert manifest["counts"]["transplanted"] == 6


def test_protect_wins_exactly(world):
    base, A, B, C = world["base"], world["A"], world["B"], world["C"]
    ra = make_region(base, {Q: [0, 1, 2, 3], EMB: [10]})
    rb = make_region(base, {Q: [3, 4], UP: [0]})
    safety = make_region(base, {Q: [2, 3, 50], UP: [0, 1], "model.norm.weight": [0, 31]})
    before = {k: {n: v.clone() for n, v in world[k].items()} for k in ("base", "A", "B")}
    out, manifest = fuse_with_manifest(base, {"a": A, "b": B}, {"a": ra, "b": rb}, protect=safety)
    for k, sd in before.items():  # inputs are never written to
        assert all(torch.equal(world[k][n], v) for n, v in sd.items()), k
    for name in base:
        m = safety.mask(name)
        assert torch.equal(out[name][m], base[name][m]), name
    # task core entries outside the protected region are still the task's own
    assert torch.equal(flat(out[Q])[[0, 1]], flat(A[Q])[[0, 1]])
    assert torch.equal(flat(out[Q])[4], flat(B[Q])[4])
    counts = manifest["counts"]
    assert counts["protected"] == 7 and counts["protected_over_task"] == 3
    # an explicit protect_source (e.g. the aligned model) is copied instead of base
    out2 = fuse(base, {"a": A, "b": B}, {"a": ra, "b": rb}, protect=safety, protect_source=C)
    for name in base:
        m = safety.mask(name)
        assert torch.equal(out2[name][m], C[name][m]), name
        assert torch.equal(out2[name][~m], out[name][~m]), name


def test_three_models_order_free(world):
    base = world["base"]
    models = {"x": world["A"], "y": world["B"], "z": world["C"]}
    regions = {"x": make_region(base, {Q: [0, 1]}), "y": make_region(base, {Q: [1, 2], UP: [5]}),
               "z": make_region(base, {EMB: [7]})}
    out = fuse(base, models, regions)
    # permuting the given order is bitwise identical (models are summed in sorted-name order)
    for order in (["z", "x", "y"], ["y", "z", "x"]):
        again = fuse(base, {k: models[k] for k in order}, {k: regions[k] for k in order})
        assert all(torch.equal(out[n], again[n]) for n in base)
    # relabelling the models (which changes the summation order) agrees to float rounding: allclose 1e-6
    relabel = {"x": "q", "y": "c", "z": "m"}
    again = fuse(base, {relabel[k]: v for k, v in models.items()}, {relabel[k]: v for k, v in regions.items()})
    for n in base:
        assert torch.allclose(out[n], again[n], atol=1e-6, rtol=0), n
    # non-core entries are the equal-weight spherical mean
    mean = spherical_mean([models[k][UP] for k in "xyz"])
    mask = regions["y"].mask(UP)
    assert torch.equal(out[UP][~mask], mean[~mask])
    with pytest.raises(ValueError, match="`t`"):
        fuse(base, models, regions, t=0.3)


def test_two_models_t_and_order(world):
    base, A, B = world["base"], world["A"], world["B"]
    r = make_region(base, {Q: [0]})
    ab = fuse(base, {"a": A, "b": B}, {"a": r, "b": r})
    ba = fuse(base, {"b": B, "a": A}, {"b": r, "a": r})
    assert all(torch.equal(ab[n], ba[n]) for n in base)  # t = 0.5: bitwise symmetric
    t3 = fuse(base, {"b": B, "a": A}, {"b": r, "a": r}, t=0.3)  # t weighs the second given task
    assert torch.equal(t3[UP], slerp(0.3, B[UP], A[UP]))
    t0 = fuse(base, {"b": B, "a": A}, {"b": r, "a": r}, t=0.0)
    assert torch.equal(t0[UP], B[UP])


def test_weighted_models_order_free(world):
    base = world["base"]
    models = {"x": world["A"], "y": world["B"], "z": world["C"]}
    regions = {"x": make_region(base, {Q: [0, 1]}), "y": make_region(base, {UP: [5]}), "z": make_region(base, {})}
    weights = {"x": 2.0, "y": 1.0, "z": 1.0}
    out, manifest = fuse_with_manifest(base, models, regions, weights=weights)
    assert manifest["weights"] == {"x": 0.5, "y": 0.25, "z": 0.25}
    mask = regions["y"].mask(UP)
    want = spherical_mean([models[k][UP] for k in "xyz"], [0.5, 0.25, 0.25])
    assert torch.equal(out[UP][~mask], want[~mask])
    assert not torch.allclose(out[UP][~mask], spherical_mean([models[k][UP] for k in "xyz"])[~mask], atol=1e-5)
    for order in (["z", "x", "y"], ["y", "z", "x"]):  # given order does not matter: bitwise
        again = fuse(base, {k: models[k] for k in order}, {k: regions[k] for k in order},
                     weights={k: weights[k] for k in reversed(order)})
        assert all(torch.equal(out[n], again[n]) for n in base)
    # a task of weight 0 leaves the non-core entries as the other tasks' SLERP (its core is still transplanted)
    empty = make_region(base, {})
    zero = fuse(base, models, {k: empty for k in models}, weights={"x": 0.3, "y": 0.7, "z": 0.0})
    pair = fuse(base, {"x": models["x"], "y": models["y"]}, {"x": empty, "y": empty}, t=0.7)
    assert all(torch.allclose(zero[n], pair[n], atol=1e-7, rtol=0) for n in base)


def test_weights_for_two_models_are_slerp_t(world):
    base, A, B = world["base"], world["A"], world["B"]
    r = make_region(base, {Q: [0]})
    by_t = fuse(base, {"b": B, "a": A}, {"b": r, "a": r}, t=0.3)  # t weighs the second given task (a)
    by_w = fuse(base, {"a": A, "b": B}, {"a": r, "b": r}, weights={"a": 0.3, "b": 0.7})
    for n in base:
        assert torch.allclose(by_t[n], by_w[n], atol=1e-6, rtol=0), n
    assert torch.equal(by_w[UP], slerp(0.7, A[UP], B[UP]))  # sorted order: a, b; t = w_b


def test_bad_weights(world):
    base, A, B = world["base"], world["A"], world["B"]
    r = make_region(base, {})
    models, regions = {"a": A, "b": B}, {"a": r, "b": r}
    with pytest.raises(ValueError, match="missing: \\['b'\\]"):
        fuse(base, models, regions, weights={"a": 1.0})
    with pytest.raises(ValueError, match="`weights\\['b'\\]`"):
        fuse(base, models, regions, weights={"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match="all 0"):
        fuse(base, models, regions, weights={"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="not both"):
        fuse(base, models, regions, weights={"a": 1.0, "b": 1.0}, t=0.3)


def test_layer_schedule(world):
    base, A, B = world["base"], world["A"], world["B"]
    empty = make_region(base, {})
    out = fuse(base, {"a": A, "b": B}, {"a": empty, "b": empty}, t_schedule=[0.0, 1.0])
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], A["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(out[UP], B[UP])  # layer 1 of 2
    assert torch.equal(out[EMB], slerp(0.5, A[EMB], B[EMB]))  # outside the layers: t
    fn = fuse(base, {"a": A, "b": B}, {"a": empty, "b": empty}, t_schedule=lambda name: 1.0 if "mlp" in name else 0.0)
    assert torch.equal(fn[UP], B[UP]) and torch.equal(fn[Q], A[Q])
    with pytest.raises(ValueError, match="t_schedule"):
        fuse(base, {"a": A, "b": B}, {"a": empty, "b": empty}, t_schedule={"x": 0.1})


def test_modules_and_bf16_inputs(world):
    ma, mb, m0 = make_tiny_llama(1), make_tiny_llama(2), make_tiny_llama(0)
    r = make_region(params(m0), {Q: [3]})
    out = fuse(m0, {"a": ma, "b": mb}, {"a": r, "b": r})
    assert torch.equal(flat(out[Q])[3], flat(ma.state_dict()[Q])[3]) or torch.equal(
        flat(out[Q])[3], flat(mb.state_dict()[Q])[3])
    half = {k: {n: v.to(torch.bfloat16) for n, v in world[k].items()} for k in ("base", "A", "B")}
    out = fuse(half["base"], {"a": half["A"], "b": half["B"]}, {"a": r, "b": make_region(world["base"], {})})
    assert out[Q].dtype == torch.bfloat16
    assert torch.equal(flat(out[Q])[3], flat(half["A"][Q])[3])


def test_mismatched_models_and_regions(world):
    base, A = world["base"], world["A"]
    r = make_region(base, {Q: [0]})
    other = params(make_tiny_llama(0, hidden=48))
    with pytest.raises(ValueError, match=r"tensor `model\.embed_tokens\.weight` has shape .* task `b`"):
        fuse(base, {"a": A, "b": other}, {"a": r, "b": r})
    missing = {n: v for n, v in A.items() if n != UP}
    with pytest.raises(ValueError, match=rf"`{UP}`.*missing from the model of task `b`"):
        fuse(base, {"a": A, "b": missing}, {"a": r, "b": r})
    foreign = make_region(other, {Q: [0]})
    with pytest.raises(ValueError, match=r"region of task `b` does not match .*tensor `"):
        fuse(base, {"a": A, "b": A}, {"a": r, "b": foreign})
    with pytest.raises(ValueError, match="`protect` region"):
        fuse(base, {"a": A, "b": A}, {"a": r, "b": r}, protect=foreign)
    with pytest.raises(ValueError, match="`task_regions`"):
        fuse(base, {"a": A, "b": A}, {"a": r})
    with pytest.raises(ValueError, match="`task_models`"):
        fuse(base, {}, {})


def test_single_task_and_colinear_models(world):
    base, A = world["base"], world["A"]
    r = make_region(base, {Q: [0, 1]})
    out, manifest = fuse_with_manifest(base, {"only": A}, {"only": r})
    assert all(torch.equal(out[n], A[n]) for n in base)  # one model: its own values everywhere
    assert manifest["counts"]["per_task"] == {"only": 2} and manifest["versions"]["torch"] == torch.__version__
    # three (nearly) colinear models: the spherical mean falls back to the plain mean
    scaled = {k: {n: v * s for n, v in A.items()} for k, s in (("p", 1.0), ("q", 1.5), ("r", 2.0))}
    empty = make_region(base, {})
    out = fuse(base, scaled, {k: empty for k in scaled})
    assert torch.allclose(out[UP], A[UP] * 1.5, atol=1e-6, rtol=0)
