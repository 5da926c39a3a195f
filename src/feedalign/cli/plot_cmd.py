"""`feedalign plot`: figures from run directories.

    feedalign plot alignment RUN_DIR [RUN_DIR ...]   angles vs training step, one line per layer
    feedalign plot hidden RUN_DIR [RUN_DIR ...]      hidden activations (units x examples by class)
    feedalign plot curves RUN_DIR [RUN_DIR ...]      validation accuracy (or loss) per epoch

One run writes into its own directory by default; several write into the current one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError

KINDS = ("alignment", "hidden", "curves")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="figures from run directories: alignment angles, hidden activations, learning curves",
        description="Draw figures from run directories made by `feedalign train` (PNG, matplotlib).")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", parser_class=type(parser))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to draw, side by side")
    common.add_argument("-o", "--output", metavar="FILE",
                        help="PNG to write (default: RUN_DIR/<kind>.png for one run, ./<kind>.png for several)")

    p = kinds.add_parser("alignment", parents=[common], help="alignment angles against training step, per layer",
                         description="Angles from RUN_DIR/alignment.jsonl (train with --alignment-every N), "
                                     "one panel per run, one line per layer.")
    p.add_argument("--metric", default="signal_angle",
                   choices=("signal_angle", "signal_angle_mean", "update_angle", "weight_angle", "norm_ratio"),
                   help="which column to draw (default: signal_angle)")
    p.set_defaults(func=run)

    p = kinds.add_parser("hidden", parents=[common], help="hidden activations of each run's best model",
                         description="Hidden activations of each run's best checkpoint on the same test examples: "
                                     "units x examples, examples grouped by class, class boundaries marked.")
    p.add_argument("--layer", type=int, default=-1,
                   help="hidden layer, 1-based; negative counts from the last (default -1)")
    p.add_argument("--per-class", type=int, default=20, help="test examples per class (default 20)")
    p.add_argument("--no-sort", dest="sort_units", action="store_false",
                   help="keep units in their order instead of grouping them by preferred class")
    p.set_defaults(func=run)

    p = kinds.add_parser("curves", parents=[common], help="learning curves from metrics.jsonl",
                         description="One line per run: a metric per epoch from RUN_DIR/metrics.jsonl.")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "loss"), help="default: accuracy")
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="default: val")
    p.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _no_kind(parser))


def _no_kind(parser) -> int:
    raise UsageError(f"feedalign plot: choose what to draw: {', '.join(KINDS)} (see `feedalign plot --help`)")


def run(args: argparse.Namespace) -> int:
    from ..diagnostics import plots
    for run_dir in args.runs:
        plots.check_run_dir(run_dir)  # before any slow loading
    output = Path(args.output) if args.output else (
        Path(args.runs[0]) / f"{args.kind}.png" if len(args.runs) == 1 else Path(f"{args.kind}.png"))
    if output.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--output {str(output)!r}: expected a .png, .pdf or .svg file name")
    from ..files import check_writable
    check_writable(output)  # before the (slow) loading of models and data
    if args.kind == "alignment":
        path = plots.plot_alignment(args.runs, output, metric=args.metric)
    elif args.kind == "hidden":
        if args.per_class < 1:  # before the (slow) loading
            raise UsageError(f"feedalign plot hidden: --per-class must be >= 1; got {args.per_class}")
        from ..training.checkpoint import load_run
        runs = [(run_dir, *load_run(run_dir)) for run_dir in args.runs]
        path = plots.plot_hidden(runs, output, layer=args.layer, per_class=args.per_class, sort_units=args.sort_units)
    else:
        path = plots.plot_curves(args.runs, output, metric=args.metric, split=args.split)
    print(f"wrote {path}")
    return 0
