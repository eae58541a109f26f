"""`safe-cpift` command line: a thin dispatcher over `safe_cpift.commands.*`.

Each verb lives in its own module under `safe_cpift/commands/` exposing
`register(subparsers) -> None`; the registered parser sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = ("demo", "run", "region", "fuse", "eval", "judge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safe-cpift",
        description="Fine-tune an aligned model on your tasks while its safety core stays frozen, and measure it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    args = parser.parse_args(argv)
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
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"safe-cpift {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`safe-cpift judge FILE --labels COL | head -3`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
