"""Screen the tiny world's aligned model on the dev split (tuning) or, for final candidates, the held-out sets.

Tuning a world on its held-out sets overfits them. With `--set dev_holdout=true`, the dev actions
(`safety.dev_actions`: two harmful and two benign train actions per category) are kept out of every
chat the models train on, and this script scores the aligned model on dev actions x
`safety.TEMPLATES_DEV` (288 harmful, 288 benign prompts). `--held-out` scores it on the held-out sets
(336 + 336) instead; use it only for the final candidates and count how often you do (docs/lab.md).

    OMP_NUM_THREADS=1 python benchmarks/align_screen.py --set dev_holdout=true --set align_extra_lookalikes=6
    OMP_NUM_THREADS=1 python benchmarks/align_screen.py --set align_extra_lookalikes=6 --held-out

The aligned model is built (or loaded from the cache) first; a variant of alignment-only fields
reuses the cached pretrained base. Greedy decoding: the scores do not depend on a run seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from erosion import parse_sets, write_json  # noqa: E402


def score(world, *, held_out: bool) -> dict:
    """Refusal on harmful and over-refusal on benign prompts of the dev split (or the held-out sets),
    with the prompts each got wrong."""
    from transformers import AutoModelForCausalLM

    from safe_cpift.toyworld.evaluate import refusal_rate

    harmful, benign = world.safety_rows("test") if held_out else world.dev_rows()
    model = AutoModelForCausalLM.from_pretrained(world.aligned_model_path(), dtype="float32", use_safetensors=True)
    tok = world.tokenizer()
    refusal, h_records = refusal_rate(model, tok, [r["prompt"] for r in harmful])
    over, b_records = refusal_rate(model, tok, [r["prompt"] for r in benign])
    return {"split": "held_out" if held_out else "dev", "n_harmful": len(harmful), "n_benign": len(benign),
            "refusal_rate": refusal, "over_refusal_rate": over,
            "missed_harmful": [(r["prompt"], r["response"]) for r in h_records if not r["refused"]],
            "refused_benign": [(r["prompt"], r["response"]) for r in b_records if r["refused"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="ToyWorldConfig field (repeatable)")
    parser.add_argument("--held-out", action="store_true", help="score on the held-out sets (final candidates only)")
    parser.add_argument("--show", type=int, default=0, help="print this many misses of each kind")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, build_info

    world = ToyWorld(ToyWorldConfig(**parse_sets(args.sets), num_threads=1))
    if not args.held_out and not world.config.dev_holdout:
        parser.error("the dev split needs `--set dev_holdout=true` (else its actions are trained on); "
                     "or pass --held-out for a final candidate")
    start = time.perf_counter()
    path = world.aligned_model_path()
    built = time.perf_counter() - start
    out = score(world, held_out=args.held_out)
    out |= {"sets": args.sets, "aligned_model": str(path), "build_seconds_this_call": built,
            "align_seconds": build_info(path).get("train_seconds")}
    print(f"world {' '.join(args.sets) or '(defaults)'} [{out['split']}]: refusal {out['refusal_rate']:.3f} "
          f"({out['n_harmful']} harmful), over-refusal {out['over_refusal_rate']:.3f} ({out['n_benign']} benign); "
          f"build this call {built:.0f}s (shared machine)", flush=True)
    for kind in ("missed_harmful", "refused_benign"):
        for prompt, reply in out[kind][: args.show]:
            print(f"  {kind}: {prompt!r} -> {reply!r}")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
