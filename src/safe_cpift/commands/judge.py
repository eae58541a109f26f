"""`safe-cpift judge`: label each reply of a JSONL or CSV file as refused or not, and optionally check the
judge against a human label column."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

EPILOG = """examples:
  safe-cpift judge replies.jsonl --out judged.jsonl
  safe-cpift judge xstest_v2_completions_gpt4_labelled.csv --response-field completion --labels final_label
Each input row has a prompt and a response (JSONL lines or CSV columns); each output line is the input
plus "refused": true|false, "reason" (the deciding phrase), "rule" (the deciding rule) and "score"
(P(refusal) for a model judge, null for the rules). The default judge is offline rules (no model)
that read the reply and its prompt (some refusals, such as "X was not a good thing" to "Why was X a
good thing?", are only refusals given the prompt);
--judge model:PATH uses a local sequence classifier or chat model (see safe_cpift.evals.judge_model).
With --labels COLUMN the judge is compared with a human label column (true/false, 0/1, refusal/
compliance, or XSTest's 1_full_compliance / 2_full_refusal / 3_partial_refusal, a partial refusal
counting as refused): agreement, precision, recall and a confusion table are printed."""


def _read_rows(p: Path) -> list[tuple[int, dict[str, Any]]]:
    if p.suffix.lower() == ".csv":
        from safe_cpift.errors import UserError

        try:
            with p.open(encoding="utf-8", newline="") as fh:
                return [(i, row) for i, row in enumerate(csv.DictReader(fh), 2)]  # line 1 is the header
        except UnicodeDecodeError as err:
            raise UserError(f"{p} is not UTF-8 text ({err.reason} at byte {err.start + 1}); save it as UTF-8") from None
        except csv.Error as err:
            raise UserError(f"{p} is not a readable CSV file ({err}); save it as comma-separated text with a "
                            "header row") from None
    from safe_cpift.io import iter_jsonl

    return list(iter_jsonl(p))


def read_pairs(
    path: str | Path, label_field: str | None = None, *, prompt_field: str = "prompt",
    response_field: str = "response",
) -> list[dict[str, Any]]:
    """Read and check the rows of a JSONL or CSV file; errors name the line and the missing field.

    Rows are returned with `prompt` and `response` keys (renamed from `prompt_field`/`response_field`) and,
    with `label_field`, a boolean `label` (see `safe_cpift.evals.judge_agreement.parse_label`).
    """
    from safe_cpift.evals.judge_agreement import parse_label

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    rows = []
    for lineno, row in _read_rows(p):
        for key, flag in ((prompt_field, "--prompt-field"), (response_field, "--response-field")):
            if key not in row:
                raise ValueError(f"{p}: line {lineno} is missing the field `{key}` (fields: {', '.join(row)}); "
                                 f"name the right one with {flag}")
            if not isinstance(row[key], str):
                raise ValueError(f"{p}: line {lineno}: `{key}` must be a string, got {type(row[key]).__name__}")
        new = {k: v for k, v in row.items() if k not in (prompt_field, response_field, label_field)}
        new["prompt"], new["response"] = row[prompt_field], row[response_field]
        if label_field is not None:
            if label_field not in row:
                raise ValueError(f"{p}: line {lineno} is missing the label field `{label_field}`")
            try:
                new["label"] = parse_label(row[label_field], label_field)
            except ValueError as err:
                raise ValueError(f"{p}: line {lineno}: {err}") from None
        rows.append(new)
    if not rows:
        raise ValueError(f"{p}: no rows to judge")
    return rows


def _summary(rows: list[dict[str, Any]], judge_spec: str, labelled: bool) -> dict[str, Any]:
    from safe_cpift.evals.judge_agreement import agreement

    n, k = len(rows), sum(r["refused"] for r in rows)
    summary: dict[str, Any] = {"count": n, "refused": k, "refusal_rate": k / n, "judge": judge_spec,
                               "rules": dict(Counter(r["rule"] for r in rows).most_common())}
    if labelled:
        summary.update(agreement([r["label"] for r in rows], [r["refused"] for r in rows]))
        summary["errors"] = summary["fp"] + summary["fn"]
        summary["errors_by_rule"] = dict(Counter(r["rule"] for r in rows if r["refused"] != r["label"]).most_common())
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from safe_cpift.evals.judge_agreement import confusion_table
    from safe_cpift.evals.suites import make_judge
    from safe_cpift.io import atomic_write_text

    label_field = args.labels
    rows = read_pairs(args.file, label_field, prompt_field=args.prompt_field, response_field=args.response_field)
    judge = make_judge(args.judge)
    verdicts = judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    for row, v in zip(rows, verdicts, strict=True):
        refused, reason = v
        row.update(refused=bool(refused), reason=reason, rule=getattr(v, "rule", "") or args.judge,
                   score=getattr(v, "score", None))
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = _summary(rows, args.judge, label_field is not None)
    if args.json:
        print(json.dumps(summary))
        return 0
    n, k = summary["count"], summary["refused"]
    print(f"judged {n} responses with {args.judge}: {k} refused, refusal rate {k / n:.3f}"
          + (f"; wrote {args.out}" if args.out else ""))
    if label_field is not None:
        print(f"against `{label_field}`: agreement {summary['agreement']:.3f}, precision {_fmt(summary['precision'])}, "
              f"recall {_fmt(summary['recall'])} (refusal = positive; {summary['errors']} disagreements)")
        print(confusion_table(summary))
        if summary["errors_by_rule"]:
            print("disagreements by deciding rule: "
                  + ", ".join(f"{rule} {c}" for rule, c in summary["errors_by_rule"].items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "judge", help="label replies as refusals (offline rules or a local model); check against human labels",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="JSONL (one object per line) or CSV (header row) with a prompt and a response")
    p.add_argument("--out", default=None, help="write the judged rows here (JSONL, written atomically)")
    p.add_argument("--judge", default="rules", metavar="rules|model:PATH", help="which judge (default: rules)")
    p.add_argument("--labels", "--label-field", dest="labels", default=None, metavar="COLUMN",
                   help="human label column; prints agreement, precision, recall and a confusion table")
    p.add_argument("--prompt-field", default="prompt", metavar="NAME", help="prompt column (default: prompt)")
    p.add_argument("--response-field", default="response", metavar="NAME",
                   help="reply column (default: response; XSTest's CSVs call it completion)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
