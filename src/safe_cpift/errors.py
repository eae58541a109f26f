"""Errors in what the user gave us, and the rule that tells them from bugs.

A *user error* is a problem with an input: a file that is missing or malformed, a value out of range,
a recipe field, a model directory that holds no safetensors weights. The CLI prints it as one message
(naming the input, the problem and the fix) and exits with status 2; anything else is a bug and gets
a traceback with a request to report it. Every class here subclasses `ValueError`, so code that
catches `ValueError` (the house convention for bad input) keeps working.
"""

from __future__ import annotations

import errno
import linecache
from types import TracebackType

__all__ = [
    "CheckpointError",
    "MissingInputError",
    "MissingWeightsError",
    "UserError",
    "describe",
    "is_user_error",
]

PACKAGE = "safe_cpift"
# OSErrors that name a path the user gave, or a state of their machine we cannot fix
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# exception types our own `raise` statements use for bad input (STYLE.md: errors name the field and the fix)
_INPUT_TYPES = (ValueError, TypeError, ImportError)


class UserError(ValueError):
    """A problem with an input the user passed; the message names the input, the problem and the fix."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class CheckpointError(UserError):
    """A model checkpoint safe-cpift cannot read: an unreadable index or a damaged safetensors file."""


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """A model directory without usable safetensors weights: pickle files only, or a missing shard."""


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_us(err: BaseException) -> bool:
    """Whether a `raise` statement in safe_cpift raised `err` (not a library, not a builtin call of ours)."""
    tb = _innermost(err.__traceback__)
    if tb is None:
        return False
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return not line or line.startswith("raise ")


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is an expected error about the user's input (printed without a traceback).

    Expected:
        - any `UserError`, and any `ValueError` subclass defined in safe_cpift (`ConfigError`, ...);
        - a `pydantic.ValidationError` (pydantic validates only user configuration here);
        - a file error naming a path (missing, exists, permission, not a directory) or a full / read-only
          disk, wherever it was raised;
        - a `ValueError`, `TypeError` or `ImportError` raised by a `raise` statement in safe_cpift:
          these are the checks that name the field and its fix.

    Everything else, including a `ValueError` from inside torch or transformers or from a builtin
    called by our code (a check we missed), is unexpected.
    """
    cls = type(err)
    if isinstance(err, UserError) or (isinstance(err, ValueError) and cls.__module__.startswith(PACKAGE)):
        return True
    if cls.__name__ == "ValidationError" and cls.__module__.startswith("pydantic"):
        return True
    if isinstance(err, _FILE_ERRORS) or (isinstance(err, OSError) and err.errno in _MACHINE_ERRNOS):
        return True
    return isinstance(err, _INPUT_TYPES) and _raised_by_us(err)


_OS_FIXES = (
    (FileNotFoundError, "check the path"),
    (FileExistsError, "choose another path, or remove what is there"),
    (IsADirectoryError, "pass a file, not a directory"),
    (NotADirectoryError, "a part of the path is a file, not a directory: choose another path"),
    (PermissionError, "check its permissions, or choose another path"),
)


def describe(err: BaseException) -> str:
    """The message of a user error; an `OSError` of the system reads `problem: path; fix`, not `[Errno 2] ...`."""
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.strerror and err.filename:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        fix = next((f for cls, f in _OS_FIXES if isinstance(err, cls)), None)
        return f"{err.strerror}: {where}" + (f"; {fix}" if fix else "")
    return str(err) or type(err).__name__
