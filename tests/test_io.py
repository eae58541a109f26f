"""Streaming safetensors reader/writer and atomic writes."""

import json

import pytest
import torch

from safe_cpift.errors import CheckpointError, MissingWeightsError
from safe_cpift.io import (
    INDEX_FILE,
    ShardedWriter,
    atomic_directory,
    atomic_write_json,
    open_checkpoint,
    state_dict_fingerprint,
    weight_files,
)
from safe_cpift.models import as_state_dict, load_causal_lm


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(64, 32, generator=g) for i in range(5)} | {
        "half": torch.randn(8, dtype=torch.float64, generator=g).to(torch.bfloat16)
    }


def test_sharded_write_read_roundtrip(tmp_path):
    tensors = _tensors()
    with ShardedWriter(tmp_path / "ckpt", max_shard_bytes=64 * 32 * 4 * 2) as w:
        for k, v in tensors.items():
            w.add(k, v)
    index = json.loads((tmp_path / "ckpt" / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) == 3
    reader = open_checkpoint(tmp_path / "ckpt")
    assert sorted(reader.names()) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(reader.get(k), v)
        assert reader.shape(k) == tuple(v.shape)
    assert reader.fingerprint() == state_dict_fingerprint(tensors)


def test_single_shard_uses_model_safetensors(tmp_path):
    with ShardedWriter(tmp_path / "c") as w:
        w.add("a", torch.ones(3))
    assert (tmp_path / "c" / "model.safetensors").is_file()
    assert not (tmp_path / "c" / INDEX_FILE).exists()
    with pytest.raises(ValueError, match="written twice"):
        w2 = ShardedWriter(tmp_path / "d")
        w2.add("a", torch.ones(1))
        w2.add("a", torch.ones(1))


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (target / "done.txt").read_text() == "ok"
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1, "p": tmp_path})
    assert json.loads((tmp_path / "a" / "r.json").read_text())["x"] == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle"):
        open_checkpoint(tmp_path)
    with pytest.raises(MissingWeightsError, match=r"(?s)not a \.safetensors file.*save_pretrained\(q\)"):
        open_checkpoint(tmp_path / "pytorch_model.bin")


def test_checkpoint_index_problems_name_the_file(tmp_path, tiny_llama):
    tiny_llama(seed=1).save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = tmp_path / "m" / "model.safetensors.index.json"
    shards = weight_files(tmp_path / "m")
    assert len(shards) > 2 and all(p.is_file() for p in shards)
    shards[0].unlink()
    shards[-1].unlink()
    with pytest.raises(MissingWeightsError, match=rf"`{shards[0].name}`.*`{shards[-1].name}`.*{len(shards) - 2} of "):
        weight_files(tmp_path / "m")
    index.write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        open_checkpoint(tmp_path / "m")
    index.unlink()
    assert weight_files(tmp_path / "m") == sorted(p for p in shards[1:-1])  # bare shards, no index


def test_load_local_model_and_state_dict_views(tmp_path, tiny_llama):
    model = tiny_llama(seed=1)
    model.save_pretrained(tmp_path / "m")
    loaded = load_causal_lm(tmp_path / "m")
    sd_model = as_state_dict(model)
    sd_dir = as_state_dict(tmp_path / "m")
    for name, p in loaded.named_parameters():
        assert torch.equal(p, sd_model[name])
        assert torch.equal(sd_dir[name], sd_model[name])
    with pytest.raises(FileNotFoundError):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(TypeError):
        as_state_dict(42)


def test_atomic_outputs_get_the_usual_modes(tmp_path):
    import os
    import stat

    atomic_write_json(tmp_path / "r.json", {})
    with atomic_directory(tmp_path / "d") as d:
        (d / "x").write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
