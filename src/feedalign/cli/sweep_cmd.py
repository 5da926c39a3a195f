"""``feedalign sweep SPEC``: run a grid or random sample of training configs and map their outcomes.

SPEC is a TOML or YAML file with a [base] table of config fields, a [grid] table
(field = [values]) and/or a [random] table (field = {choice|uniform|loguniform|randint = [...]})
with ``samples = N``. Each run is an ordinary run directory under OUT_DIR/NAME/runs/;
the sweep writes OUT_DIR/NAME/results.csv and results.json, and figures under
OUT_DIR/NAME/figures/ (heatmaps per rule, best learning curves). Rerunning the
same spec skips finished runs.

Every run's settings, including that its architecture fits its dataset, are checked
before the first run starts.

With the local backend, runs that differ only in seed, lr, init_scale, feedback_scale
or weight_decay (rules bp, fa, usf, frsf, brsf, kp, wm, dfa, drtp, ifa; an MLP) train up to
population_size (default 8) at a time as one batched model in one worker, each with
its ordinary run directory; --population off (or population = "off" in the spec)
trains every run alone, for bitwise-reproducible numbers.

examples:
  feedalign sweep --example sensitivity-init-lr      # copy a shipped spec to ./sensitivity-init-lr.toml
  feedalign sweep sensitivity-init-lr.toml
  feedalign sweep sensitivity-init-lr.toml --set epochs=1 --set dataset=mnist1d --set architecture=40-200-100-10
  feedalign sweep spec.toml --backend ray --address ray://head-node:10001
  feedalign sweep spec.toml --plot-only
  feedalign sweep spec.toml --population off          # every run alone, no batched populations
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="sweep settings over a grid or random sample; map where each rule trains",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="sweep spec file (.toml, .yaml or .yml)")
    p.add_argument("--example", metavar="NAME", default=None,
                   help=f"copy the shipped example spec NAME ({', '.join(example_names())}) to ./NAME.toml "
                        "(or into --out-dir) and stop")
    p.add_argument("--backend", choices=None, default=None, help="local (default: worker processes here) or ray")
    p.add_argument("--address", default=None,
                   help="ray backend: address of a running Ray cluster (ray://HOST:10001, HOST:6379 or auto); "
                        "default: start a local Ray instance")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once (local default: CPUs // threads_per_run; ray default: as the cluster fits)")
    p.add_argument("--threads-per-run", type=int, default=None, help="torch threads (and Ray CPUs) per run (default 1)")
    p.add_argument("--population", choices=("auto", "off"), default=None,
                   help="auto: train runs that can share one batched model as populations (local backend); "
                        "off: every run alone (default: the spec's population, auto)")
    p.add_argument("--population-size", type=int, default=None, metavar="N",
                   help="at most N runs per population (default: the spec's population_size, 8)")
    p.add_argument("--out-dir", default=None, help="directory the sweep directory goes into (default: the spec's out_dir)")
    p.add_argument("--name", default=None, help="sweep directory name (default: the spec's name or file stem)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a [base] field, e.g. --set epochs=1 (repeatable; VALUE is read as TOML, else a string)")
    p.add_argument("--plot-only", action="store_true", help="only redraw the figures from the existing results")
    p.add_argument("--no-plot", action="store_true", help="do not draw figures at the end")
    p.add_argument("--dry-run", action="store_true", help="check the spec and list the runs; run nothing")
    p.add_argument("--report", action="store_true",
                   help="print the sensitivity report (the review's observations) for the results at the end")
    p.set_defaults(func=run)


def parse_set(items: list[str]) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except Exception:
            value = raw.strip()
        out[key] = value
    return out


def example_names() -> list[str]:
    """The example specs shipped in the package (feedalign/sweeps/examples/*.toml)."""
    from importlib.resources import files
    return sorted(f.name[:-5] for f in files("feedalign.sweeps").joinpath("examples").iterdir() if f.name.endswith(".toml"))


def copy_example(name: str, out_dir: str | None) -> Path:
    """Copy example spec ``name`` to ``OUT_DIR/NAME.toml`` (default: the current folder); never overwrites."""
    from importlib.resources import files

    from ..files import atomic_write
    name = name.removesuffix(".toml")
    if name not in example_names():
        raise UsageError(f"unknown example {name!r}; shipped examples: {', '.join(example_names())}")
    dest = Path(out_dir or ".") / f"{name}.toml"
    if dest.exists():
        raise UsageError(f"{dest} already exists; remove it or pass --out-dir elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, files("feedalign.sweeps").joinpath("examples", f"{name}.toml").read_bytes())
    return dest


def run(args) -> int:
    from feedalign.sweeps import load_spec, plot_sweep, run_sweep, sensitivity_report
    from feedalign.sweeps.spec import check_fit
    if args.example is not None:
        if args.spec is not None:
            raise UsageError("--example copies a shipped spec and runs nothing; drop SPEC")
        dest = copy_example(args.example, args.out_dir)
        print(f"{dest}  (run it: feedalign sweep {dest})")
        return 0
    if args.spec is None:
        raise UsageError("give a SPEC file, or --example NAME to copy a shipped one")
    from feedalign.sweeps.spec import BACKENDS
    if args.backend is not None and args.backend not in BACKENDS:
        raise UsageError(f"unknown backend {args.backend!r}; expected one of {', '.join(BACKENDS)}")
    for flag, value, least in (("--workers", args.workers, 1), ("--threads-per-run", args.threads_per_run, 1),
                               ("--population-size", args.population_size, 2)):
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least}; got {value}")
    spec = load_spec(args.spec, overrides=parse_set(args.set), out_dir=args.out_dir, name=args.name,
                     threads_per_run=args.threads_per_run, backend=args.backend, population=args.population,
                     population_size=args.population_size)
    if args.address and spec.backend != "ray":
        raise UsageError("--address is for the ray backend; add --backend ray")
    if args.plot_only:
        if not (spec.sweep_dir / "results.json").is_file():
            raise UsageError(f"--plot-only: no results in {spec.sweep_dir}; run the sweep first")
        figures = plot_sweep(spec.sweep_dir, pairs=spec.plot or None)
        for path in figures:
            print(path)
        if args.report:
            print(sensitivity_report(spec.sweep_dir))
        return 0
    if args.dry_run:
        points = spec.points()
        check_fit(points, spec.source)
        print(f"sweep {spec.name}: {len(points)} runs into {spec.sweep_dir} ({spec.backend} backend)")
        for p in points:
            print(f"  {p.key}  " + " ".join(f"{k}={v!r}" for k, v in p.params.items()))
        if spec.backend == "local":
            from feedalign.sweeps.local import default_workers
            from feedalign.sweeps.runner import _finished, plan_jobs
            runs_dir = spec.sweep_dir.resolve() / "runs"
            todo = [p for p in points if _finished(runs_dir / p.key, p.hash) is None]
            jobs = plan_jobs(todo, runs_dir, population=spec.population,
                             population_size=spec.population_size,
                             workers=args.workers or spec.workers or default_workers(spec.threads_per_run))
            sizes = [len(job["members"]) for job in jobs if "members" in job]
            if sizes:
                print(f"to run: {sum(sizes)} runs as {len(sizes)} population(s) of {', '.join(map(str, sizes))}, "
                      f"{len(jobs) - len(sizes)} run(s) alone")
        return 0
    result = run_sweep(spec, backend=spec.backend, address=args.address, workers=args.workers, plot=not args.no_plot)
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    print(f"sweep {spec.name}: {len(result.rows)} runs ({result.ran} run now, {result.skipped} already done): "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"results: {result.sweep_dir / 'results.csv'}")
    if args.report:
        print(sensitivity_report(result.sweep_dir))
    if result.failed:
        print(f"feedalign sweep: {len(result.failed)} run(s) did not finish: "
              + "; ".join(f"{r['key']}: {r.get('error', r['status'])}" for r in result.failed[:3]), file=sys.stderr)
        return 1
    return 0
