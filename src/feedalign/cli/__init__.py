"""The `feedalign` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit status.

Bad input never produces a traceback: a :class:`feedalign.errors.FeedalignError`
(:class:`UsageError` for the command line itself) or an ``OSError`` about a path, a
full disk or a read-only one (:func:`feedalign.errors.os_error_line`: the path and the
fix) becomes one line on stderr and exit status 2. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__
from ..errors import FeedalignError, first_line, os_error_line

# Subcommand modules, in the order `feedalign --help` lists them.
COMMANDS = ("train", "compare", "models", "data", "reproduce", "sweep", "plot", "bench")


class UsageError(FeedalignError):
    """Bad command-line input (argparse's own errors included): printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, status 2
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="feedalign", description="Train networks with learning rules that need no weight transport.")
    parser.add_argument("--version", action="version", version=f"feedalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"feedalign.cli.{name}_cmd").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except FeedalignError as err:
        return _error(first_line(err))
    except OSError as err:
        line = os_error_line(err)
        if line is None:  # not about a path the user gave, nor a full or read-only disk: a bug
            raise
        return _error(line)
    except KeyboardInterrupt:
        print("feedalign: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    print(f"feedalign: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
