"""PlannedShardWriter: standard safetensors shards streamed tensor by tensor."""

import json

import pytest
import torch
from safetensors.torch import load_file

from safe_cpift.io import INDEX_FILE, SINGLE_FILE, open_checkpoint, state_dict_fingerprint
from safe_cpift.merge.writer import PlannedShardWriter


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(30, 7, generator=g),
        "b.bf16": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "c.ids": torch.arange(11, dtype=torch.int64),
        "d.mask": torch.rand(9, generator=g) > 0.5,
        "e.empty": torch.empty(0, 4),
        "f.half": torch.randn(100, generator=g).half(),
        "g.big": torch.randn(600, generator=g).double(),
    }


@pytest.mark.parametrize("max_bytes", [10**9, 400])
def test_roundtrip(tmp_path, max_bytes):
    ts = tensors()
    w = PlannedShardWriter(tmp_path, state_dict_fingerprint(ts), max_shard_bytes=max_bytes)
    for n, t in ts.items():
        w.add(n, t)
    files = w.close()
    if max_bytes > 10**6:
        assert [f.name for f in files] == [SINGLE_FILE] and not (tmp_path / INDEX_FILE).exists()
        back = load_file(str(files[0]))
    else:
        assert len(files) > 2
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert set(index["weight_map"]) == set(ts)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ts.values())
        back = {}
        for f in files:
            back.update(load_file(str(f)))
    assert set(back) == set(ts)
    for n, t in ts.items():
        assert back[n].dtype == t.dtype and torch.equal(back[n], t), n
    reader = open_checkpoint(tmp_path)
    assert torch.equal(reader.get("g.big"), ts["g.big"])


def test_non_contiguous_input(tmp_path):
    t = torch.randn(4, 6)
    w = PlannedShardWriter(tmp_path, {"x": ([6, 4], "float32")}, max_shard_bytes=10**6)
    w.add("x", t.T)
    w.close()
    assert torch.equal(load_file(str(tmp_path / SINGLE_FILE))["x"], t.T)


@pytest.mark.parametrize("max_bytes", [10**9, 400])
def test_any_write_order_gives_the_same_files(tmp_path, max_bytes):
    ts = tensors()
    for order, out in ((list(ts), tmp_path / "plan"), (list(reversed(ts)), tmp_path / "reversed")):
        out.mkdir()
        w = PlannedShardWriter(out, state_dict_fingerprint(ts), max_shard_bytes=max_bytes)
        for n in order:
            w.add(n, ts[n])
        w.close()
    names = sorted(p.name for p in (tmp_path / "plan").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "reversed").iterdir())
    for name in names:
        assert (tmp_path / "plan" / name).read_bytes() == (tmp_path / "reversed" / name).read_bytes(), name


def test_plan_is_enforced(tmp_path):
    plan = {"x": ([2], "float32"), "y": ([3], "float32")}
    w = PlannedShardWriter(tmp_path, plan, max_shard_bytes=10**6)
    with pytest.raises(ValueError, match="`z` is not in the plan"):
        w.add("z", torch.zeros(3))
    w.add("y", torch.zeros(3))
    with pytest.raises(ValueError, match="`y` was written twice"):
        w.add("y", torch.zeros(3))
    w.abort()
    w = PlannedShardWriter(tmp_path, plan, max_shard_bytes=10**6)
    with pytest.raises(ValueError, match="planned"):
        w.add("x", torch.zeros(2, dtype=torch.float16))
    w = PlannedShardWriter(tmp_path, plan, max_shard_bytes=10**6)
    w.add("x", torch.zeros(2))
    with pytest.raises(ValueError, match="`y` was planned but never written"):
        w.close()
    w.add("y", torch.ones(3))
    w.close()
    with pytest.raises(ValueError, match="closed"):  # a closed writer never reopens (and truncates) a shard
        w.add("y", torch.ones(3))
    assert torch.equal(load_file(str(tmp_path / SINGLE_FILE))["y"], torch.ones(3))


def test_parts_from_several_threads_give_the_same_files(tmp_path):
    """`add_part` (what `merge.streamed` writes with): parts in any order, from several threads, give the
    bytes `add` gives; a tensor counts as written once its parts cover it."""
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(1)
    ts = {"a.weight": torch.randn(300, 7, generator=g), "b.bias": torch.randn(5, generator=g),
          "c.ids": torch.arange(11, dtype=torch.int64)}
    plan = state_dict_fingerprint(ts)
    whole = tmp_path / "whole"
    whole.mkdir()
    w = PlannedShardWriter(whole, plan, max_shard_bytes=2000)
    for n, t in ts.items():
        w.add(n, t)
    w.close()
    parts = tmp_path / "parts"
    parts.mkdir()
    w = PlannedShardWriter(parts, plan, max_shard_bytes=2000)
    flat = {n: t.reshape(-1).numpy() for n, t in ts.items()}
    jobs = [(n, s, flat[n][s:s + 97]) for n in ("a.weight", "b.bias") for s in range(0, flat[n].size, 97)]
    w.add("c.ids", ts["c.ids"])
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda job: w.add_part(*job), reversed(jobs)))
    w.close()
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in parts.iterdir()) and len(names) > 2
    for name in names:
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name


