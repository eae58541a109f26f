"""`safe-cpift` command line: a thin dispatcher over `safe_cpift.commands.*`.

Each verb lives in its own module under `safe_cpift/commands/` exposing
`register(subparsers) -> None`; the registered parser sets `func(args) -> int`.

`main` is the one error boundary of every verb: a user error (`safe_cpift.errors.is_user_error`) prints
`safe-cpift VERB: error: MESSAGE` and exits 2; anything else prints its traceback and a request to
report it, and exits 1. `--debug` (or `SAFE_CPIFT_DEBUG=1`) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

COMMAND_MODULES = ("demo", "run", "region", "fuse", "eval", "judge", "recipe")
DEBUG_VARIABLE = "SAFE_CPIFT_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safe-cpift",
        description="Fine-tune an aligned model on your tasks while its safety core stays frozen, and measure it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of user errors too (anywhere on the line; or set {DEBUG_VARIABLE}=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"safe_cpift.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"safe_cpift.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` works anywhere on the line (`safe-cpift run r.yaml --debug`), not only before the verb
    debug = "--debug" in argv or debug_from_env()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        resume = "; continue with --resume" if args.command in ("run", "demo") else ""
        print(f"{_prog(args)}: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`safe-cpift judge FILE --labels COL | head -3`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # the error boundary: every verb fails the same way
        return report_error(err, _prog(args), debug=debug)


def debug_from_env() -> bool:
    """Whether `$SAFE_CPIFT_DEBUG` asks for tracebacks (any value but empty, 0, false, no, off)."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def report_error(err: Exception, prog: str, *, debug: bool = False) -> int:
    """Print `err` to stderr the way the CLI reports it and return the exit status.

    A user error is one message (its traceback first with `debug`), status 2. Any other error is a bug
    or a check we missed: its traceback and a request to report it, status 1.
    """
    from safe_cpift.errors import describe, is_user_error

    if is_user_error(err):
        if debug:
            traceback.print_exception(err, file=sys.stderr)
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: internal error: {type(err).__name__}: {err}\n"
          "This is a bug in safe-cpift, or an input it should have rejected with a clear message: please "
          "report it on the safe-cpift issue tracker with the command you ran and the traceback above.",
          file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def _prog(args: argparse.Namespace) -> str:
    sub = getattr(args, "region_command", None)
    return " ".join(["safe-cpift", args.command, *([sub] if sub else [])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
