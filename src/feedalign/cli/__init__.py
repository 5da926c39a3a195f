"""The `feedalign` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit status.

Bad input never produces a traceback: any :class:`UsageError` (or ``ValueError``
raised while validating user input) becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `feedalign --help` lists them.
COMMANDS = ("train", "compare", "data", "reproduce", "sweep", "plot", "bench")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, status 2
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="feedalign", description="Train networks with learning rules that need no weight transport.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"feedalign.cli.{name}_cmd")
        except ModuleNotFoundError as err:  # a subcommand not built yet
            if err.name != f"feedalign.cli.{name}_cmd":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"feedalign: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("feedalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
