"""Can fusion's SLERP run from sparse task deltas instead of full task models? Measured on a finished run.

For the first two probe stages of RUN_DIR (task models θ_a, θ_b, both fine-tuned from θ0) this prints:
- the share of entries each fine-tune moved at all (a sparse store can only skip unmoved entries);
- for keep fractions q: SLERP(θ0 + top-q Δ_a, θ0 + top-q Δ_b) against SLERP(θ_a, θ_b), as the relative error
  ‖approx − full‖ / ‖full − θ0‖ over the non-core part, and the bytes a sparse store needs
  (int32 index + float32 value per kept entry) against a full float32 model.

Usage: python benchmarks/slerp_sparse.py RUN_DIR [--keep 0.01 0.1 0.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from safe_cpift.merge.slerp import slerp


def sparse(theta0: dict, tuned: dict, keep: float) -> dict:
    """θ0 + the `keep` fraction of largest |Δ| entries (one global threshold)."""
    deltas = {n: (tuned[n] - theta0[n]) for n in theta0}
    flat = torch.cat([d.abs().reshape(-1) for d in deltas.values()])
    k = max(1, int(keep * flat.numel()))
    thr = torch.topk(flat, k).values[-1]
    return {n: theta0[n] + torch.where(d.abs() >= thr, d, torch.zeros_like(d)) for n, d in deltas.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    args = ap.parse_args()
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    theta0 = load_file(str(Path(manifest["inputs"]["aligned_model"]) / "model.safetensors"))
    probes = sorted(p for p in args.run_dir.glob("probe_*/model/model.safetensors"))[:2]
    a, b = (load_file(str(p)) for p in probes)
    total = sum(t.numel() for t in theta0.values())
    for name, m in zip((p.parts[-3] for p in probes), (a, b), strict=True):
        moved = sum(int((m[n] != theta0[n]).sum()) for n in theta0)
        print(f"{name}: {moved / total:.4f} of {total} entries moved")
    full = {n: slerp(0.5, a[n], b[n]) for n in theta0}
    norm = torch.sqrt(sum(((full[n] - theta0[n]) ** 2).sum() for n in theta0))
    print(f"{'keep':>6} {'rel. error':>11} {'sparse bytes':>13} {'full bytes':>11}")
    for q in args.keep:
        sa, sb = sparse(theta0, a, q), sparse(theta0, b, q)
        err = torch.sqrt(sum(((slerp(0.5, sa[n], sb[n]) - full[n]) ** 2).sum() for n in theta0))
        print(f"{q:>6g} {float(err / norm):>11.4f} {int(2 * q * total * 8):>13} {2 * total * 4:>11}")


if __name__ == "__main__":
    main()
