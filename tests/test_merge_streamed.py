"""`merge.streamed`: two-task float32 fusion written chunk by chunk from several threads, against the
per-tensor pass (the same files byte for byte, the same counts), its job order, and its failures.

Needs the compiled kernels (numba, from the dev extra)."""

import importlib
import threading

import numpy as np
import pytest
import torch
from test_merge_fuse import make_region, perturbed

from safe_cpift.merge import fuse_with_manifest, kernels, streamed

fuse_module = importlib.import_module("safe_cpift.merge.fuse")


@pytest.fixture(scope="module")
def loaded(fusion_kernels):
    return fusion_kernels


@pytest.fixture(scope="module")
def world():
    """Float32 tensors spanning several `gram2` blocks, small ones, a bias; two tasks, cores, a protected region."""
    g = torch.Generator().manual_seed(0)
    shapes = {"embed.weight": (1000, 300), "layers.0.proj.weight": (257, 129), "layers.1.proj.weight": (64, 64),
              "layers.1.norm.weight": (64,), "head.bias": (3,)}
    base = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    a, b = perturbed(base, 1, scale=0.01), perturbed(base, 2, scale=0.01)
    rng = np.random.default_rng(3)

    def random_region(fraction):
        return make_region(base, {n: np.unique(rng.integers(0, v.numel(), max(1, int(v.numel() * fraction)))).tolist()
                                  for n, v in base.items()})

    return {"base": base, "a": a, "b": b, "regions": {"a": random_region(0.03), "b": random_region(0.03)},
            "protect": random_region(0.02)}


@pytest.fixture(scope="module")
def world_bf16(world):
    """The same models in bfloat16 (the regions fit either: indices depend on shapes only)."""
    return {**world, **{k: {n: v.to(torch.bfloat16) for n, v in world[k].items()} for k in ("base", "a", "b")}}


def fused_files(world, out, monkeypatch, streamed_on, threads, **kwargs):
    """fuse into `out` (streamed, or the per-tensor pass); returns (file name -> bytes, manifest, streamed names)."""
    used = []
    real = fuse_module._pair_tensors
    monkeypatch.setattr(fuse_module, "_pair_tensors",
                        lambda *a, **k: used.extend(x.name for x in real(*a, **k)) or real(*a, **k)
                        if streamed_on else [])
    _, manifest = fuse_with_manifest(world["base"], {"b": world["b"], "a": world["a"]}, world["regions"],
                                     protect=world["protect"], out_dir=out, num_threads=threads,
                                     max_shard_bytes=500_000, **kwargs)
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".safetensors"}
    return files, manifest, used


@pytest.mark.parametrize(("chunk", "threads"), [(1 << 18, 2), (50_000, 3), (777, 2), (100_000, 1)])
def test_streamed_files_equal_the_per_tensor_pass_byte_for_byte(loaded, world, tmp_path, monkeypatch, chunk,
                                                                threads):
    monkeypatch.setattr(streamed, "CHUNK", chunk)
    monkeypatch.setattr(kernels, "FUSE_BLOCK", 100)  # several blocks per chunk
    got, got_manifest, used = fused_files(world, tmp_path / "streamed", monkeypatch, True, threads, t=0.3)
    assert sorted(used) == sorted(world["base"])  # every tensor took the streamed path
    want, want_manifest, _ = fused_files(world, tmp_path / "per_tensor", monkeypatch, False, 1, t=0.3)
    assert len(got) > 1 and list(got) == list(want)
    for name in want:
        assert got[name] == want[name], name
    assert got_manifest["counts"] == want_manifest["counts"]
    assert want_manifest["counts"]["conflicts"] > 0 and want_manifest["counts"]["protected_over_task"] > 0


