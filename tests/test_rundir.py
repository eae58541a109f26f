"""RunDirectory: atomic stages, manifest, resume, and refusal to resume with another recipe."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from safe_cpift.pipeline.rundir import MANIFEST, STAGE_FILE, RunDirectory, recipe_diff

RECIPE = {"model": {"source": "toyworld"}, "cpift": {"top_p": 0.01, "tau": 0.1}, "tasks": [{"name": "a"}],
          "output_dir": "runs/x"}


def test_manifest_records_recipe_versions_seed_and_stages(tmp_path):
    run = RunDirectory.open(tmp_path / "run", RECIPE, seed=3)
    with run.stage("probe_a", {"examples": 8}) as tmp:
        (tmp / "out.txt").write_text("x")
    m = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert m["recipe"] == RECIPE and m["seed"] == 3 and m["status"] == "running"
    assert {"python", "torch", "transformers", "trl", "safe-cpift"} <= set(m["versions"])
    (entry,) = m["stages"]
    assert entry["name"] == "probe_a" and entry["status"] == "done" and entry["seconds"] >= 0
    assert entry["started"] <= entry["finished"]
    umask = os.umask(0)
    os.umask(umask)
    assert run.stage_path("probe_a").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert run.is_done("probe_a") and (run.stage_path("probe_a") / "out.txt").read_text() == "x"
    info = run.stage_info("probe_a")
    assert info["examples"] == 8 and info["name"] == "probe_a"
    run.finish()
    assert RunDirectory(tmp_path / "run").manifest["status"] == "complete"


def test_failed_stage_leaves_nothing(tmp_path):
    run = RunDirectory.open(tmp_path, RECIPE, seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        with run.stage("fusion") as tmp:
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("boom")
    assert not run.is_done("fusion") and not run.stage_path("fusion").exists()
    assert not list(tmp_path.glob(".fusion.tmp-*"))
    (entry,) = run.manifest["stages"]
    assert entry["status"] == "failed" and "boom" in entry["error"]
    with run.stage("fusion") as tmp:  # retry works
        (tmp / "ok").write_text("1")
    assert run.is_done("fusion") and run.completed() == ["fusion"]


def test_resume_skips_done_stages(tmp_path):
    run = RunDirectory.open(tmp_path, RECIPE, seed=0)
    calls = []
    assert run.run("a", lambda d: calls.append("a") or {"n": 1})
    again = RunDirectory.open(tmp_path, {**RECIPE, "output_dir": "elsewhere"}, seed=0, resume=True)
    assert not again.run("a", lambda d: calls.append("a2"))
    assert again.run("b", lambda d: calls.append("b"))
    assert calls == ["a", "b"] and again.completed() == ["a", "b"]
    assert again.manifest["resumed"] == 1
    with pytest.raises(ValueError, match="already done"):
        with again.stage("a"):
            pass


def test_existing_run_without_resume_is_refused(tmp_path):
    RunDirectory.open(tmp_path, RECIPE, seed=0)
    with pytest.raises(ValueError, match="pass `--resume`.*new `--output-dir`"):
        RunDirectory.open(tmp_path, RECIPE, seed=0)


def test_resume_with_another_recipe_lists_differing_keys(tmp_path):
    RunDirectory.open(tmp_path, RECIPE, seed=0)
    changed = {**RECIPE, "cpift": {"top_p": 0.02, "tau": 0.1}, "tasks": [{"name": "b"}]}
    with pytest.raises(ValueError) as err:
        RunDirectory.open(tmp_path, changed, seed=1, resume=True)
    text = str(err.value)
    assert "changed: cpift.top_p, tasks[0].name, seed" in text


def test_resume_with_other_resolved_inputs_is_refused(tmp_path):
    RunDirectory.open(tmp_path, RECIPE, seed=0, inputs={"aligned_model": "/cache/toyworld-aaa/aligned"})
    with pytest.raises(ValueError, match=r"changed: inputs\.aligned_model"):
        RunDirectory.open(tmp_path, RECIPE, seed=0, resume=True, inputs={"aligned_model": "/cache/toyworld-bbb/aligned"})
    RunDirectory.open(tmp_path, RECIPE, seed=0, resume=True, inputs={"aligned_model": "/cache/toyworld-aaa/aligned"})


def test_non_run_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory or a safe-cpift run"):
        RunDirectory.open(tmp_path, RECIPE, seed=0, resume=True)


def test_bad_stage_names(tmp_path):
    run = RunDirectory.open(tmp_path, RECIPE, seed=0)
    for bad in ("../x", ".hidden", "a/b", "manifest.json", ""):
        with pytest.raises(ValueError, match="stage name"):
            run.stage_path(bad)


def test_recipe_diff():
    assert recipe_diff({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}}) == ["b.c[1]"]
    assert recipe_diff({"a": 1}, {"a": 1, "z": 2}) == ["z"]
    assert recipe_diff({"output_dir": "x"}, {"output_dir": "y"}) == []
    assert recipe_diff({"t": [1]}, {"t": [1, 2]}) == ["t"]


KILLED_STAGE = textwrap.dedent("""
    import sys, time
    from safe_cpift.pipeline.rundir import RunDirectory
    run = RunDirectory.open(sys.argv[1], {"x": 1}, seed=0, resume=True)
    with run.stage("slow") as tmp:
        (tmp / "part").write_text("half")
        print("inside", flush=True)
        time.sleep(60)
