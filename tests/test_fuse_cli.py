"""`safe-cpift fuse` on tiny checkpoints, through safe_cpift.cli.main."""

import json

import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.cli import main
from safe_cpift.io import open_checkpoint, state_dict_fingerprint
from safe_cpift.merge import fuse
from safe_cpift.regions import CoreRegion

Q = "model.layers.1.self_attn.v_proj.weight"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse_cli")
    models = {k: make_tiny_llama(s) for k, s in (("base", 0), ("math", 1), ("code", 2), ("chat", 3))}
    for k, m in models.items():
        m.save_pretrained(root / k)
    fp = state_dict_fingerprint({n: p.detach() for n, p in models["base"].named_parameters()})
    cores = {"math": {Q: [0, 1, 2]}, "code": {Q: [2, 3]}, "chat": {"lm_head.weight": [4]}, "safety": {Q: [1, 100]}}
    for k, entries in cores.items():
        CoreRegion({n: torch.tensor(i) for n, i in entries.items()}, fp, top_p=0.01, scope="global",
                   scorer="update").save(root / f"core_{k}")
    return root


def test_cli_fuse_json_matches_library(setup, tmp_path, capsys):
    root = setup
    out = tmp_path / "fused"
    rc = main(["fuse", "--base", str(root / "base"), "--task", f"math={root / 'math'}:{root / 'core_math'}",
               "--task", f"code={root / 'code'}:{root / 'core_code'}", "--protect", str(root / "core_safety"),
               "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out)
    assert summary["counts"]["conflicts"] == 1 and summary["counts"]["protected"] == 2
    want = fuse(str(root / "base"), {"math": str(root / "math"), "code": str(root / "code")},
                {"math": CoreRegion.load(root / "core_math"), "code": CoreRegion.load(root / "core_code")},
                protect=CoreRegion.load(root / "core_safety"))
    got = open_checkpoint(out)
    assert all(torch.equal(got.get(n), want[n]) for n in want)
    manifest = json.loads((out / "fusion_manifest.json").read_text())
    assert manifest["extra"]["region_paths"]["math"] == str(root / "core_math")
    rc = main(["fuse", "--base", str(root / "base"), "--task", f"math={root / 'math'}:{root / 'core_math'}",
               "--task", f"code={root / 'code'}:{root / 'core_code'}", "--protect", str(root / "core_safety"),
               "--threads", "0", "--out", str(tmp_path / "fused0")])
    assert rc != 0 and "`num_threads` must be >= 1" in capsys.readouterr().err


def test_cli_three_tasks_human_summary(setup, tmp_path, capsys):
    root = setup
    args = ["fuse", "--base", str(root / "base"), "--out", str(tmp_path / "f3")]
    for k in ("math", "code", "chat"):
        args += ["--task", f"{k}={root / k}:{root / f'core_{k}'}"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fused 3 task model(s)" in text and "transplanted: 5" in text
    assert main([*args, "--t", "0.3"]) == 2  # 3 tasks: t must stay 0.5
    assert "`t`" in capsys.readouterr().err


def test_cli_bad_task_spec(setup, tmp_path, capsys):
    rc = main(["fuse", "--base", str(setup / "base"), "--task", "nomodel", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "NAME=MODEL_DIR:REGION_DIR" in capsys.readouterr().err
    rc = main(["fuse", "--base", str(setup / "base"), "--task", f"a={setup / 'math'}:{setup / 'nope'}",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "no core region" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_weighted_tasks(setup, tmp_path, capsys):
    root = setup
    args = ["fuse", "--base", str(root / "base"), "--out", str(tmp_path / "w3"), "--json"]
    for k, w in (("math", "2"), ("code", "1"), ("chat", "1.0")):
        args += ["--task", f"{k}={root / k}:{root / f'core_{k}'}:{w}"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights"] == {"math": 0.5, "code": 0.25, "chat": 0.25}
    names = ("math", "code", "chat")
    want = fuse(str(root / "base"), {k: str(root / k) for k in names},
                {k: CoreRegion.load(root / f"core_{k}") for k in names},
                weights={"math": 0.5, "code": 0.25, "chat": 0.25})
    got = open_checkpoint(tmp_path / "w3")
    assert all(torch.equal(got.get(n), want[n]) for n in want)
    # a weight on some tasks only is an error naming the fix
    mixed = ["fuse", "--base", str(root / "base"), "--out", str(tmp_path / "m"),
             "--task", f"math={root / 'math'}:{root / 'core_math'}:2", "--task", f"code={root / 'code'}:{root / 'core_code'}"]
    assert main(mixed) == 2
    assert "WEIGHT to every" in capsys.readouterr().err
    bad = ["fuse", "--base", str(root / "base"), "--out", str(tmp_path / "b"),
           "--task", f"math={root / 'math'}:{root / 'core_math'}:-1"]
    assert main(bad) == 2 and "WEIGHT" in capsys.readouterr().err


def test_parse_task_weight():
    from safe_cpift.commands.fuse import parse_task

    assert parse_task("a=m:r") == ("a", "m", "r", None)
    assert parse_task("a=m:r:0.25") == ("a", "m", "r", 0.25)
    assert parse_task("a=dir:with:colon:r") == ("a", "dir:with:colon", "r", None)
    assert parse_task("a=m:0.5") == ("a", "m", "0.5", None)  # a lone number after MODEL is the region
