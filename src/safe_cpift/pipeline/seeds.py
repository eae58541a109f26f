"""Several seeds of one recipe: a run directory per seed and their aggregate.

```python
from safe_cpift.pipeline.seeds import run_seeds
aggregate = run_seeds(lambda s: load_recipe("toy.yaml", overrides=[f"seed={s}"]), [0, 1, 2], "runs/toy3")   # runs/toy3/seed_<n>/ + results.json, report.md
aggregate["methods"]["safe_cpift"]["refusal_rate"]      # {"mean": ..., "sd": ..., "values": [...]}
```
Each seed's directory is an ordinary resumable run (`run_pipeline` of the recipe loaded with that
`seed`). A seed that fails is recorded in `failed_seeds` (with its error) and left out of every
mean; the others still run. `sd` is the sample standard deviation (n − 1 in the denominator; 0 for a
single value), because three seeds are a sample of the seeds one could have run.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "safe-cpift-seeds/1"
SEED_DIR = "seed_{seed}"
# the metrics aggregated for every method (besides the per-task scores and general capability)
METHOD_METRICS = ("task_mean", "refusal_rate", "over_refusal_rate", "train_seconds", "examples_seen")


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    """The run directory of `seed` under a multi-seed `output_dir`."""
    return Path(output_dir) / SEED_DIR.format(seed=seed)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """`{"mean", "sd", "values"}` of per-seed `values`; mean and sd are `None` if any value is missing."""
    vals = list(values)
    if not vals or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return {"mean": None, "sd": None, "values": vals}
    floats = [float(v) for v in vals]
    sd = statistics.stdev(floats) if len(floats) > 1 else 0.0
    return {"mean": statistics.fmean(floats), "sd": sd, "values": floats}


def _keyed(per_seed: list[Mapping[str, Any]], get: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]) -> dict:
    """Aggregate a `{name: number}` mapping found by `get` in each seed's results, name by name."""
    names: list[str] = []
    for r in per_seed:
        names += [k for k in (get(r) or {}) if k not in names]
    return {k: summarize([(get(r) or {}).get(k) for r in per_seed]) for k in names}


