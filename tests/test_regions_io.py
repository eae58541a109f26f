"""CoreRegion on disk: streaming extraction from sharded checkpoints, save/load, the `region` CLI."""

import json

import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import save_file

from safe_cpift.cli import main
from safe_cpift.io import ShardedWriter, open_checkpoint
from safe_cpift.regions import CoreRegion
from safe_cpift.regions import select as region_select


def write_sharded(state, path, shard_bytes=20_000):
    path.mkdir(parents=True)
    with ShardedWriter(path, max_shard_bytes=shard_bytes) as w:
        for name, t in state.items():
            w.add(name, t)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = {k: v.detach().clone() for k, v in make_tiny_llama(seed=0).state_dict().items()}
    g = torch.Generator().manual_seed(3)
    tuned = {k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()}
    write_sharded(base, root / "base")
    write_sharded(tuned, root / "tuned")
    return base, tuned, root


@pytest.mark.parametrize("scope", ["global", "tensor", "layer"])
def test_streaming_from_sharded_dirs_equals_in_memory(pair, scope, monkeypatch):
    base, tuned, root = pair
    assert len(open_checkpoint(root / "base").shard_files()) > 3
    monkeypatch.setattr(region_select, "CHUNK", 1000)  # several chunks per tensor as on big models
    streamed = CoreRegion.from_update(root / "base", str(root / "tuned"), top_p=0.03, scope=scope)
    monkeypatch.setattr(region_select, "CHUNK", 1 << 24)
    memory = CoreRegion.from_update(base, tuned, top_p=0.03, scope=scope)
    assert streamed == memory
    assert streamed.fingerprint == memory.fingerprint
    assert streamed.num_selected > 0


def test_mixed_sources_and_bf16_checkpoints(pair, tmp_path):
    base, tuned, root = pair
    model = make_tiny_llama(seed=0)
    assert CoreRegion.from_update(model, root / "tuned", top_p=0.01) == CoreRegion.from_update(base, tuned, top_p=0.01)
    # a bf16 pair: scores computed in float32 from the bf16 values
    b16 = {k: v.to(torch.bfloat16) for k, v in base.items()}
    t16 = {k: v.to(torch.bfloat16) for k, v in tuned.items()}
    save_file(b16, str(tmp_path / "b.safetensors"))
    save_file(t16, str(tmp_path / "t.safetensors"))
    r16 = CoreRegion.from_update(tmp_path / "b.safetensors", tmp_path / "t.safetensors", top_p=0.01)
    assert r16 == CoreRegion.from_update(b16, t16, top_p=0.01)
    assert set(d for _, d in r16.fingerprint.values()) == {"bfloat16"}


def test_save_load_round_trip(pair, tmp_path):
    base, tuned, _ = pair
    region = CoreRegion.from_update(base, tuned, top_p=0.02, scorer="alignment")
    out = region.save(tmp_path / "core")
    assert sorted(p.name for p in out.iterdir()) == ["region.json", "region.safetensors"]
    meta = json.loads((out / "region.json").read_text())
    assert meta["top_p"] == 0.02 and meta["scope"] == "global" and meta["scorer"] == "alignment"
    assert meta["version"] == 1 and meta["num_selected"] == region.num_selected
    assert meta["fingerprint"]["lm_head.weight"] == [[64, 32], "float32"]
    loaded = CoreRegion.load(out)
    assert loaded == region
    assert loaded.fingerprint == region.fingerprint
    assert (loaded.top_p, loaded.scope, loaded.scorer) == (0.02, "global", "alignment")
    for name in base:
        assert torch.equal(loaded.indices(name), region.indices(name))
    stored = open_checkpoint(out / "region.safetensors")
    assert {stored.dtype(n) for n in stored.names()} == {torch.int32}
    # saving never clobbers silently, and leaves no temp dirs behind
    with pytest.raises(FileExistsError):
        region.save(out)
    region.save(out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["core"]


def test_load_rejects_tampered_or_missing(pair, tmp_path):
    base, tuned, _ = pair
    out = CoreRegion.from_update(base, tuned, top_p=0.02).save(tmp_path / "core")
    meta = json.loads((out / "region.json").read_text())
    meta["counts"]["lm_head.weight"] += 1
    (out / "region.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="inconsistent"):
        CoreRegion.load(out)
    with pytest.raises(FileNotFoundError, match="no core region"):
        CoreRegion.load(tmp_path / "nothing")


def test_cli_extract_show_compare(pair, tmp_path, capsys):
    _, _, root = pair
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    assert main(["region", "extract", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                 "--top-p", "0.02", "--out", str(r1)]) == 0
    human = capsys.readouterr().out
    assert "core region" in human and "attn" in human and "share of core" in human
    assert main(["region", "extract", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                 "--top-p", "0.02", "--scope", "tensor", "--out", str(r2), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scope"] == "tensor" and summary["entries"] == CoreRegion.load(r2).num_selected
    r3 = tmp_path / "r3"
    assert main(["region", "extract", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                 "--top-p", "0.02", "--threads", "3", "--out", str(r3), "--json"]) == 0
    capsys.readouterr()
    assert CoreRegion.load(r3) == CoreRegion.load(r1)  # worker threads do not change the region
    assert main(["region", "extract", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                 "--threads", "0", "--out", str(tmp_path / "r4")]) != 0
    assert "`num_threads` must be >= 1" in capsys.readouterr().err

    assert main(["region", "show", str(r1), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["entries"] == CoreRegion.load(r1).num_selected
    assert set(shown["stats"]["by_layer"]) == {"0", "1", "none"}
    assert main(["region", "show", str(r1)]) == 0
    assert "layer" in capsys.readouterr().out

    assert main(["region", "compare", str(r1), str(r2), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    a, b = CoreRegion.load(r1), CoreRegion.load(r2)
    assert cmp["names"] == ["r1", "r2"]
    assert cmp["jaccard"][0][1] == pytest.approx(a.jaccard(b))
    assert cmp["overlap"][1][0] == pytest.approx(a.overlap(b))
    plot = tmp_path / "overlap.png"
    assert main(["region", "compare", str(r1), "--protect", str(r2), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "Jaccard" in out and "safety" in out
    assert plot.stat().st_size > 1000


def test_cli_errors_are_clean(pair, tmp_path, capsys):
    _, _, root = pair
    code = main(["region", "extract", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                 "--top-p", "2", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "`top_p`" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    other = write_sharded({k: v for k, v in make_tiny_llama(hidden=48).state_dict().items()}, tmp_path / "other")
    assert main(["region", "extract", "--base", str(root / "base"), "--tuned", str(other),
                 "--out", str(tmp_path / "r")]) == 2
    assert "shape" in capsys.readouterr().err
