"""Carry a long reproduction's finished runs from one machine to the next through git.

A full-size reproduction (``feedalign reproduce NAME --publish``) resumes from ``runs/``, but a session that
ends on a machine that is then thrown away loses ``runs/``. This script keeps what a later machine needs to
go on (each *finished* run's ``summary.json``, ``metrics.jsonl``, ``config.toml``, ``alignment.jsonl``; no
checkpoints, no figures) in a folder that is committed, with a manifest naming the commit the runs were
trained by. A run's folder name ``runs-KEY`` hashes the package source, so the next machine must run the
same commit (a worktree of it) for the runs to count; ``load`` refuses to mix commits.

    python scripts/relay.py save  RUNS_ROOT RELAY [--commit SHA]   # after (or while) runs finish
    python scripts/relay.py load  RELAY RUNS_ROOT                  # on the next machine, before resuming

``RUNS_ROOT`` is the reproductions' root (``runs/reproduce/full`` of the checkout that trains them);
``RELAY`` e.g. ``relay/`` of the main checkout. Unfinished runs are not carried: they restart.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KEEP = ("summary.json", "metrics.jsonl", "config.toml", "alignment.jsonl")
MANIFEST = "MANIFEST.json"


def finished_runs(root: Path):
    """Every run directory under ``root`` whose ``summary.json`` says it finished."""
    for summary in sorted(root.rglob("summary.json")):
        yield summary.parent


def _copy_run(src: Path, dst: Path) -> None:
    """Copy one run's kept files through a temporary folder and a rename, so a half copy never counts."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEEP:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def copy_finished(source: Path, dest: Path) -> int:
    """Copy every finished run under ``source`` that ``dest`` lacks to the same place under ``dest``."""
    added = 0
    for run in finished_runs(source):
        target = dest / run.relative_to(source)
        if not (target / "summary.json").is_file():
            _copy_run(run, target)
            added += 1
    return added


def save(runs_root: Path, relay: Path, commit: str) -> int:
    manifest_path = relay / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("commit") not in (None, commit):
        sys.exit(f"relay: {relay} holds runs of commit {manifest['commit'][:12]}, not {commit[:12]}; "
                 "use another folder")
    added = copy_finished(runs_root, relay)
    counts = {}
    for run in finished_runs(relay):
        experiment = run.relative_to(relay).parts[0]
        counts[experiment] = counts.get(experiment, 0) + 1
    manifest = {"commit": commit, "saved": time.strftime("%Y-%m-%d %H:%M:%S"), "finished_runs": counts}
    relay.mkdir(parents=True, exist_ok=True)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, manifest_path)
    print(f"relay: {added} newly finished run(s) saved; {counts} in {relay} (commit {commit[:12]})")
    return 0


def load(relay: Path, runs_root: Path) -> int:
    manifest_path = relay / MANIFEST
    if not manifest_path.is_file():
        sys.exit(f"relay: no {MANIFEST} in {relay}")
    manifest = json.loads(manifest_path.read_text())
    added = copy_finished(relay, runs_root)
    print(f"relay: {added} finished run(s) restored into {runs_root}; they count only under commit "
          f"{manifest['commit']} (run it from a worktree: git worktree add DIR {manifest['commit'][:12]})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy finished runs into the relay folder")
    s.add_argument("runs_root", type=Path)
    s.add_argument("relay", type=Path)
    s.add_argument("--commit", help="the commit that trains the runs (default: HEAD of RUNS_ROOT's checkout)")
    s = sub.add_parser("load", help="restore finished runs from the relay folder")
    s.add_argument("relay", type=Path)
    s.add_argument("runs_root", type=Path)
    args = parser.parse_args(argv)
    if args.command == "save":
        if not args.runs_root.is_dir():
            sys.exit(f"relay: no runs folder {args.runs_root}")
        commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.runs_root, check=True,
                                               capture_output=True, text=True).stdout.strip()
        return save(args.runs_root, args.relay, commit)
    return load(args.relay, args.runs_root)


if __name__ == "__main__":
    sys.exit(main())
