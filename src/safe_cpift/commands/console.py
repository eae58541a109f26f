"""The terminal of `safe-cpift run` / `demo`: stage lines and one training bar; the rest goes to run.log.

By default the run directory's `run.log` receives every log record (ours and the libraries'), Python
warnings, datasets' progress bars are off and anything the libraries print to stdout; the terminal
(stderr) shows one line per stage and a progress bar while a stage trains; stdout is left for the
final summary or `--json`. `--verbose` sends everything to the terminal as well.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from safe_cpift.errors import UserError
from safe_cpift.pipeline.rundir import RUN_LOG

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "trl", "peft", "lm_eval")


def _route_library_loggers() -> list[tuple[logging.Logger, list[logging.Handler], bool]]:
    """Detach the libraries' own terminal handlers so their records reach the root logger (run.log).

    Returns what to restore afterwards: (logger, its handlers, its propagate flag).
    """
    with contextlib.suppress(ImportError):  # transformers adds its stderr handler on first use
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("transformers")
    saved = []
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        saved.append((lib, lib.handlers[:], lib.propagate))
        for h in lib.handlers[:]:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lib.removeHandler(h)
        lib.propagate = True
    return saved


def _library_bars_off() -> list[Callable[[], None]]:
    """Turn off the progress bars of datasets (tokenization), transformers (loading/writing weights)
    and huggingface_hub; return the calls that turn back on those that were on."""
    restore: list[Callable[[], None]] = []
    with contextlib.suppress(ImportError):
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    with contextlib.suppress(ImportError):
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    return restore


def _entries(out: Path) -> dict[str, int]:
    """Name -> modification time of what a run directory holds besides its log."""
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != RUN_LOG}


@contextlib.contextmanager
def run_console(output_dir: str | Path, *, verbose: bool = False) -> Iterator[Path]:
    """Route a pipeline run's logs to `output_dir/run.log` (and, with `verbose`, to the terminal too).

    Args:
        output_dir (`str` or `Path`): the run directory (created if missing).
        verbose (`bool`, *optional*): keep library logs, warnings and progress bars on the terminal.

    Yields:
        `Path`: the log file.

    A run that fails before it wrote anything else (bad recipe, bad data, a run directory of another
    recipe) leaves nothing behind: the log file and the directory are removed again if this call
    created them.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose a new `--output-dir`")
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    before = _entries(out)
    log_path = out / RUN_LOG
    created_log = not log_path.exists()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    if not verbose:
        for h in saved_handlers:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    libraries = _route_library_loggers()
    logging.captureWarnings(True)
    restore_bars = [] if verbose else _library_bars_off()
    log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    # the Trainer and some libraries print to stdout: stdout stays for our summary / --json
    sink = sys.stderr if verbose else log_file
    ok = False
    try:
        with contextlib.redirect_stdout(sink):
            yield log_path
        ok = True
    finally:
        log_file.close()
        root.removeHandler(handler)
        handler.close()
        for h in saved_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved_level)
        for lib, handlers, propagate in libraries:
            lib.handlers[:] = handlers
            lib.propagate = propagate
        logging.captureWarnings(False)
        for enable in restore_bars:
            enable()
        if not ok and _entries(out) == before:  # the run wrote nothing: leave no log (and no folder) behind
            if created_log:
                log_path.unlink(missing_ok=True)
            if created_dir:
                with contextlib.suppress(OSError):
                    out.rmdir()
