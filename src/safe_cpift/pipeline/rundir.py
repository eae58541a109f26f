"""A resumable run directory: `manifest.json` plus one directory per finished stage.

```python
run = RunDirectory.open("runs/toy", recipe.to_dict(), seed=recipe.seed, resume=args.resume)
if not run.is_done("safety_core"):
    with run.stage("safety_core") as tmp:      # tmp = runs/toy/.safety_core.tmp-XXXX
        ...write files into tmp...             # renamed to runs/toy/safety_core only on success
core_dir = run.stage_path("safety_core")
run.finish()
```
A stage is *done* when its directory holds `stage.json`, which is written last, inside the temporary
directory, just before the rename: a crash at any moment leaves either no stage directory or a
complete one. Temporary directories a killed process left behind are removed on open. Every JSON
file is written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safe_cpift.footprint import ModelCensus, PeakMemory, dir_bytes
from safe_cpift.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST", "STAGE_FILE", "FORMAT", "RunDirectory", "recipe_diff", "package_versions"]

MANIFEST = "manifest.json"
RUN_LOG = "run.log"  # the CLI's log of a run (library logs, warnings, trainer output); may precede the manifest
STAGE_FILE = "stage.json"
FORMAT = "safe-cpift-run/1"
# recipe keys that may differ between the start of a run and its resumption
IGNORED_RECIPE_KEYS = ("output_dir",)
VERSIONED_PACKAGES = ("safe-cpift", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "safetensors")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_RESERVED = {MANIFEST, RUN_LOG, "results.json", "report.md", "tradeoff.png", "overlap.png", "final_model"}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def package_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a run depends on (those installed)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def recipe_diff(old: Any, new: Any, path: str = "", ignore: tuple[str, ...] = IGNORED_RECIPE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two JSON-like trees (top-level `ignore` keys skipped)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if not path and key in ignore:
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += recipe_diff(old[key], new[key], sub, ignore)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in recipe_diff(a, b, f"{path}[{i}]", ignore)]
    return [] if old == new else [path or "<root>"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class RunDirectory:
    """One run's directory: its manifest and its stages.

    Use `RunDirectory.open(...)` to start or resume a run; `RunDirectory(path)` only reads an existing
    one (e.g. to inspect which stages are done).

    Args:
        path (`str` or `os.PathLike`): the run directory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        manifest = self.root / MANIFEST
        self.manifest: dict[str, Any] = json.loads(manifest.read_text()) if manifest.is_file() else {}

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        recipe: Mapping[str, Any],
        *,
        seed: int,
        resume: bool = False,
        name: str | None = None,
        extra: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> RunDirectory:
        """Start a run in `path`, or resume the run already there.

        Args:
            path: the run directory (created if missing).
            recipe (`Mapping`): the run's recipe as a plain dict (`Recipe.to_dict()`).
            seed (`int`): the run seed, recorded and checked on resume.
            resume (`bool`, *optional*): continue the run in `path`; its stages that are done are kept.
            name (`str`, *optional*): a run name for the report.
            extra (`Mapping`, *optional*): more manifest fields.
            inputs (`Mapping`, *optional*): what the recipe resolved to and must not change under a
                resumed run (e.g. ``{"aligned_model": "/cache/toyworld-<hash>/aligned"}``); checked
                on resume like the recipe.

        Raises:
            `ValueError`: `path` holds a run and `resume` is false (pass `--resume` or choose a new
            directory); the recipe or seed differ from the run's (the message lists the keys); `path`
            is a non-empty directory that is not a run.
        """
        root = Path(path)
        recipe = _jsonable(dict(recipe))
        inputs = _jsonable(dict(inputs or {}))
        manifest_path = root / MANIFEST
        if manifest_path.is_file():
            if not resume:
                raise ValueError(f"{root} already holds a safe-cpift run; pass `--resume` to continue it, "
                                 "or choose a new `--output-dir`")
            old = json.loads(manifest_path.read_text())
            changed = recipe_diff(old.get("recipe", {}), recipe)
            changed += [f"inputs.{k}" for k in recipe_diff(old.get("inputs", {}), inputs, ignore=())]
            if old.get("seed") != seed:
                changed.append("seed")
            if changed:
                raise ValueError(f"cannot resume {root}: the recipe (or what it resolved to) differs from the run's "
                                 f"(changed: {', '.join(changed)}); resume with the same recipe, or choose a new "
                                 "`--output-dir`")
            run = cls(root)
            run.manifest["resumed"] = int(run.manifest.get("resumed", 0)) + 1
            run.manifest["status"] = "running"
            logger.info("resuming %s (done: %s)", root, ", ".join(run.completed()) or "nothing yet")
        else:
            if root.exists() and (not root.is_dir() or any(not p.name.startswith(".") and p.name != RUN_LOG
                                                                       for p in root.iterdir())):
                raise ValueError(f"{root} exists and is not an empty directory or a safe-cpift run; "
                                 "choose a new `--output-dir`")
            if resume:
                logger.info("nothing to resume in %s: starting a new run", root)
            root.mkdir(parents=True, exist_ok=True)
            run = cls(root)
            run.manifest = {"format": FORMAT, "name": name or root.name, "seed": seed, "recipe": recipe,
                            "inputs": inputs, "versions": package_versions(), "created": _now(), "status": "running",
                            "resumed": 0, "stages": []}
        run.manifest.update(_jsonable(dict(extra or {})))
        run._clean_temporaries()
        run._reconcile()
        run._save()
        return run

    def _clean_temporaries(self) -> None:
        for p in self.root.glob(".*.tmp-*"):
            logger.info("removing %s, left by an interrupted stage", p.name)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def _reconcile(self) -> None:
        """Make the manifest agree with the disk (a kill between a stage's rename and the manifest save)."""
        for entry in self.manifest.get("stages", []):
            done = self.is_done(entry["name"])
            if done and entry.get("status") != "done":
                entry["status"] = "done"
            elif not done and entry.get("status") in ("done", "running"):
                entry["status"] = "interrupted"

    def _save(self) -> None:
        self.manifest["updated"] = _now()
        atomic_write_json(self.root / MANIFEST, self.manifest)

    # -- stages ------------------------------------------------------------------------------------
    def _record(self, name: str) -> dict[str, Any]:
        stages = self.manifest.setdefault("stages", [])
        for entry in stages:
            if entry["name"] == name:
                return entry
        entry = {"name": name}
        stages.append(entry)
        return entry

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _STAGE_NAME.match(name) or name in _RESERVED:
            raise ValueError(f"stage name {name!r} must be letters, digits and `_.=+-` (no `/`, no leading `.`) "
                             f"and not one of {', '.join(sorted(_RESERVED))}")

    def stage_path(self, name: str) -> Path:
        """Final directory of stage `name` (whether or not it is done)."""
        self._check_name(name)
        return self.root / name

    def is_done(self, name: str) -> bool:
        """Whether stage `name` finished (its directory holds `stage.json`)."""
        return (self.stage_path(name) / STAGE_FILE).is_file()

    def completed(self) -> list[str]:
        """Names of the finished stages, in the order they finished."""
        return [e["name"] for e in self.manifest.get("stages", []) if e.get("status") == "done"
                and self.is_done(e["name"])]

    def stage_info(self, name: str) -> dict[str, Any]:
        """The `stage.json` of a finished stage."""
        if not self.is_done(name):
            raise FileNotFoundError(f"stage `{name}` is not done in {self.root}")
        return json.loads((self.stage_path(name) / STAGE_FILE).read_text())

    @contextlib.contextmanager
    def stage(self, name: str, info: dict[str, Any] | None = None) -> Iterator[Path]:
        """Run a stage: yield a temporary directory, renamed to `stage_path(name)` only on success.

        Args:
            name (`str`): the stage name (one directory of the run).
            info (`dict`, *optional*): written to the stage's `stage.json`; the body may add to it
                while it runs (it is written after the body returns).

        Raises:
            `ValueError` if the stage is already done (check `is_done` first: resumed runs skip it).
        """
        final = self.stage_path(name)
        if self.is_done(name):
            raise ValueError(f"stage `{name}` is already done in {self.root}; skip it (`is_done`) or use a new run")
        if final.exists():  # a directory without stage.json was not written by a finished stage
            logger.warning("removing %s: it has no %s", final, STAGE_FILE)
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        entry = self._record(name)
        entry.clear()
        entry.update({"name": name, "status": "running", "started": _now()})
        self._save()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.root))
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; a finished stage gets the usual permissions
        start = time.perf_counter()
        info = {} if info is None else info
        memory, models = PeakMemory(), ModelCensus()
        memory.start()
        models.start()
        try:
            yield tmp
            seconds = time.perf_counter() - start
            # the manifest only: results stay reproducible
            cost = {"disk_bytes": dir_bytes(tmp), **memory.stop(), **models.stop()}
            # no timestamps here: stage.json feeds results, which must not depend on when a stage ran
            atomic_write_json(tmp / STAGE_FILE, {**_jsonable(info), "name": name, "stage_seconds": seconds})
            os.replace(tmp, final)
        except BaseException as err:
            models.stop()
            shutil.rmtree(tmp, ignore_errors=True)
            entry.update({"status": "failed", "error": f"{type(err).__name__}: {err}"[:500],
                          "seconds": round(time.perf_counter() - start, 3)})
            self._save()
            raise
        entry.update({"status": "done", "finished": _now(), "seconds": round(seconds, 3), **cost})
        self._save()
        logger.info("stage %s done in %.1fs", name, seconds)

    def run(self, name: str, body: Callable[[Path], Mapping[str, Any] | None]) -> bool:
        """Run stage `name` with `body(tmp_dir) -> info` unless it is done; return whether it ran."""
        if self.is_done(name):
            logger.info("stage %s is done; skipping", name)
            entry = self._record(name)
            if entry.get("status") != "done":
                entry["status"] = "done"
                self._save()
            return False
        info: dict[str, Any] = {}
        with self.stage(name, info) as tmp:
            info.update(body(tmp) or {})
        return True

    def annotate(self, name: str, **fields: Any) -> None:
        """Add `fields` to stage `name`'s manifest entry (e.g. what pruning freed)."""
        self._record(name).update(_jsonable(fields))
        self._save()

    def finish(self) -> None:
        """Mark the run complete in the manifest."""
        self.manifest["status"] = "complete"
        self.manifest["finished"] = _now()
        self._save()