@pytest.mark.parametrize(("chunk", "threads"), [(1 << 18, 2), (777, 3)])
def test_bfloat16_models_stream_to_the_per_tensor_bytes(loaded, world_bf16, tmp_path, monkeypatch, chunk, threads):
    """bfloat16 in, bfloat16 out: computed in float32 and rounded as torch rounds, byte for byte the
    per-tensor pass (which converts with torch), with the cores and protected entries exact."""
    monkeypatch.setattr(streamed, "CHUNK", chunk)
    got, got_manifest, used = fused_files(world_bf16, tmp_path / "streamed", monkeypatch, True, threads, t=0.3)
    assert sorted(used) == sorted(world_bf16["base"])
    want, want_manifest, _ = fused_files(world_bf16, tmp_path / "per_tensor", monkeypatch, False, 1, t=0.3)
    assert got == want and got_manifest["counts"] == want_manifest["counts"]
    assert want_manifest["counts"]["core_rounded"] == 0 and want_manifest["dtype"]["written"] == ["bfloat16"]


def test_round_bf16_is_torchs_rounding(loaded):
    """Every float32 class: ties both ways, subnormals, the largest finite values (rounding to inf), infs,
    signed zeros, and random values over the whole exponent range."""
    rng = np.random.default_rng(0)
    special = np.array([0x00000000, 0x80000000, 0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x00000001,
                        0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F800000, 0xFF800000], dtype=np.uint32)
    bits = np.concatenate([special, rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)])
    bits = bits[(bits & 0x7FFFFFFF) <= 0x7F800000]  # NaN below
    out = np.empty(bits.size, dtype=np.uint16)
    loaded.round_bf16(bits, out)
    want = torch.from_numpy(bits.view(np.float32).copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(out, want)
    nan = np.array([0x7FC00000, 0xFFC00001, 0x7F800001], dtype=np.uint32)
    loaded.round_bf16(nan, out[:3])
    assert torch.from_numpy(out[:3].view(np.int16).copy()).view(torch.bfloat16).isnan().all()


def test_ends_of_a_schedule_take_the_per_tensor_pass(loaded, world, tmp_path, monkeypatch):
    """t = 0 or 1 is an exact copy, not a SLERP: those tensors are fused per tensor, the rest streamed."""
    schedule = {"layers.0.proj.weight": 0.0, "layers.1.proj.weight": 1.0}

    def t_of(name):
        return schedule.get(name, 0.3)

    got, got_manifest, used = fused_files(world, tmp_path / "streamed", monkeypatch, True, 2, t_schedule=t_of)
    assert sorted(used) == sorted(set(world["base"]) - set(schedule))
    want, want_manifest, _ = fused_files(world, tmp_path / "per_tensor", monkeypatch, False, 2, t_schedule=t_of)
    assert got == want and got_manifest["counts"] == want_manifest["counts"]


def test_jobs_cover_every_entry_once_and_dots_come_first():
    sizes = [5 * kernels.BLOCK + 3, 10, 2 * kernels.BLOCK]
    jobs = streamed._jobs(sizes, chunk=kernels.BLOCK // 2, dots_blocks=2)
    for i, n in enumerate(sizes):
        blocks = -(-n // kernels.BLOCK)
        dots = [(lo, hi) for kind, t, lo, hi in jobs if t == i and kind == streamed._DOTS]
        outs = [(lo, hi) for kind, t, lo, hi in jobs if t == i and kind == streamed._OUT]
        assert [x for lo, hi in dots for x in range(lo, hi)] == list(range(blocks))
        assert [x for lo, hi in outs for x in range(lo, hi)] == list(range(n))
        positions = [k for k, (kind, t, _, _) in enumerate(jobs) if t == i]
        last_dots = max(k for k in positions if jobs[k][0] == streamed._DOTS)
        first_out = min(k for k in positions if jobs[k][0] == streamed._OUT)
        assert last_dots < first_out
    # the next tensor's dot products are interleaved with this tensor's outputs
    kinds = [(kind, t) for kind, t, _, _ in jobs]
    assert kinds.index((streamed._DOTS, 1)) < max(k for k, x in enumerate(kinds) if x == (streamed._OUT, 0))


def test_a_failing_write_stops_every_thread_and_is_raised(loaded, world, monkeypatch):
    monkeypatch.setattr(streamed, "CHUNK", 5000)

    class Failing:
        def __init__(self):
            self.calls, self.lock = 0, threading.Lock()

        def add_part(self, name, first, data):
            with self.lock:
                self.calls += 1
                if self.calls == 4:
                    raise OSError(28, "No space left on device")

    base, a, b = (world[k]["embed.weight"].reshape(-1).numpy() for k in ("base", "a", "b"))
    empty = np.zeros(0, dtype=np.int64)
    pair = streamed.PairTensor("embed.weight", 0.3, a, b, base, a, b, empty, empty, base, empty)
    writer = Failing()
    with pytest.raises(OSError, match="No space left"):
        streamed.stream_pairs(loaded, [pair, pair], writer, num_threads=3)
    assert 4 <= writer.calls < 10  # the other threads stopped (120 chunks in all)


def test_checkpoint_directories_stream_from_their_mapped_files(loaded, world, tmp_path, monkeypatch):
    """From sharded safetensors directories (the tensors are views of the mapped files): the same files
    as fusing the in-memory state dicts per tensor."""
    from safe_cpift.io import ShardedWriter, open_checkpoint

    dirs = {}
    for key in ("base", "a", "b"):
        dirs[key] = tmp_path / key
        writer = ShardedWriter(dirs[key], max_shard_bytes=400_000)
        for name, tensor in world[key].items():
            writer.add(name, tensor)
        writer.close()
    monkeypatch.setattr(streamed, "CHUNK", 30_000)
    used = []
    real = fuse_module._pair_tensors
    monkeypatch.setattr(fuse_module, "_pair_tensors", lambda *a, **k: used.extend(real(*a, **k)) or used)
    fuse_with_manifest(dirs["base"], {"b": dirs["b"], "a": dirs["a"]}, world["regions"], protect=world["protect"],
                       out_dir=tmp_path / "from_dirs", num_threads=2, max_shard_bytes=500_000, t=0.3)
    assert len(used) == len(world["base"])
    fused_files(world, tmp_path / "per_tensor", monkeypatch, False, 1, t=0.3)
    got, want = open_checkpoint(tmp_path / "from_dirs"), open_checkpoint(tmp_path / "per_tensor")
    assert sorted(got.names()) == sorted(want.names()) == sorted(world["base"])
    for name in want.names():  # the shard plans follow the inputs' tensor order, which differs
        assert torch.equal(got.get(name), want.get(name)), name


def test_streamed_indices_are_views_of_the_regions(loaded, world):
    """All tensors' indices stay alive while streaming: they are the regions' stored int32 arrays, not
    int64 copies (1% cores of a 7B model would be ~0.5 GB more per region). A region type that overrides
    `indices` is read through it (int64)."""
    from safe_cpift.regions import CoreRegion

    name = "embed.weight"
    a, b, p = (world["regions"]["a"], world["regions"]["b"], world["protect"])
    ia, ib, ip = fuse_module._index_arrays(name, [a, b, p])
    assert ia.dtype == ib.dtype == ip.dtype == np.int32
    assert np.shares_memory(ia, a.raw_indices(name).numpy()) and np.shares_memory(ip, p.raw_indices(name).numpy())

    class Shifted(CoreRegion):
        def indices(self, name):
            return super().indices(name)[1:]

    custom = Shifted({n: a.raw_indices(n) for n in a.names()}, a.fingerprint, top_p=0.01, scope="global", scorer="update")
    ia, ib, ip = fuse_module._index_arrays(name, [custom, b, None])
    assert ia.dtype == ib.dtype == ip.dtype == np.int64 and ip.size == 0
    assert np.array_equal(ia, a.indices(name).numpy()[1:])