def test_parts_are_checked(tmp_path):
    import numpy as np

    w = PlannedShardWriter(tmp_path, {"x": ([10], "float32"), "y": ([2], "float16")}, max_shard_bytes=10**6)
    with pytest.raises(ValueError, match="`z` is not in the plan"):
        w.add_part("z", 0, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="flat float16 array, got 1-d float32"):
        w.add_part("y", 0, np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"entries 8\.\.10 are outside tensor `x` \(10 entries\)"):
        w.add_part("x", 8, np.zeros(3, dtype=np.float32))
    w.add_part("x", 0, np.zeros(6, dtype=np.float32))
    with pytest.raises(ValueError, match="`x` was planned but never written"):
        w.close()
    with pytest.raises(ValueError, match="`x` was written twice"):  # overlapping parts
        w.add_part("x", 2, np.zeros(6, dtype=np.float32))
    w.add_part("x", 6, np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="`x` was written twice"):
        w.add("x", torch.zeros(10))
    w.add("y", torch.zeros(2, dtype=torch.float16))
    w.close()
    assert load_file(str(tmp_path / SINGLE_FILE))["x"].tolist() == [0.0] * 6 + [1.0] * 4


def test_background_writer_keeps_order_and_reports_errors(tmp_path):
    import threading

    from safe_cpift.merge.background import BackgroundWriter

    class Recorder:
        def __init__(self):
            self.seen, self.threads = [], set()

        def add(self, name, tensor):
            if name == "bad":
                raise ValueError("tensor `bad` written out of order")
            self.seen.append((name, float(tensor.sum())))
            self.threads.add(threading.get_ident())

    rec = Recorder()
    bg = BackgroundWriter(rec)
    for i in range(20):
        bg.add(f"t{i}", torch.full((3,), float(i)))
    bg.close()
    assert rec.seen == [(f"t{i}", 3.0 * i) for i in range(20)]
    assert threading.get_ident() not in rec.threads  # written on the worker thread
    bg = BackgroundWriter(Recorder())
    bg.add("bad", torch.zeros(1))
    with pytest.raises(ValueError, match="out of order"):
        for i in range(10):  # the error surfaces on a later add or at close
            bg.add(f"t{i}", torch.zeros(1))
        bg.close()
    bg.abort()
    # a real PlannedShardWriter behind it writes the same files as without it
    sd = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4, dtype=torch.float64)}
    writer = PlannedShardWriter(tmp_path, state_dict_fingerprint(sd), max_shard_bytes=1 << 20)
    bg = BackgroundWriter(writer)
    for name, tensor in sd.items():
        bg.add(name, tensor)
    bg.close()
    writer.close()
    got = load_file(str(tmp_path / SINGLE_FILE))
    assert all(torch.equal(got[n], sd[n]) for n in sd)


def test_buffer_pool_reuses_written_outputs_and_never_stalls_after_an_error():
    import threading

    from safe_cpift.merge.background import BackgroundWriter, BufferPool

    class Writer:
        def __init__(self, fail_at=None):
            self.sums, self.fail_at = [], fail_at

        def add(self, name, tensor):
            if name == self.fail_at:
                raise OSError("disk full")
            self.sums.append(float(tensor.sum()))

    pool = BufferPool(10, count=2)
    writer = Writer()
    bg = BackgroundWriter(writer, on_written=pool.give)
    pointers = set()
    for i in range(8):
        out = pool.take(5 + i % 3)  # a view of one of at most two buffers
        out.fill_(float(i))
        pointers.add(out.data_ptr())
        bg.add(f"t{i}", out)
    bg.close()
    assert writer.sums == [float(i) * (5 + i % 3) for i in range(8)]  # each written before its buffer was reused
    assert len(pointers) == 2
    with pytest.raises(ValueError, match="does not fit"):
        pool.take(11)

    def run():  # a failed write still hands its buffer back: the next take does not wait forever
        bg = BackgroundWriter(Writer(fail_at="t1"), on_written=pool.give)
        try:
            for i in range(6):
                bg.add(f"t{i}", pool.take(4))
            bg.close()
        except OSError:
            bg.abort()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "pool.take waited for a buffer the failed writer never gave back"
