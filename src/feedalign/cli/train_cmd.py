"""`feedalign train`: one run from a config file and/or flags; `--resume RUN_DIR` continues one.

Every :class:`feedalign.training.Config` field is a flag (``batch_size`` -> ``--batch-size``);
flags override the config file, which overrides the model's recipe (and its rule's adjustment of it),
which overrides the defaults (:mod:`feedalign.training.recipes`). ``--show-recipe`` prints the resolved
settings and where each came from, and trains nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import typing

from . import UsageError


def _optional(kind):
    """argparse type for ``X | None`` fields: ``none`` means None."""
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """``--config FILE`` plus one flag per Config field (absent flags leave the attribute unset)."""
    from ..training import Config
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of settings (flags override it)")
    group = parser.add_argument_group("settings (override --config)")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags = (flag, "--model") if f.name == "architecture" else (flag,)
        hint = hints[f.name]
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if kinds[0] is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            kind = _optional(kinds[0]) if len(typing.get_args(hint)) > 1 else kinds[0]
            group.add_argument(*flags, dest=f.name, type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=help_text)
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="progress on stderr: a bar on a terminal, one line per epoch otherwise (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress output (same as --progress none)")


def overrides(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict:
    from ..training import Config
    return {k: getattr(args, k) for k in Config.keys() if k not in exclude and hasattr(args, k)}


def config_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()):
    """The Config of the flags over the config file over the model's recipe over the defaults."""
    return resolved_from_args(args, exclude)[0]


def resolved_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()):
    """``(Config, {field: where its value came from})`` of the command line (see :func:`config_from_args`)."""
    from ..files import read_mapping
    from ..training.recipes import resolve
    layers = []
    if args.config:
        layers.append((str(args.config), read_mapping(args.config, what="config file")))
    flags = overrides(args, exclude)
    layers += [("--model" if k == "architecture" else f"--{k.replace('_', '-')}", {k: v}) for k, v in flags.items()]
    return resolve(layers)


def progress_mode(args: argparse.Namespace) -> str:
    return "none" if args.quiet else args.progress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one network with one learning rule",
        description="Train one network with one learning rule. Writes RUN_DIR (default runs/<timestamp>-<rule>-"
                    "<dataset>) with config.toml, metrics.jsonl/csv, summary.json, plots and checkpoints.")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--show-recipe", action="store_true",
                        help="print the resolved settings (the model's recipe, the rule's adjustment, the config file "
                             "and the flags) and where each came from; train nothing")
    parser.add_argument("--log", metavar="NAMES", default=None,
                        help="also send metrics and alignment angles to tensorboard (RUN_DIR/tensorboard/), wandb "
                             "and/or mlflow, comma-separated; each needs its package (pip install 'feedalign[NAME]')")
    add_config_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with os_errors_as_usage():
        return _run(args)


@contextlib.contextmanager
def os_errors_as_usage():
    """A directory that cannot be written (permissions, a full disk) is one line, not a traceback;
    the same line :func:`feedalign.cli.main` gives any such ``OSError`` (anything else keeps its traceback)."""
    from ..errors import os_error_line
    try:
        yield
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        raise UsageError(line) from None


def _run(args: argparse.Namespace) -> int:
    from ..training import resume, train
    from ..training.loggers import loggers
    if args.show_recipe:
        if args.resume:
            raise UsageError("--show-recipe prints the settings of a new run; a resumed run's are in RUN_DIR/config.toml")
        from ..training.recipes import explain
        print(explain(*resolved_from_args(args)))
        return 0
    callbacks = loggers(args.log)  # before anything trains: a missing package is a one-line error
    if args.resume:
        given = overrides(args)
        if given or args.config:
            flags = ["--config"] if args.config else []
            flags += ["--" + k.replace("_", "-") for k in given]
            raise UsageError(f"--resume continues a run with its saved config; drop {', '.join(flags)}")
        result = resume(args.resume, callbacks, progress=progress_mode(args))
    else:
        result = train(config_from_args(args), callbacks, progress=progress_mode(args))
    print(describe(result.summary))
    return 0


def describe(summary: dict) -> str:
    """Two lines: where the run is, and how it went."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%" if summary["error_is"] != "mse" else f"{v:.4g}"
    speed = summary["seconds_per_epoch"]
    return (f"run: {summary['run_dir']}\n"
            f"{summary['outcome']} (decided at epoch {summary['outcome_epoch']}); best epoch {summary['best_epoch']}, "
            f"test error {pct(summary['test_error_at_best'])} there, final {pct(summary['final_test_error'])}; "
            f"{'-' if speed is None else f'{speed:.2f}'} s/epoch")