""")


def test_killed_process_leaves_no_half_stage_and_resume_cleans_up(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_STAGE, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(run_dir.glob(".slow.tmp-*")) and not (run_dir / "slow").exists()
    run = RunDirectory.open(run_dir, {"x": 1}, seed=0, resume=True)
    assert not list(run_dir.glob(".slow.tmp-*")) and not run.is_done("slow")
    assert run.manifest["stages"][0]["status"] == "interrupted"  # the killed process had recorded "running"
    with run.stage("slow") as tmp:
        (tmp / "part").write_text("full")
    assert (run.stage_path("slow") / "part").read_text() == "full"
    assert (run.stage_path("slow") / STAGE_FILE).is_file()


def test_kill_between_rename_and_manifest_save_counts_the_stage_as_done(tmp_path):
    run = RunDirectory.open(tmp_path, RECIPE, seed=0)
    run.run("a", lambda d: {"n": 1})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["stages"][0]["status"] = "running"  # as if killed right after the rename
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    again = RunDirectory.open(tmp_path, RECIPE, seed=0, resume=True)
    assert again.completed() == ["a"] and not again.run("a", lambda d: {"n": 2})
    assert again.stage_info("a")["n"] == 1
    assert "finished" not in again.stage_info("a")  # stage.json holds no timestamps


def test_manifest_records_each_stages_disk_written_and_peak_memory(tmp_path):
    """Disk is the stage directory's bytes; the peak is the stage's own (the high-water mark is reset per stage).

    Run in a fresh process: inside a long test session the allocator reuses memory freed by earlier
    tests, so a new 64 MiB tensor need not raise the process's resident set at all.
    """
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from safe_cpift.pipeline.rundir import RunDirectory
        run = RunDirectory.open({str(tmp_path / "run")!r}, {RECIPE!r}, seed=0)
        with run.stage("big") as tmp:
            (tmp / "weights.bin").write_bytes(bytes(3_000_000))
            big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            assert float(big.sum()) > 0
            del big
        with run.stage("small") as tmp:
            (tmp / "note.txt").write_text("x")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    run = RunDirectory(tmp_path / "run")
    entries = {e["name"]: e for e in json.loads((tmp_path / "run" / MANIFEST).read_text())["stages"]}
    assert entries["big"]["disk_bytes"] >= 3_000_000 and entries["small"]["disk_bytes"] < 1000
    assert entries["big"]["peak_rss_bytes"] >= 64 * 2**20
    if entries["small"]["peak_rss_scope"] == "stage":  # Linux: the 64 MiB of the first stage do not count here
        assert entries["small"]["peak_rss_bytes"] < entries["big"]["peak_rss_bytes"] - 48 * 2**20
    assert "disk_bytes" not in json.loads((run.stage_path("big") / STAGE_FILE).read_text())  # results stay reproducible