def aggregate(per_seed: Mapping[int, Mapping[str, Any]], failed: Mapping[int, str] | None = None,
              seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """The multi-seed results.json (shape in ../shared/DESIGN.md) from each seed's results.

    Args:
        per_seed (`Mapping[int, Mapping]`): results.json of every seed that finished.
        failed (`Mapping[int, str]`, *optional*): seeds that failed → their error; reported, never averaged.
        seeds (`Sequence[int]`, *optional*): the seeds asked for, in order (default: finished + failed).

    Returns:
        `dict`: `seeds`, `completed_seeds` (the order of every `values` list), `failed_seeds`,
        `errors`, `methods` (per method: each metric, `task_scores` and `general_scores` as
        `{"mean", "sd", "values"}`), `single_task`, `safety_core` and `clusters` per seed.
    """
    failed = dict(failed or {})
    done = sorted(per_seed)
    results = [per_seed[s] for s in done]
    methods: list[str] = []
    for r in results:
        methods += [m for m in r.get("methods", {}) if m not in methods]
    out_methods = {}
    for m in methods:
        rows = [r["methods"].get(m, {}) for r in results]
        entry = {k: summarize([row.get(k) for row in rows]) for k in METHOD_METRICS}
        entry["task_scores"] = _keyed(rows, lambda row: row.get("task_scores"))
        general = _keyed(rows, lambda row: row.get("general_scores"))
        if general:
            entry["general_scores"] = general
        out_methods[m] = entry
    first = results[0] if results else {}
    return {
        "early_warning": pooled_early_warning({s: per_seed[s].get("early_warning") for s in done}),
        "format": FORMAT,
        "run": first.get("run"),
        "reference": first.get("reference", "aligned"),
        "tasks": list(first.get("tasks") or []),
        "seeds": list(seeds) if seeds is not None else sorted({*done, *failed}),
        "completed_seeds": done,
        "failed_seeds": sorted(failed),
        "errors": {str(s): e for s, e in sorted(failed.items())},
        "methods": out_methods,
        "single_task": _keyed(results, lambda r: r.get("single_task")),
        "single_task_budget": first.get("single_task_budget"),
        "safety_core": {str(s): per_seed[s].get("safety_core") for s in done},
        "clusters": {str(s): (per_seed[s].get("clusters") or {}).get("groups") for s in done},
        "stage_scores": {str(s): per_seed[s].get("stage_scores") for s in done if per_seed[s].get("stage_scores")},
    }


def pooled_early_warning(per_seed: Mapping[int, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Does a task core's overlap with the safety core predict the refusal its task alone erodes?

    Pearson correlation over every (task, seed) pair, beside each seed's own correlation.
    """
    from safe_cpift.pipeline.results import pearson

    xs, ys, per = [], [], {}
    for seed, ew in per_seed.items():
        if not ew:
            continue
        for task, drop in ew["refusal_drop"].items():
            xs.append(ew["safety_overlap"][task])
            ys.append(drop)
        per[str(seed)] = ew.get("pearson")
    if not xs:
        return None
    return {"pairs": len(xs), "pearson": pearson(xs, ys), "per_seed": per,
            "max_refusal_drop": max(ys), "min_refusal_drop": min(ys)}


def run_seeds(
    recipe_for_seed: Callable[[int], Any],
    seeds: Sequence[int],
    output_dir: str | Path,
    *,
    resume: bool = False,
    command: str | None = None,
    run_one: Callable[..., Mapping[str, Any]] | None = None,
    on_seed: Callable[[int, Path], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline once per seed under `output_dir/seed_<n>/`, then write the aggregate.

    Args:
        recipe_for_seed (`Callable[[int], Recipe]`): the recipe with its `seed` set to the given seed
            (e.g. `load_recipe(path, overrides=[..., f"seed={seed}"])`).
        seeds (`Sequence[int]`): distinct seeds, each >= 0.
        output_dir (`str` or `Path`): the multi-seed directory.
        resume (`bool`, *optional*): resume each seed's run (finished seeds are only read back).
        command (`str`, *optional*): the command line, quoted in the reports.
        run_one (`Callable`, *optional*): `run_one(recipe, out_dir, resume=..., command=...) -> results`;
            defaults to `safe_cpift.pipeline.runner.run_pipeline`.
        on_seed (`Callable[[int, Path], None]`, *optional*): called before each seed starts.

    Returns:
        `dict`: the aggregate written to `output_dir/results.json` (also `report.md`, `tradeoff.png`).

    Raises:
        `ValueError`: bad `seeds`. `RuntimeError`: every seed failed (the first error is chained).
    """
    from safe_cpift.seeds_report import write_seeds_report

    seeds = list(seeds)
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed, e.g. `--seeds 0 1 2`")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"`seeds` must be integers >= 0, got {bad}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` has duplicates: {seeds}; each seed runs once")
    if run_one is None:
        from safe_cpift.pipeline.runner import run_pipeline as run_one
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, Mapping[str, Any]] = {}
    failed: dict[int, str] = {}
    first_error: BaseException | None = None
    for seed in seeds:
        out = seed_dir(root, seed)
        if on_seed is not None:
            on_seed(seed, out)
        recipe = recipe_for_seed(seed)  # a bad recipe is the user's error, not one seed's failure
        seed_command = None if command is None else f"{command}  # seed {seed}: {out}"
        try:
            results = run_one(recipe, out, resume=resume, command=seed_command)
        except Exception as err:  # one seed failing must not lose the others
            logger.error("seed %d failed: %s: %s", seed, type(err).__name__, err)
            failed[seed] = f"{type(err).__name__}: {err}"[:500]
            first_error = first_error or err
            continue
        if "stopped_after" in results:
            failed[seed] = f"stopped after stage {results['stopped_after']}"
            continue
        per_seed[seed] = results
    if not per_seed:
        raise RuntimeError(f"every seed failed ({'; '.join(f'seed {s}: {e}' for s, e in failed.items())})") \
            from first_error
    agg = aggregate(per_seed, failed, seeds)
    write_seeds_report(agg, root, command=command)
    return agg
