"""Carry an experiment's finished runs from an older run folder into the folder of its current key.

When an experiment's settings change (a wider grid, a search that now extends past its edge), its key
changes and `feedalign reproduce` would train every run again, though most runs' own settings did not
change. This copies the finished runs that still apply, so that only the new ones train:

    python scripts/carry_runs.py NAME OLD_FOLDER [--out runs/reproduce/full] [--quick]

OLD_FOLDER holds finished run directories (a `runs-KEY/` of the experiment, or `relay/NAME` loaded by
`scripts/relay.py`), searched recursively. A settings-search run is carried when its settings (the
sweep's config hash: every field but out_dir, name, threads and data dir) equal a search run the current
experiment plans; a reported run when its name is one the experiment plans. Whether a reported run is
kept is decided when the experiment runs: only if its settings are those the new search chose
(`feedalign.sweeps.local.finished`); otherwise it is trained again. Each carried run gets a file CARRIED
naming its source, and the result lists the carried runs it used.

Carry only runs made by code that computes what the current code computes: e.g. runs of a result that
`feedalign reproduce --verify` verified on the current code (its witness, the first steps of every run,
replayed the same). Unfinished runs are never carried.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from feedalign.experiments import experiment_config, get_experiment
from feedalign.experiments.base import result_key
from feedalign.sweeps.spec import config_hash
from feedalign.training import Config


def carry(name: str, old: Path, out: Path, quick: bool = False, log=print) -> int:
    experiment = get_experiment(name)
    config = experiment_config(name, quick)
    runs_dir = out / name / f"runs-{result_key(experiment, config)}"
    if old.resolve() == runs_dir.resolve():
        raise SystemExit(f"carry_runs: {old} is already the current run folder of {name}")
    finished = {}
    for summary in sorted(old.rglob("summary.json")):
        finished.setdefault(summary.parent.name, []).append(summary.parent)
    by_hash = {}
    for folders in finished.values():
        for folder in folders:
            by_hash.setdefault(config_hash(Config.from_file(folder / "config.toml")), folder)
    planned = []
    if config.get("search"):
        for _, _, _, run in experiment.search_configs(config, runs_dir / "search"):
            planned.append((runs_dir / "search" / run.name, by_hash.get(config_hash(run))))
    for _, _, run in experiment.run_configs(config, runs_dir):
        sources = [f for f in finished.get(run.name, []) if f.parent.name != "search"]
        planned.append((runs_dir / run.name, sources[0] if sources else None))
    carried = 0
    for target, source in planned:
        if source is None or (target / "summary.json").is_file():
            continue
        if target.exists():
            shutil.rmtree(target)  # an unfinished run of the new folder: the finished one replaces it
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
        (target / "checkpoints").mkdir(exist_ok=True)
        (target / "CARRIED").write_text(f"{source.resolve()}\n")
        log(f"  {source} -> {target}")
        carried += 1
    log(f"{name}: {carried} finished run(s) carried into {runs_dir} ({len(planned)} planned before the search's choice)")
    return carried


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("old", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce/full"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not args.old.is_dir():
        print(f"carry_runs: {args.old} is not a folder", file=sys.stderr)
        return 2
    carry(args.name, args.old, args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
