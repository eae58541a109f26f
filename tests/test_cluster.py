"""Task clustering: overlap matrices, connected components at tau, stage order, overlap.png."""

import itertools

import pytest
import torch

from safe_cpift.cluster import cluster_tasks, intersection_size, overlap_matrix, plot_overlap


class SetRegion:
    """Minimal region (indices per tensor) built from python sets of (tensor, flat index)."""

    def __init__(self, entries):
        self.entries = set(entries)

    def names(self):
        return sorted({n for n, _ in self.entries})

    def indices(self, name):
        return torch.tensor(sorted(i for n, i in self.entries if n == name), dtype=torch.long)


def region(*ranges, tensor="w"):
    return SetRegion((tensor, i) for r in ranges for i in r)


def ref_metric(a, b, metric):
    inter = len(a.entries & b.entries)
    if metric == "jaccard":
        union = len(a.entries | b.entries)
        return inter / union if union else 0.0
    small = min(len(a.entries), len(b.entries))
    return inter / small if small else 0.0


@pytest.fixture
def regions():
    # A-B: J = 5/15; B-C: J = 2/20 = 0.1 exactly; D isolated; E-F: J = 4/12; C-E share one entry
    # of another tensor: J = 1/19
    return {
        "A": region(range(0, 10)),
        "B": region(range(5, 15)),
        "C": SetRegion([("w", i) for i in range(13, 24)] + [("v", 0)]),
        "D": region(range(100, 110)),
        "E": SetRegion([("v", i) for i in range(0, 8)]),
        "F": SetRegion([("v", i) for i in range(4, 12)]),
    }


@pytest.mark.parametrize("metric", ["jaccard", "overlap"])
def test_overlap_matrix_matches_set_reference(regions, metric):
    names, mat = overlap_matrix(regions, metric)
    assert names == list(regions)
    assert mat.shape == (6, 6) and torch.equal(mat, mat.T)
    for (i, a), (j, b) in itertools.product(enumerate(names), repeat=2):
        want = 1.0 if i == j else ref_metric(regions[a], regions[b], metric)
        assert float(mat[i, j]) == pytest.approx(want, abs=1e-12), (a, b)


def test_overlap_coefficient_subset_is_one():
    a, b = region(range(0, 4)), region(range(0, 20))
    _, mat = overlap_matrix({"a": a, "b": b}, "overlap")
    assert float(mat[0, 1]) == 1.0
    _, jac = overlap_matrix({"a": a, "b": b}, "jaccard")
    assert float(jac[0, 1]) == pytest.approx(0.2)
    assert intersection_size(a, b) == 4


def test_protect_is_last_row_and_column(regions):
    safety = region(range(0, 3), range(100, 102))
    names, mat = overlap_matrix(regions, "overlap", protect=safety)
    assert names[-1] == "safety" and len(names) == 7
    assert float(mat[-1, 0]) == pytest.approx(3 / 5)  # A holds 3 of safety's 5 entries
    assert float(mat[-1, 3]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="protect_name"):
        overlap_matrix({"safety": safety}, protect=safety)


def test_empty_region_conventions():
    names, mat = overlap_matrix({"e": SetRegion([]), "a": region(range(3))})
    assert mat.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_cluster_known_components(regions):
    assert cluster_tasks(regions, tau=0.1) == [["A", "B", "C"], ["E", "F"], ["D"]]
    # tau exactly 0.1 keeps the B-C edge (>=); just above it drops it
    assert cluster_tasks(regions, tau=0.1 + 1e-9) == [["A", "B"], ["E", "F"], ["C"], ["D"]]
    assert cluster_tasks(regions, tau=0.34) == [[n] for n in regions]
    # tau = 0 joins everything (every Jaccard is >= 0)
    assert cluster_tasks(regions, tau=0.0) == [list(regions)]
    # a low tau lets the tiny C-E overlap (1/19) join the two components
    assert cluster_tasks(regions, tau=0.05) == [["A", "B", "C", "E", "F"], ["D"]]


def test_cluster_tau_one_joins_identical_only():
    regs = {"x": region(range(5)), "y": region(range(5)), "z": region(range(4))}
    assert cluster_tasks(regs, tau=1.0) == [["x", "y"], ["z"]]


def test_stage_order_is_deterministic_and_follows_given_order(regions):
    # larger groups first; equal sizes in the order their first task was given; inside: given order
    reordered = {k: regions[k] for k in ["F", "D", "B", "E", "A", "C"]}
    assert cluster_tasks(reordered, tau=0.1) == [["B", "A", "C"], ["F", "E"], ["D"]]
    assert cluster_tasks(reordered, tau=0.1) == cluster_tasks(dict(reordered), tau=0.1)
    singles = {k: regions[k] for k in ["D", "A"]}
    assert cluster_tasks(singles, tau=0.1) == [["D"], ["A"]]


def test_cluster_bad_input(regions):
    with pytest.raises(ValueError, match="`tau`"):
        cluster_tasks(regions, tau=1.5)
    with pytest.raises(ValueError, match="empty"):
        cluster_tasks({}, tau=0.1)
    with pytest.raises(ValueError, match="`metric`"):
        overlap_matrix(regions, "cosine")


def test_plot_overlap_writes_png(tmp_path, regions):
    out = plot_overlap(regions, tmp_path / "overlap.png", protect=region(range(3)))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["overlap.png"]  # no temp files left behind


def test_real_core_regions_from_planted_updates(tmp_path):
    """CoreRegion.from_update on planted perturbations: clusters follow the planted overlaps."""
    from safe_cpift.regions import CoreRegion

    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(40, 10, generator=g), "v": torch.randn(200, generator=g)}

    def tuned(entries):  # big updates on the planted entries, tiny noise elsewhere
        out = {n: t + 1e-4 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        for name, idx in entries:
            out[name].view(-1)[idx] += 5.0 + torch.rand(len(idx), generator=g)
        return out

    plan = {"t1": [("w", list(range(0, 6)))], "t2": [("w", list(range(3, 9)))], "t3": [("v", list(range(0, 6)))]}
    regs = {k: CoreRegion.from_update(base, tuned(v), top_p=6 / 600, progress=False) for k, v in plan.items()}
    assert all(r.num_selected == 6 for r in regs.values())
    names, mat = overlap_matrix(regs)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                assert float(mat[i, j]) == pytest.approx(regs[a].jaccard(regs[b]))
    assert float(mat[0, 1]) == pytest.approx(3 / 9)
    assert cluster_tasks(regs, tau=0.1) == [["t1", "t2"], ["t3"]]
    assert plot_overlap(regs, tmp_path / "overlap.png", protect=regs["t3"]).stat().st_size > 0
