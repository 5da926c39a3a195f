"""`feedalign compare`: one config, several rules and seeds, one table and one figure.

With no arguments it is the README's main job: BP, FA, DFA and IFA on MNIST
(784-256-256-10 tanh, see :class:`feedalign.training.Config` defaults).
"""
from __future__ import annotations

import argparse

from . import UsageError
from .train_cmd import add_config_flags, config_from_args, os_errors_as_usage, progress_mode


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers; got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated rule names, e.g. bp,fa,dfa; got {text!r}")
    return values


def register(subparsers) -> None:
    from ..sweeps import DEFAULT_RULES
    parser = subparsers.add_parser(
        "compare", help="train the same network with several rules and seeds; print a table",
        description="Train one config with several learning rules and seeds. Prints test error (mean ± std over "
                    "seeds) per rule and writes compare.json, compare.md, curves.png, error-and-alignment.png (test "
                    "error and the hidden layers' signal angle to the true gradient against optimizer steps) and one "
                    "run directory per (rule, seed) into OUT_DIR/NAME (default runs/<timestamp>-compare-<dataset>).")
    parser.add_argument("--rules", type=_name_list, default=list(DEFAULT_RULES),
                        help=f"comma-separated rules (default: {','.join(DEFAULT_RULES)})")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="N seeds: seed, seed+1, ... (default: 1)")
    seeds.add_argument("--seed-list", type=_int_list, metavar="S,S,...", help="explicit seeds, e.g. 0,1,2")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="runs trained at once in worker processes (default 1); separate runs give the same "
                             "numbers for any N (see --population for one worker)")
    parser.add_argument("--population", choices=("auto", "off"), default="auto",
                        help="auto (default): with one worker, the seeds of a rule train as one batched model "
                             "(bp, fa, usf, frsf, brsf, kp, wm, dfa, drtp, ifa on MLPs; numbers equal separate runs' "
                             "to float tolerance); off: separate runs, bitwise reproducible")
    parser.add_argument("--evals-per-epoch", type=int, default=0, metavar="N",
                        help="also evaluate the test error at steps 1, 2, 4, ... and N times per epoch, for "
                             "error-and-alignment.png (default 0: at epoch ends only); the runs' numbers do not "
                             "change, but the seeds then train as separate runs, not as a population")
    add_config_flags(parser, exclude=("rule",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sweeps import compare
    from ..sweeps.compare import FIGURE
    config = config_from_args(args, exclude=("rule",))
    if args.seed_list is not None:
        seeds = args.seed_list
    else:
        n = 1 if args.seeds is None else args.seeds
        if n < 1:
            raise UsageError(f"--seeds must be at least 1; got {n}")
        seeds = [config.seed + i for i in range(n)]
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1; got {args.workers}")
    if args.evals_per_epoch < 0:
        raise UsageError(f"--evals-per-epoch must be at least 0; got {args.evals_per_epoch}")
    with os_errors_as_usage():
        result = compare(config, args.rules, seeds, progress=progress_mode(args), workers=args.workers,
                         population=args.population == "auto", evals_per_epoch=args.evals_per_epoch)
    print(result.table(), end="")
    print(f"compare: {result.out_dir}  (compare.md, compare.json, curves.png)")
    print(f"figure: {result.out_dir / FIGURE}  (test error and hidden signal angle against optimizer steps)")
    return 0
