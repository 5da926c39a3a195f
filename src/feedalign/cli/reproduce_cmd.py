"""``feedalign reproduce NAME [--quick] [--out DIR] [--seeds N] [--force] [--workers N] [--publish]``: rerun a paper's
experiment (``--publish``: then publish its report under docs/reports/ and regenerate docs/reproduction.md).

``NAME`` is one of ``feedalign reproduce --list`` or ``all``, which runs every
experiment (skipping results current for the code and config) and regenerates
``docs/reproduction.md`` with its figures under ``docs/figures/``.

``--verify [NAME|all]`` reruns nothing at full size: it replays the witness stored with each
published result under ``docs/reports/`` (the first steps of every run, or the quick size) with
the code as it is now, re-keys the results whose witness agrees (their reports then name the code
that produced them and the code verified) and regenerates the page; the others stay stale. Every
report's and the page's verdicts are recomputed from the stored per-run values and the registry of
paper numbers (``feedalign/experiments/paper_numbers.toml``) as they are now.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="reproduce an experiment of the FA/DFA papers (or all of them)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="experiment name, or 'all'")
    p.add_argument("--quick", action="store_true", help="the small size (under a minute), as the tests use")
    p.add_argument("--out", default=None, help="result folder root (default runs/reproduce/<quick|full>)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    p.add_argument("--force", action="store_true", help="rerun even when a current result exists")
    p.add_argument("--docs", default="docs", help="with 'all': where reproduction.md and figures/ go (default docs)")
    p.add_argument("--skip", default="", help="with 'all': comma-separated experiments not to run (still listed)")
    p.add_argument("--publish", action="store_true",
                   help="with NAME: publish its report under DOCS/reports/NAME and regenerate DOCS/reproduction.md "
                        "when it finishes (as 'all' does for every experiment)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--verify", action="store_true",
                   help="carry the published results (docs/reports) over to the current code when their witness "
                        "replays to the same numbers; NAME or 'all' (the default)")
    p.add_argument("--workers", type=int, default=None,
                   help="training processes at once (default: one per CPU core); same numbers for any value")
    p.set_defaults(func=run)


def run(args) -> int:
    from feedalign import experiments as ex
    from feedalign.experiments import DataUnavailable
    if args.verify:
        return _verify(args)
    if args.list or not args.name:
        for name in ex.experiments():
            e = ex.get_experiment(name)
            print(f"{name:20s} {e.title} [{e.paper}]; full size: {_full_runtime(name, args.docs) or e.full_runtime or '?'}")
        print(f"{'all':20s} every experiment above, then docs/reproduction.md")
        return 0 if args.list else 2
    if args.seeds is not None and args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    out = args.out or f"runs/reproduce/{'quick' if args.quick else 'full'}"
    if args.name == "all":
        from feedalign.experiments.summary import run_all
        skip = [s.strip() for s in args.skip.split(",") if s.strip()]
        unknown = [s for s in skip if s not in ex.experiments()]
        if unknown:
            raise UsageError(f"--skip: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(ex.experiments())}")
        only = [n for n in ex.experiments() if n not in skip]
        run_all(quick=args.quick, out=out, seeds=args.seeds, force=args.force, docs=args.docs, only=only,
                workers=args.workers)
        return 0
    if args.name not in ex.experiments():
        raise UsageError(f"unknown experiment {args.name!r}; known: {', '.join(ex.experiments())}, all")
    if args.publish:
        from feedalign.experiments.summary import run_all
        outcome = run_all(quick=args.quick, out=out, seeds=args.seeds, force=args.force, docs=args.docs,
                          only=[args.name], workers=args.workers)[args.name]
        if outcome.get("not_run"):
            raise UsageError(f"{args.name}: {outcome['not_run']}")
        return 0
    try:
        results = ex.run_experiment(args.name, quick=args.quick, out=out, seeds=args.seeds, force=args.force,
                                    workers=args.workers)
    except DataUnavailable as err:
        raise UsageError(f"{args.name}: {err}") from None
    from feedalign.experiments.verdicts import judged
    rows = judged(args.name, results)[0]
    failed = [r for r in rows if r["verdict"] in ("miss", "contradicted")]
    if failed:
        print(f"{args.name}: {len(failed)} claim(s) missed or contradicted: "
              + "; ".join(f"{r['claim']} ({r['verdict']})" for r in failed))
    return 0


def _full_runtime(name: str, docs: str) -> str | None:
    """The measured run time of the published full-size result, if there is one."""
    from feedalign.experiments.base import read_results, run_time
    results = read_results(Path(docs) / "reports" / name)
    if not results or results.get("config", {}).get("size") != "full":
        return None
    return f"{run_time(results)} (measured) on 2 CPU cores"


def _verify(args) -> int:
    from feedalign import experiments as ex
    from feedalign.experiments.summary import verify_published
    if args.quick or args.force or args.seeds is not None or args.skip:
        raise UsageError("--verify checks the published full-size results; it takes no --quick, --force, --seeds "
                         "or --skip")
    if args.name not in (None, "all") and args.name not in ex.experiments():
        raise UsageError(f"unknown experiment {args.name!r}; known: {', '.join(ex.experiments())}, all")
    names = None if args.name in (None, "all") else [args.name]
    statuses = verify_published(args.docs, names)
    # a result whose experiment now has other settings (e.g. a validation search) cannot be replayed: it awaits
    # its rerun (docs/reproduction-plan.md) and the page marks it, but it says nothing against the code
    rerun = [name for name, status in statuses.items() if status.startswith("stale: the experiment's settings")]
    stale = [name for name, status in statuses.items() if status.startswith("stale") and name not in rerun]
    if rerun:
        print(f"awaiting a rerun with their new settings (feedalign reproduce NAME --publish; see "
              f"docs/reproduction-plan.md): {', '.join(rerun)}")
    if stale:
        print(f"still stale (rerun them: feedalign reproduce NAME --publish): {', '.join(stale)}")
    return 1 if stale else 0
