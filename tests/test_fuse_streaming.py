"""fuse() on sharded checkpoint directories: equals in-memory, loads with from_pretrained, atomic."""

import json

import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.io import INDEX_FILE, open_checkpoint, state_dict_fingerprint
from safe_cpift.merge import FUSION_MANIFEST, fuse, fuse_with_manifest
from safe_cpift.regions import CoreRegion

Q = "model.layers.0.self_attn.q_proj.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
EMB = "model.embed_tokens.weight"


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def region(fp, entries):
    return CoreRegion({n: torch.tensor(i) for n, i in entries.items()}, fp, top_p=0.01, scope="global",
                      scorer="update")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, word_tokenizer):
    root = tmp_path_factory.mktemp("fuse_ckpts")
    models = {"base": make_tiny_llama(0), "a": make_tiny_llama(1), "b": make_tiny_llama(2), "safe": make_tiny_llama(3)}
    dirs = {}
    for name, model in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name], max_shard_size="40KB")  # several shards each
        assert (dirs[name] / INDEX_FILE).is_file()
    word_tokenizer.save_pretrained(dirs["base"])
    fp = state_dict_fingerprint(params(models["base"]))
    regions = {"a": region(fp, {Q: [0, 1, 2, 3], EMB: [5, 6]}), "b": region(fp, {Q: [3, 4], DOWN: [0, 9]})}
    safety = region(fp, {Q: [1, 3, 77], "model.norm.weight": [0]})
    return {"root": root, "dirs": dirs, "models": models, "regions": regions, "safety": safety}


def test_streaming_equals_in_memory_and_loads(ckpts, tmp_path):
    from transformers import LlamaForCausalLM

    d, m = ckpts["dirs"], ckpts["models"]
    out_dir = tmp_path / "fused"
    path, manifest = fuse_with_manifest(d["base"], {"a": d["a"], "b": d["b"]}, ckpts["regions"],
                                        protect=ckpts["safety"], protect_source=d["safe"], out_dir=out_dir,
                                        max_shard_bytes=30_000)
    assert path == out_dir
    mem, mem_manifest = fuse_with_manifest(m["base"], {"a": m["a"], "b": m["b"]}, ckpts["regions"],
                                           protect=ckpts["safety"], protect_source=m["safe"])
    reader = open_checkpoint(out_dir)
    assert len(reader.shard_files()) > 1 and (out_dir / INDEX_FILE).is_file()
    assert sorted(reader.names()) == sorted(mem)
    for name in mem:
        assert torch.equal(reader.get(name), mem[name]), name
    # protected entries come from the protect source, exactly
    safe = params(m["safe"])
    assert torch.equal(reader.get(Q).reshape(-1)[[1, 3, 77]], safe[Q].reshape(-1)[[1, 3, 77]])
    # side files and manifest
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", FUSION_MANIFEST):
        assert (out_dir / f).is_file(), f
    written = json.loads((out_dir / FUSION_MANIFEST).read_text())
    assert written["counts"] == mem_manifest["counts"] == manifest["counts"]
    assert written["counts"]["protected"] == 4 and written["counts"]["conflicts"] == 1
    assert written["t"] == 0.5 and set(written["rule"]) == {"non_core", "core", "conflict", "protect"}
    assert written["inputs"]["tasks"] == {"a": str(d["a"]), "b": str(d["b"])}
    assert written["regions"]["protect"]["num_selected"] == 4
    # save_pretrained-loadable, with exactly these weights
    model = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32, use_safetensors=True)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), mem[name]), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    # no temporary directories left beside the output
    assert [p.name for p in tmp_path.iterdir()] == ["fused"]


def test_existing_output_and_failure_leave_nothing_behind(ckpts, tmp_path):
    d = ckpts["dirs"]
    out_dir = tmp_path / "fused"
    out_dir.mkdir()
    with pytest.raises(FileExistsError):
        fuse(d["base"], {"a": d["a"], "b": d["b"]}, ckpts["regions"], out_dir=out_dir)

    class Exploding(CoreRegion):
        def indices(self, name):
            if name == DOWN:  # a late tensor: some shards are already written
                raise RuntimeError("boom")
            return super().indices(name)

    bad = Exploding({}, ckpts["regions"]["a"].fingerprint, top_p=0.01, scope="global", scorer="update")
    target = tmp_path / "fused2"
    with pytest.raises(RuntimeError, match="boom"):
        fuse(d["base"], {"a": d["a"], "b": d["b"]}, {"a": bad, "b": ckpts["regions"]["b"]}, out_dir=target,
             max_shard_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused"]
    # overwrite=True replaces the existing directory
    fuse(d["base"], {"a": d["a"], "b": d["b"]}, ckpts["regions"], out_dir=out_dir, overwrite=True)
    assert (out_dir / FUSION_MANIFEST).is_file()


def test_region_for_another_model_is_rejected_before_writing(ckpts, tmp_path, tiny_llama):
    d = ckpts["dirs"]
    other_fp = state_dict_fingerprint(params(tiny_llama(0, layers=3)))
    foreign = region(other_fp, {Q: [0]})
    with pytest.raises(ValueError, match="region of task `b`.*model.layers.2"):
        fuse(d["base"], {"a": d["a"], "b": d["b"]}, {"a": ckpts["regions"]["a"], "b": foreign},
             out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
