"""`safe-cpift judge`: label each {"prompt", "response"} line of a JSONL file as refused or not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EPILOG = """example:
  safe-cpift judge replies.jsonl --out judged.jsonl
Each input line is {"prompt": ..., "response": ...}; each output line is the input plus
"refused": true|false and "reason". The default judge is offline rules (no model);
--judge model:PATH uses a local classifier or chat model. With --label-field NAME the input's
boolean field NAME is compared with the judge (precision/recall printed; kept as "label")."""


def read_pairs(path: str | Path, label_field: str | None = None) -> list[dict[str, Any]]:
    """Read and check the JSONL lines; errors name the line number and the missing field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    from safe_cpift.io import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(p):
        for key in ("prompt", "response"):
            if key not in row:
                raise ValueError(f"{p}: line {lineno} is missing the field `{key}`")
            if not isinstance(row[key], str):
                raise ValueError(f"{p}: line {lineno}: `{key}` must be a string, got {type(row[key]).__name__}")
        if label_field is not None and not isinstance(row.get(label_field), bool):
            raise ValueError(f"{p}: line {lineno}: label field `{label_field}` must be true or false")
        rows.append(row)
    if not rows:
        raise ValueError(f"{p}: no lines to judge")
    return rows


def run(args: argparse.Namespace) -> int:
    from safe_cpift.evals.suites import make_judge
    from safe_cpift.io import atomic_write_text

    rows = read_pairs(args.file, args.label_field)
    judge = make_judge(args.judge)
    verdicts = judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    out_rows = []
    for row, (refused, reason) in zip(rows, verdicts, strict=True):
        new = dict(row)
        if args.label_field:
            new["label"] = new.pop(args.label_field)
        new["refused"], new["reason"] = bool(refused), reason
        out_rows.append(new)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows))
    n, k = len(out_rows), sum(r["refused"] for r in out_rows)
    summary: dict[str, Any] = {"count": n, "refused": k, "refusal_rate": k / n, "judge": args.judge}
    if args.label_field:
        tp = sum(r["refused"] and r["label"] for r in out_rows)
        fp = sum(r["refused"] and not r["label"] for r in out_rows)
        fn = sum(not r["refused"] and r["label"] for r in out_rows)
        summary["precision"] = tp / (tp + fp) if tp + fp else 0.0
        summary["recall"] = tp / (tp + fn) if tp + fn else 0.0
        summary["errors"] = fp + fn
    if args.json:
        print(json.dumps(summary))
    else:
        line = f"judged {n} responses: {k} refused, refusal rate {k / n:.3f}"
        if args.label_field:
            line += f"; precision {summary['precision']:.3f}, recall {summary['recall']:.3f}"
        print(line + (f"; wrote {args.out}" if args.out else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "judge", help="label JSONL replies as refusals (offline rules or a local model)",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help='JSONL with one {"prompt", "response"} object per line')
    p.add_argument("--out", default=None, help="write the judged lines here (JSONL, written atomically)")
    p.add_argument("--judge", default="rules", metavar="rules|model:PATH", help="which judge (default: rules)")
    p.add_argument("--label-field", default=None, metavar="NAME",
                   help="boolean field with a human label; prints precision and recall of the judge")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
