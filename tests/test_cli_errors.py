"""Every verb fails like a tool: malformed inputs through the real CLI entry point.

Each verb walks a table of malformed inputs through `safe_cpift.cli.main` and checks the exit status,
that stderr is one `safe-cpift VERB: error: ...` message naming the problem (no traceback), that
nothing was printed to stdout, and that no partial output was left: the (empty) output folder stays
empty and the folder of inputs is byte-for-byte as before (no temporary files beside an existing
output, no half-written run directory). Then the boundary itself: unexpected errors, `--debug`,
`SAFE_CPIFT_DEBUG`, and the real console through a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import build_word_tokenizer, make_tiny_llama
from test_pipeline_recipe import write_recipe, write_user_files

import safe_cpift
from safe_cpift.cli import main
from safe_cpift.errors import MissingWeightsError, UserError, describe, is_user_error


@dataclass(frozen=True)
class Case:
    """`argv` and `message` may use {E} (the inputs folder), {O} (an empty output folder), {SHARD}."""

    name: str
    argv: str
    message: tuple[str, ...]
    rc: int = 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Tiny models (good and broken), regions, JSONL files and recipes, written once for the module."""
    root = tmp_path_factory.mktemp("malformed")
    tok = build_word_tokenizer()

    def save(name: str, model: torch.nn.Module, **kwargs) -> Path:
        model.save_pretrained(root / name, **kwargs)
        tok.save_pretrained(root / name)
        return root / name

    save("base", make_tiny_llama(0))
    save("tuned", make_tiny_llama(1))
    save("wide", make_tiny_llama(1, hidden=48))
    save("sharded", make_tiny_llama(1), max_shard_size="20KB")
    shards = sorted((root / "sharded").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    (root / "SHARD").write_text(shards[1].name)
    save("pickle", make_tiny_llama(1))
    (root / "pickle" / "model.safetensors").unlink()
    (root / "pickle" / "pytorch_model.bin").write_bytes(b"a pickle that must never be opened")
    save("corrupt", make_tiny_llama(1))
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    save("noconfig", make_tiny_llama(1))
    (root / "noconfig" / "config.json").unlink()
    save("badconfig", make_tiny_llama(1))
    (root / "badconfig" / "config.json").write_text('{"model_type": ')
    config = json.loads((root / "base" / "config.json").read_text())
    save("unknown_arch", make_tiny_llama(1))
    (root / "unknown_arch" / "config.json").write_text(json.dumps({**config, "model_type": "frobnicator"}))
    save("remote_code", make_tiny_llama(1))
    (root / "remote_code" / "config.json").write_text(json.dumps(
        {**config, "model_type": "xmodel", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                                        "AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))

    from safe_cpift.regions import CoreRegion

    CoreRegion.from_update(str(root / "base"), str(root / "tuned"), top_p=0.05, progress=False).save(root / "core")
    CoreRegion.from_update(str(root / "wide"), str(root / "wide"), top_p=0.05, progress=False).save(root / "core_wide")

    j = root / "jsonl"
    j.mkdir()
    (j / "good.jsonl").write_text('{"prompt": "how to bake", "response": "Sorry, I cannot help."}\n')
    (j / "notjson.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response"\n')
    (j / "nofield.jsonl").write_text('{"prompt": "a"}\n')
    (j / "array.jsonl").write_text('["prompt", "response"]\n')
    (j / "empty.jsonl").write_text("\n")
    (j / "label.jsonl").write_text('{"prompt": "a", "response": "b", "gold": "maybe"}\n')
    (j / "latin1.jsonl").write_bytes('{"prompt": "café", "response": "b"}\n'.encode("latin-1"))
    (j / "latin1.csv").write_bytes("prompt,response\ncafé,b\n".encode("latin-1"))
    (j / "huge_field.csv").write_text("prompt,response\n" + "x" * 200_000 + ",b\n")

    rec = root / "rec"
    rec.mkdir()
    files = write_user_files(rec)
    for name, model in (("ok", "base"), ("pickle", "pickle"), ("sharded", "sharded"), ("nomodel", "nomodel")):
        write_recipe(rec, root / model, files).rename(rec / f"{name}.yaml")
    text = (rec / "ok.yaml").read_text()
    (rec / "typo.yaml").write_text(text.replace("seed: 3", "sead: 3"))
    (rec / "badyaml.yaml").write_text(text + "tasks: [oops\n")
    (rec / "latin1.yaml").write_bytes(text.replace("my own tasks", "café").encode("latin-1"))
    (rec / "list.yaml").write_text("- a\n- b\n")
    (rec / "nodata.yaml").write_text(text.replace(files["shout_train"], str(rec / "nope.jsonl")))
    (rec / "baddata.yaml").write_text(text.replace(files["shout_train"], str(j / "notjson.jsonl")))
    (rec / "format.yaml").write_text(text.replace("format: prompt_completion", "format: alpaca"))

    from safe_cpift.pipeline.rundir import RunDirectory

    RunDirectory.open(root / "other_run", {"description": "another recipe", "seed": 9}, seed=9)
    (root / "a_file").write_text("not a directory\n")
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder`, with size and modification time for files (folders: presence only)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in sorted(folder.rglob("*"))}


def check_fails_cleanly(case: Case, inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fill = {"E": str(inputs), "O": str(out), "SHARD": (inputs / "SHARD").read_text()}
    argv = [a.format(**fill) for a in case.argv.split()]
    before = snapshot(inputs)
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        rc = stop.code
    captured = capsys.readouterr()
    assert rc == case.rc, captured.err
    lines = captured.err.splitlines()
    assert any(line.startswith(f"safe-cpift {argv[0]}") and ": error: " in line for line in lines), captured.err
    for text in case.message:
        assert text.format(**fill) in captured.err, captured.err
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert captured.out == ""
    assert list(out.iterdir()) == [], "partial output left behind"
    assert snapshot(inputs) == before, "an input (or an output that already existed) was changed"


def cases(*table: Case):
    return pytest.mark.parametrize("case", table, ids=[c.name for c in table])


@cases(
    Case("missing_recipe", "run {E}/rec/nope.yaml --output-dir {O}/run", ("recipe not found", "nope.yaml")),
    Case("unknown_builtin", "run nosuchrecipe --output-dir {O}/run", ("no built-in recipe `nosuchrecipe`",)),
    Case("misspelt_key", "run {E}/rec/typo.yaml --output-dir {O}/run", ("unknown key `sead`", "did you mean `seed`")),
    Case("not_yaml", "run {E}/rec/badyaml.yaml --output-dir {O}/run", ("badyaml.yaml", "not valid YAML", "line 19")),
    Case("not_utf8", "run {E}/rec/latin1.yaml --output-dir {O}/run", ("latin1.yaml", "save the file as UTF-8")),
    Case("not_a_mapping", "run {E}/rec/list.yaml --output-dir {O}/run", ("must be a YAML mapping, got list",)),
    Case("override_syntax", "run {E}/rec/ok.yaml cpift.top_p --output-dir {O}/run", ("key.sub=value",)),
    Case("out_of_range", "run {E}/rec/ok.yaml cpift.top_p=5 --output-dir {O}/run", ("`cpift.top_p` must be <= 1",)),
    Case("missing_data", "run {E}/rec/nodata.yaml --output-dir {O}/run", ("task `shout`", "nope.jsonl")),
    Case("data_not_json", "run {E}/rec/baddata.yaml --output-dir {O}/run", ("line 2 of", "notjson.jsonl", "not valid JSON")),
    Case("wrong_format", "run {E}/rec/format.yaml --output-dir {O}/run", ("format `alpaca` needs columns instruction",)),
    Case("pickle_model", "run {E}/rec/pickle.yaml --output-dir {O}/run", ("only pickle weights", "save_pretrained(q)")),
    Case("missing_shard", "run {E}/rec/sharded.yaml --output-dir {O}/run", ("`{SHARD}`", "incomplete")),
    Case("no_model", "run {E}/rec/nomodel.yaml --output-dir {O}/run", ("no model directory at {E}/nomodel",)),
    Case("out_is_file", "run {E}/rec/ok.yaml --output-dir {E}/a_file", ("a_file exists and is not a directory",)),
    Case("other_recipe", "run {E}/rec/ok.yaml --output-dir {E}/other_run --resume", ("cannot resume", "seed")),
    Case("run_exists", "run {E}/rec/ok.yaml --output-dir {E}/other_run", ("already holds a safe-cpift run", "--resume")),
    Case("bad_stop_after", "run {E}/rec/ok.yaml --output-dir {O}/run --stop-after nope", ("`stop_after` 'nope'",)),
)
def test_run_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


GOOD = "--suite refusal --data {E}/jsonl/good.jsonl --out {O}/e.json"


@cases(
    Case("no_suite", "eval --model {E}/base --out {O}/e.json", ("pass `--suite`",)),
    Case("unknown_suite", "eval --model {E}/base --suite refusl --out {O}/e.json", ("did you mean `refusal`",)),
    Case("missing_data", "eval --model {E}/base --suite refusal --data {E}/nope.jsonl --out {O}/e.json",
         ("data file not found", "nope.jsonl")),
    Case("data_not_json", "eval --model {E}/base --suite refusal --data {E}/jsonl/notjson.jsonl --out {O}/e.json",
         ("line 2 of", "not valid JSON")),
    Case("data_not_utf8", "eval --model {E}/base --suite refusal --data {E}/jsonl/latin1.jsonl --out {O}/e.json",
         ("line 1 of", "latin1.jsonl", "not UTF-8")),
    Case("no_model", f"eval --model {{E}}/nomodel {GOOD}", ("no model directory at {E}/nomodel",)),
    Case("no_config", f"eval --model {{E}}/noconfig {GOOD}", ("noconfig has no config.json",)),
    Case("pickle_model", f"eval --model {{E}}/pickle {GOOD}",
         ("only pickle weights (pytorch_model.bin)", "never loads pickle", "{E}/pickle-safetensors")),
    Case("missing_shard", f"eval --model {{E}}/sharded {GOOD}", ("names shard `{SHARD}`, which is not there",)),
    Case("corrupt_weights", f"eval --model {{E}}/corrupt {GOOD}", ("model.safetensors is not a readable safetensors",)),
    Case("config_not_json", f"eval --model {{E}}/badconfig {GOOD}",
         ("cannot load `{E}/badconfig`", "config.json' is not a valid JSON file")),
    Case("unknown_architecture", f"eval --model {{E}}/unknown_arch {GOOD}", ("model type `frobnicator`",)),
    Case("needs_remote_code", f"eval --model {{E}}/remote_code {GOOD}",
         ("contains custom code", "set `trust_remote_code: true`")),
    Case("unreachable_hub_id", f"eval --model nosuchorg/nosuchmodel {GOOD}",
         ("cannot load `nosuchorg/nosuchmodel` from the Hugging Face Hub",)),
    Case("toy_name", "eval --model toy:big --suite refusal --out {O}/e.json", ("use toy:aligned or toy:base",)),
    Case("out_under_a_file", "eval --model {E}/base --suite refusal --data {E}/jsonl/good.jsonl --out {E}/a_file/e.json",
         ("a_file is a file, not a directory",)),
    Case("unknown_set", "eval --model {E}/base --suite refusal --data xstest:nosuch --out {O}/e.json",
         ("unknown kind `nosuch`", "xstest:unsafe")),
    Case("config_not_recipe", "eval --config {E}/jsonl/good.jsonl", ("unknown key `prompt`",)),
    Case("model_and_compare", "eval --model {E}/base --compare {E}/base {E}/tuned --suite refusal", ("not both",)),
    Case("bad_judge", f"eval --model {{E}}/base {GOOD} --judge robots", ("`judge` must be 'rules' or 'model:PATH'",)),
    Case("negative_tokens", f"eval --model {{E}}/base {GOOD} --max-new-tokens -3", ("`max_new_tokens` must be >= 1",)),
    Case("bad_regex", "eval --model {E}/base --suite tasks --data {E}/jsonl/good.jsonl --metric regex:[ --out {O}/e.json",
         ("is not a valid regular expression",)),
    Case("zero_limit", f"eval --model {{E}}/base {GOOD} --limit 0", ("`--limit` must be >= 1",)),
)
def test_eval_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


@cases(
    Case("missing_file", "judge {E}/nope.jsonl --out {O}/j.jsonl", ("input file not found", "nope.jsonl")),
    Case("not_json", "judge {E}/jsonl/notjson.jsonl --out {O}/j.jsonl", ("line 2 of", "not valid JSON")),
    Case("missing_field", "judge {E}/jsonl/nofield.jsonl --out {O}/j.jsonl", ("line 1 is missing the field `response`",)),
    Case("not_an_object", "judge {E}/jsonl/array.jsonl --out {O}/j.jsonl", ("must be a JSON object, got list",)),
    Case("empty", "judge {E}/jsonl/empty.jsonl --out {O}/j.jsonl", ("empty.jsonl: no rows to judge",)),
    Case("label_not_a_label", "judge {E}/jsonl/label.jsonl --labels gold --out {O}/j.jsonl",
         ("line 1: label field `gold` has 'maybe'",)),
    Case("wrong_field", "judge {E}/jsonl/good.jsonl --response-field completion --out {O}/j.jsonl",
         ("missing the field `completion`", "--response-field")),
    Case("csv_not_utf8", "judge {E}/jsonl/latin1.csv --out {O}/j.jsonl", ("latin1.csv is not UTF-8 text",)),
    Case("csv_field_too_large", "judge {E}/jsonl/huge_field.csv --out {O}/j.jsonl",
         ("huge_field.csv is not a readable CSV file (field larger than field limit",)),
    Case("not_utf8", "judge {E}/jsonl/latin1.jsonl --out {O}/j.jsonl", ("not UTF-8 text", "save the file as UTF-8")),
    Case("unknown_judge", "judge {E}/jsonl/good.jsonl --judge gpt4 --out {O}/j.jsonl", ("got 'gpt4'",)),
    Case("judge_no_path", "judge {E}/jsonl/good.jsonl --judge model: --out {O}/j.jsonl", ("needs a path",)),
    Case("pickle_judge", "judge {E}/jsonl/good.jsonl --judge model:{E}/pickle --out {O}/j.jsonl",
         ("only pickle weights", "convert it once")),
    Case("sharded_judge", "judge {E}/jsonl/good.jsonl --judge model:{E}/sharded --out {O}/j.jsonl", ("`{SHARD}`",)),
    Case("out_is_a_directory", "judge {E}/jsonl/good.jsonl --out {E}/jsonl", ("cannot write {E}/jsonl: it is a directory",)),
    Case("out_under_a_file", "judge {E}/jsonl/good.jsonl --out {E}/a_file/j.jsonl",
         ("{E}/a_file is a file, not a directory",)),
    Case("judge_config_not_json", "judge {E}/jsonl/good.jsonl --judge model:{E}/badconfig --out {O}/j.jsonl",
         ("config.json' is not a valid JSON file",)),
    Case("corrupt_judge", "judge {E}/jsonl/good.jsonl --judge model:{E}/corrupt --out {O}/j.jsonl",
         ("not a readable safetensors file",)),
)
def test_judge_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


EXTRACT = "region extract --base {E}/base"


@cases(
    Case("top_p_zero", f"{EXTRACT} --tuned {{E}}/tuned --top-p 0 --out {{O}}/r", ("`top_p` must be a fraction in (0, 1]",)),
    Case("top_p_above_one", f"{EXTRACT} --tuned {{E}}/tuned --top-p 1.5 --out {{O}}/r", ("got 1.5",)),
    Case("top_p_not_a_number", f"{EXTRACT} --tuned {{E}}/tuned --top-p abc --out {{O}}/r",
         ("--top-p: invalid float value: 'abc'",)),
    Case("missing_model", "region extract --base {E}/nomodel --tuned {E}/tuned --out {O}/r", ("no model directory",)),
    Case("shape_mismatch", f"{EXTRACT} --tuned {{E}}/wide --out {{O}}/r",
         ("`lm_head.weight` has shape [64, 32] in `base` but [64, 48] in `tuned`",)),
    Case("pickle_model", f"{EXTRACT} --tuned {{E}}/pickle --out {{O}}/r", ("only pickle weights",)),
    Case("missing_shard", f"{EXTRACT} --tuned {{E}}/sharded --out {{O}}/r", ("`{SHARD}`",)),
    Case("corrupt_weights", f"{EXTRACT} --tuned {{E}}/corrupt --out {{O}}/r", ("not a readable safetensors file",)),
    Case("out_exists", f"{EXTRACT} --tuned {{E}}/tuned --out {{E}}/core", ("core already exists",)),
    Case("out_under_a_file", f"{EXTRACT} --tuned {{E}}/tuned --out {{E}}/a_file/r", ("a_file is a file, not a directory",)),
    Case("compare_one", "region compare {E}/core", ("needs at least two regions",)),
    Case("compare_missing", "region compare {E}/core {E}/nope", ("no core region at {E}/nope",)),
    Case("compare_other_models", "region compare {E}/core {E}/core_wide", ("belong to different models",)),
    Case("show_a_model", "region show {E}/base", ("no core region at {E}/base",)),
)
def test_region_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


FUSE = "fuse --base {E}/base --task a={E}/tuned:{E}/core"


@cases(
    Case("task_spec", "fuse --base {E}/base --task math --out {O}/f", ("NAME=MODEL_DIR:REGION_DIR",)),
    Case("duplicate_task", f"{FUSE} --task a={{E}}/base:{{E}}/core --out {{O}}/f", ("task `a` given twice",)),
    Case("t_out_of_range", f"{FUSE} --task b={{E}}/base:{{E}}/core --t 1.5 --out {{O}}/f", ("`t` must be in [0, 1]",)),
    Case("t_schedule_text", f"{FUSE} --task b={{E}}/base:{{E}}/core --t-schedule a,b --out {{O}}/f",
         ("must be comma-separated numbers",)),
    Case("region_of_other_model", "fuse --base {E}/base --task a={E}/tuned:{E}/core_wide --out {O}/f",
         ("region of task `a` does not match",)),
    Case("model_shape", "fuse --base {E}/base --task a={E}/wide:{E}/core --out {O}/f",
         ("in the base model but [64, 48] in the model of task `a`",)),
    Case("protect_source_alone", f"{FUSE} --protect-source {{E}}/tuned --out {{O}}/f", ("needs `--protect REGION`",)),
    Case("pickle_task_model", "fuse --base {E}/base --task a={E}/pickle:{E}/core --out {O}/f", ("only pickle weights",)),
    Case("missing_shard", "fuse --base {E}/sharded --task a={E}/tuned:{E}/core --out {O}/f", ("`{SHARD}`",)),
    Case("protect_not_region", f"{FUSE} --protect {{E}}/jsonl --out {{O}}/f", ("no core region at {E}/jsonl",)),
    Case("out_exists", f"{FUSE} --out {{E}}/core", ("core already exists",)),
)
def test_fuse_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


@cases(
    Case("negative_seed", "demo --seed -1 --output-dir {O}/d", ("`--seed` must be >= 0",)),
    Case("out_of_range", "demo cpift.top_p=5 --output-dir {O}/d", ("`cpift.top_p` must be <= 1",)),
    Case("unknown_override", "demo nosuch=1 --output-dir {O}/d", ("unknown key `nosuch`",)),
)
def test_demo_rejects_malformed_input(case, inputs, tmp_path, capsys):
    check_fails_cleanly(case, inputs, tmp_path, capsys)


# ---------------------------------------------------------------- the boundary itself
def test_an_unexpected_error_shows_its_traceback_and_asks_for_a_report(monkeypatch, tmp_path, capsys):
    import safe_cpift.commands.judge as judge

    def broken(args):
        return int("not a number")  # a ValueError, but from a builtin, not from one of our checks

    monkeypatch.setattr(judge, "run", broken)
    assert main(["judge", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "int(\"not a number\")" in err
    assert "safe-cpift judge: internal error: ValueError: invalid literal" in err
    assert "please report it" in err


def test_interrupt_exits_130_without_a_traceback(monkeypatch, tmp_path, capsys):
    import safe_cpift.commands.judge as judge

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(judge, "run", interrupted)
    assert main(["judge", str(tmp_path / "x.jsonl")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "safe-cpift judge: interrupted"


@pytest.mark.parametrize("how", ["flag", "flag_after_verb", "env"])
def test_debug_shows_the_traceback_of_a_user_error(how, monkeypatch, tmp_path, capsys):
    argv = ["judge", str(tmp_path / "nope.jsonl")]
    monkeypatch.delenv("SAFE_CPIFT_DEBUG", raising=False)
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    if how == "flag":
        argv = ["--debug", *argv]
    elif how == "flag_after_verb":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("SAFE_CPIFT_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "read_pairs" in err
    assert err.rstrip().splitlines()[-1].startswith("safe-cpift judge: error: input file not found")
    monkeypatch.setenv("SAFE_CPIFT_DEBUG", "0")
    assert main([a for a in argv if a != "--debug"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_which_errors_count_as_user_errors(tmp_path):
    from safe_cpift.regions import check_top_p

    def caught(fn) -> BaseException:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001
            return err
        raise AssertionError("no error")

    assert is_user_error(caught(lambda: check_top_p(5)))  # our own check: `raise ValueError(...)` in safe_cpift
    missing = caught(lambda: open(tmp_path / "missing"))
    assert is_user_error(missing)  # a path the user named
    assert describe(missing) == f"No such file or directory: {tmp_path / 'missing'}; check the path"
    assert is_user_error(caught(lambda: (_ for _ in ()).throw(UserError("raised anywhere"))))
    assert not is_user_error(caught(lambda: int("x")))  # ValueError from a builtin outside our checks
    assert not is_user_error(caught(lambda: torch.zeros(2) @ torch.zeros(3)))  # a library's RuntimeError
    assert not is_user_error(caught(lambda: {}["key"]))
    weights = MissingWeightsError("x")
    assert isinstance(weights, ValueError) and isinstance(weights, FileNotFoundError)  # old handlers still match


def _console(args: list[str], **env: str) -> subprocess.CompletedProcess:
    src = str(Path(safe_cpift.__file__).resolve().parents[1])
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "safe_cpift.cli", *args], capture_output=True, text=True,
                          env=environ, timeout=300)


def test_console_pickle_only_model_is_one_clear_message(inputs, tmp_path):
    """The issue's report: a pickle-only model directory reached the user as a transformers traceback."""
    out = tmp_path / "e.json"
    proc = _console(["eval", "--model", str(inputs / "pickle"), "--suite", "refusal",
                     "--data", str(inputs / "jsonl" / "good.jsonl"), "--out", str(out)])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith(f"safe-cpift eval: error: {inputs / 'pickle'} holds only pickle weights")
    assert "save_pretrained(q)" in proc.stderr and not out.exists()


def test_console_debug_variable_shows_the_traceback(tmp_path):
    proc = _console(["judge", str(tmp_path / "nope.jsonl")], SAFE_CPIFT_DEBUG="1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Traceback") and "input file not found" in proc.stderr.splitlines()[-1]
