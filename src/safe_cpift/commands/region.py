"""`safe-cpift region extract|compare|show`: find a core region, compare regions, describe one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

EPILOG = """examples:
  safe-cpift region extract --base base/ --tuned aligned/ --top-p 0.01 --scorer alignment --out cores/safety
  safe-cpift region compare cores/safety cores/math cores/code --plot overlap.png
  safe-cpift region show cores/safety --json"""


def _resolve_model(source: str) -> str:
    from safe_cpift.commands.fuse import resolve_model

    return resolve_model(source)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _summary(region: Any) -> dict[str, Any]:
    return {"entries": region.num_selected, "total": region.num_total, "fraction": region.fraction,
            "top_p": region.top_p, "scope": region.scope, "scorer": region.scorer,
            "tensors": len(region.names())}


def _print_region(region: Any, path: str, layers: bool) -> None:
    s = region.stats()
    print(f"core region {path}: {region.num_selected} of {region.num_total} entries "
          f"({100 * region.fraction:.3f}%), top_p={region.top_p:g}, scope={region.scope}, scorer={region.scorer}")
    rows = [[k, v["selected"], v["total"], v["fraction"], v["share"]] for k, v in s["by_module"].items()]
    print(_table(["module", "core", "entries", "core/entries", "share of core"], rows))
    if layers:
        rows = [[k, v["selected"], v["total"], v["fraction"], v["share"]] for k, v in s["by_layer"].items()]
        print()
        print(_table(["layer", "core", "entries", "core/entries", "share of core"], rows))


def run_extract(args: argparse.Namespace) -> int:
    from safe_cpift.regions import CoreRegion

    region = CoreRegion.from_update(_resolve_model(args.base), _resolve_model(args.tuned), top_p=args.top_p,
                                    scope=args.scope, scorer=args.scorer, progress=not args.json,
                                    num_threads=args.threads)
    region.metadata.update({"base": args.base, "tuned": args.tuned})
    out = region.save(args.out, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({"out": str(out), **_summary(region), "stats": region.stats()}, indent=2))
    else:
        _print_region(region, str(out), layers=False)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from safe_cpift.cluster import overlap_matrix
    from safe_cpift.regions import CoreRegion

    if len(args.regions) + bool(args.protect) < 2:
        raise ValueError("`region compare` needs at least two regions (REGION ... and/or `--protect`)")
    regions: dict[str, Any] = {}
    for path in args.regions:
        name = Path(path).name or path
        if name in regions:
            name = path
        regions[name] = CoreRegion.load(path)
    protect = CoreRegion.load(args.protect) if args.protect else None
    names, jac = overlap_matrix(regions, "jaccard", protect=protect)
    ovl = overlap_matrix(regions, "overlap", protect=protect)[1]
    plot = None
    if args.plot:
        from safe_cpift.cluster import plot_overlap

        plot = str(plot_overlap(regions, args.plot, protect=protect))
    if args.json:
        print(json.dumps({"names": names, "paths": list(args.regions),
                          "entries": {n: r.num_selected for n, r in regions.items()},
                          "protect": args.protect,
                          "jaccard": jac.tolist(), "overlap": ovl.tolist(), "plot": plot}, indent=2))
        return 0
    for label, m in (("Jaccard |A∩B|/|A∪B|", jac), ("overlap coefficient |A∩B|/min(|A|,|B|)", ovl)):
        print(label)
        print(_table(["", *names], [[a, *[float(m[i, j]) for j in range(len(names))]] for i, a in enumerate(names)]))
        print()
    print("entries: " + ", ".join(f"{n}={r.num_selected}" for n, r in regions.items()))
    if plot:
        print(f"plot written to {plot}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from safe_cpift.regions import CoreRegion

    region = CoreRegion.load(args.region)
    if args.json:
        print(json.dumps({"path": args.region, **_summary(region), "metadata": region.metadata,
                          "counts": region.counts(), "stats": region.stats()}, indent=2))
    else:
        _print_region(region, args.region, layers=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("region", help="extract, compare and inspect core regions",
                              description=__doc__, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="region_command", metavar="ACTION")

    ex = sub.add_parser("extract", help="core region from the update between two checkpoints (|tuned - base|)")
    ex.add_argument("--base", required=True, help="model before training (dir, .safetensors or hub id)")
    ex.add_argument("--tuned", required=True, help="model after training (same architecture)")
    ex.add_argument("--top-p", type=float, default=0.01, help="fraction of entries to keep, in (0, 1] (default 0.01)")
    ex.add_argument("--scope", choices=("global", "tensor", "layer"), default="global",
                    help="global threshold (default), per-tensor top-p, or whole decoder layers")
    ex.add_argument("--scorer", choices=("update", "alignment"), default="update",
                    help="label: `update` (task tuning) or `alignment` (base -> aligned: the safety core)")
    ex.add_argument("--out", required=True, type=os.fspath, help="output region directory")
    ex.add_argument("--threads", type=int, default=None, metavar="N",
                    help="worker threads scoring the checkpoints (default: torch's thread count); the "
                         "region is the same for any N")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.add_argument("--json", action="store_true", help="print a machine-readable summary")
    ex.set_defaults(func=run_extract)

    cp = sub.add_parser("compare", help="Jaccard / overlap matrix of two or more regions")
    cp.add_argument("regions", nargs="+", metavar="REGION", help="region directories")
    cp.add_argument("--protect", default=None, metavar="REGION",
                    help="the safety core, added as the last row/column (labelled `safety`)")
    cp.add_argument("--plot", default=None, metavar="PATH", help="also write a heatmap (png)")
    cp.add_argument("--json", action="store_true", help="print a machine-readable summary")
    cp.set_defaults(func=run_compare)

    sh = sub.add_parser("show", help="describe a region: size, share by module type and by layer")
    sh.add_argument("region", help="region directory")
    sh.add_argument("--json", action="store_true", help="print a machine-readable summary")
    sh.set_defaults(func=run_show)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)
