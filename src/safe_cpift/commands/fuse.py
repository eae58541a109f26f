"""`safe-cpift fuse`: transplant task cores, SLERP the rest, keep the safety core (CPI-FT fusion)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

EPILOG = """example:
  safe-cpift fuse --base aligned/ --task math=runs/math:cores/math --task code=runs/code:cores/code \\
      --protect cores/safety --out fused/
  safe-cpift fuse --base aligned/ --task math=runs/math:cores/math:2 --task code=runs/code:cores/code:1 \
      --task chat=runs/chat:cores/chat:1 --out fused/      # weighted N-model SLERP (weights 0.5/0.25/0.25)
Rules (also written to fused/fusion_manifest.json): non-core entries are SLERPed between the task
models (weighted spherical mean for 3+ tasks or with weights; equal weights by default; for two tasks
weights (1-t, t) give SLERP(t)), each task's core is copied exactly from its own
model (overlaps: larger |theta_task - theta_base| wins, ties by task name), and the --protect region
is copied exactly from --protect-source (default: --base) and always wins."""


def parse_task(spec: str) -> tuple[str, str, str, float | None]:
    """`NAME=MODEL:REGION[:WEIGHT]` -> (name, model, region, weight or None).

    Fields are split at the last `:`s; a last field that is a number (after MODEL:REGION) is the weight.
    """
    name, sep, rest = spec.partition("=")
    head, sep2, last = rest.rpartition(":")
    weight = None
    if sep2 and ":" in head:
        try:
            weight = float(last)
        except ValueError:
            weight = None
        else:
            rest = head
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"`--task {spec}`: WEIGHT must be a finite number >= 0, got {last}")
    model, sep2, region = rest.rpartition(":")
    if not sep or not sep2 or not name or not model or not region:
        raise ValueError(f"`--task {spec}` must look like NAME=MODEL_DIR:REGION_DIR[:WEIGHT] "
                         "(e.g. math=runs/math:cores/math or math=runs/math:cores/math:0.6)")
    return name.strip(), model, region, weight


def resolve_model(source: str) -> str:
    """A local checkpoint directory, or a hub id resolved to its local snapshot (weights + config only)."""
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser())
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"no model directory at {source} (and it does not look like a hub id)")
    from huggingface_hub import snapshot_download

    return snapshot_download(source, allow_patterns=["*.safetensors", "*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"])


def run(args: argparse.Namespace) -> int:
    from safe_cpift.merge import fuse_with_manifest
    from safe_cpift.regions import CoreRegion

    if len(args.task) < 1:
        raise ValueError("pass at least one `--task NAME=MODEL:REGION`")
    models, regions, region_paths, weights = {}, {}, {}, {}
    for spec in args.task:
        name, model, region, weight = parse_task(spec)
        if name in models:
            raise ValueError(f"task `{name}` given twice in `--task`; task names must be unique")
        if weight is not None:
            weights[name] = weight
        models[name] = resolve_model(model)
        regions[name] = CoreRegion.load(region)
        region_paths[name] = region
    if weights and len(weights) != len(models):
        unweighted = [n for n in models if n not in weights]
        raise ValueError(f"give a WEIGHT to every `--task` or to none (no weight: {', '.join(unweighted)}), "
                         "e.g. --task math=runs/math:cores/math:0.6")
    protect = CoreRegion.load(args.protect) if args.protect else None
    protect_source = resolve_model(args.protect_source) if args.protect_source else None
    if protect_source is not None and protect is None:
        raise ValueError("`--protect-source` needs `--protect REGION` (the region to copy from it)")
    try:
        t_schedule = [float(x) for x in args.t_schedule.split(",")] if args.t_schedule else None
    except ValueError:
        raise ValueError(f"`--t-schedule {args.t_schedule}` must be comma-separated numbers, e.g. 0.3,0.7") from None
    out, manifest = fuse_with_manifest(
        resolve_model(args.base), models, regions, protect=protect, protect_source=protect_source, t=args.t,
        t_schedule=t_schedule, out_dir=args.out, overwrite=args.overwrite, weights=weights or None,
        metadata={"region_paths": region_paths, "protect_path": args.protect}, num_threads=args.threads,
    )
    counts = manifest["counts"]
    if args.json:
        print(json.dumps({"out": str(out), "counts": counts, "t": manifest["t"], "weights": manifest["weights"],
                          "rule": manifest["rule"]}, indent=2))
    else:
        print(f"fused {len(models)} task model(s) into {out}")
        if manifest["weights"]:
            print("  weights: " + ", ".join(f"{n} {w:.3g}" for n, w in manifest["weights"].items()))
        print(f"  core entries transplanted: {counts['transplanted']} (per task: {counts['per_task']})")
        print(f"  entries in several task cores (resolved by |dtheta|): {counts['conflicts']}")
        if protect is not None:
            print(f"  protected entries kept from {manifest['inputs']['protect_source']}: {counts['protected']} "
                  f"({counts['protected_over_task']} overrode a task core)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fuse", help="fuse task models: transplant cores, SLERP the rest, protect the safety core",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", required=True, help="the model the tasks were tuned from (dir or hub id)")
    p.add_argument("--task", action="append", default=[], metavar="NAME=MODEL:REGION[:WEIGHT]",
                   help="a task: its tuned model dir, its core region dir and optionally its weight in the "
                   "SLERP of the non-core entries (repeat per task; weights on all tasks or none)")
    p.add_argument("--protect", default=None, metavar="REGION", help="region that always wins (the safety core)")
    p.add_argument("--protect-source", default=None, metavar="MODEL",
                   help="model the protected entries are copied from (default: --base)")
    p.add_argument("--t", type=float, default=0.5, help="SLERP factor for two tasks (default 0.5; 3+ tasks: use WEIGHTs in --task)")
    p.add_argument("--t-schedule", default=None, metavar="T0,T1,...",
                   help="per-layer t for two tasks: points spread over the decoder layers, e.g. 0.3,0.7")
    p.add_argument("--out", required=True, type=os.fspath, help="output directory (save_pretrained layout)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of the compiled float32 passes (`fast` extra; default: torch's thread count); "
                        "the result is the same for any N")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)
