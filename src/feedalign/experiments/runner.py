"""Running and verifying a reproduction: ``feedalign reproduce NAME`` (:func:`run_experiment`) and
``feedalign reproduce --verify`` (:func:`verify`), and the report each writes (:func:`render_report`).

Above the experiment modules: it uses :mod:`.base` (the registry and result keys), :mod:`.verdicts`
and :mod:`.witness`, none of which imports it.
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write
from ..sweeps.local import default_workers
from . import base
from .base import cell, format_number, provenance, run_time
from .verdicts import judged
from .witness import (
    STEPS,
    compute_witness,
    first_difference,
    settings_changed,
    without_timing,
)


def run_experiment(name: str, *, quick: bool = False, out: str | Path = "runs/reproduce", seeds: int | None = None,
                   force: bool = False, workers: int | None = None, witness: bool | None = None, log=print) -> dict:
    """Run ``name`` (or reuse its current result) into ``out/NAME``; return the results dict.

    The result is current when ``results.json`` holds the same key: the hash of the
    config (size and seeds included), the package version and its source. ``force``
    reruns. ``workers``: training processes at once (default: one per CPU core); runs
    left unfinished by an interrupted call continue from their checkpoints. ``witness``
    (default: for the full size) stores what ``reproduce --verify`` replays to carry the
    result over to later code (:mod:`feedalign.experiments.witness`).
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer; got {workers!r}")
    workers = workers or default_workers(1)
    experiment = base.get_experiment(name)
    config = base.experiment_config(name, quick, seeds)
    key = base.result_key(experiment, config)
    folder = Path(out) / name
    previous = base.read_results(folder)
    if previous is not None and previous.get("key") == key and not force:
        log(f"{name}: current result in {folder} (key {key}); skipped, --force reruns it")
        previous["skipped"] = True
        return previous
    folder.mkdir(parents=True, exist_ok=True)
    for dep in experiment.needs:  # e.g. hidden-activations reads review-dfa's trained networks
        run_experiment(dep, quick=quick, out=out, seeds=seeds, force=False, workers=workers, log=log)
    log(f"{name}: {experiment.title} ({config['size']}, {config['seeds']} seeds) -> {folder}")
    start = time.perf_counter()
    runs = experiment.execute(config, folder, key=key, workers=workers, log=log)
    claims, figures = experiment.summarize(config, runs, folder)
    seconds = time.perf_counter() - start
    if witness if witness is not None else not quick:
        witness = compute_witness(name, config, chosen=(getattr(experiment, "last_search", None) or {}).get("chosen"),
                                  quick_results=_quick_results)
    else:
        witness = None
    command = f"feedalign reproduce {name}" + (" --quick" if quick else "") + (f" --seeds {seeds}" if seeds else "")
    results = {
        "experiment": name, "title": experiment.title, "paper": experiment.paper, "key": key,
        "package_hash": base.package_hash(), "config": config, "command": command, "workers": workers,
        "seconds": seconds, "run_seconds": experiment.run_seconds(runs), "full_runtime": experiment.full_runtime,
        "deviations": experiment.deviations(config), "figures": figures,
        "claims": [c.to_dict() for c in claims], "runs": runs, "search": getattr(experiment, "last_search", None),
        "carried": getattr(experiment, "last_carried", None) or None,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if witness is not None:
        results["witness"] = witness
    atomic_write(folder / "results.json", json.dumps(results, indent=1, default=_jsonable))
    atomic_write(folder / "report.md", render_report(results))
    for row in judged(name, results)[0]:
        log(f"  {row['verdict']:>12}  {row['claim']}: paper {row['paper']} | ours {row['ours']}")
    log(f"{name}: done in {seconds:.1f} s ({run_time(results)}); report {folder / 'report.md'}")
    results["skipped"] = False
    return results



def _quick_results(name: str):
    """Every number of ``name``'s quick size under the code as it is now, timings left out (a witness)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = run_experiment(name, quick=True, out=tmp, witness=False, log=lambda *a: None)
    return without_timing(results["runs"])


def verify(name: str, results: dict, *, log=print) -> tuple[str, dict]:
    """Check the published ``results`` of ``name`` (full size, or quick) against the code as it is now.

    Returns ``(status, results)``: ``"current"`` (its key is the current one), ``"verified"`` (the witness
    agreed; the returned results are re-keyed to the current code), or ``"stale: <why>"``.
    """
    experiment = base.get_experiment(name)
    size = results.get("config", {}).get("size")
    config = base.experiment_config(name, size == "quick", results["config"].get("seeds"))
    key = base.result_key(experiment, config)
    if results.get("key") == key:
        return "current", results
    changed = settings_changed(config, results["config"])
    if changed:
        return f"stale: the experiment's settings changed ({', '.join(changed)}); rerun it", results
    stored = results.get("witness")
    if not stored:
        return "stale: no witness stored with it; rerun it", results
    log(f"{name}: replaying its witness ({stored['kind']}) under code {base.package_hash()} ...")
    new = compute_witness(name, config, steps=stored.get("steps", STEPS),
                          chosen=(results.get("search") or {}).get("chosen"), quick_results=_quick_results)
    difference = first_difference(stored["values"], new["values"])
    if difference:
        return f"stale: the code now computes something else ({difference}); rerun it", results
    updated = dict(results)
    updated["produced_by"] = results.get("produced_by") or results.get("package_hash")
    updated["verified"] = list(results.get("verified", [])) + [
        {"package_hash": new["package_hash"], "date": time.strftime("%Y-%m-%d %H:%M:%S"), "witness": stored["kind"]}]
    updated.update(key=key, package_hash=new["package_hash"], witness={**stored, "package_hash": new["package_hash"]})
    # same settings, same numbers: the current code's account of how they were made applies (a deviation
    # note written since, e.g. a search that explains a miss, reaches the published report)
    updated.update(title=experiment.title, paper=experiment.paper, deviations=experiment.deviations(config))
    return "verified", updated


def _jsonable(x: Any):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)



def verdict_table(rows: list[dict]) -> list[str]:
    """Markdown table of judged rows (:func:`feedalign.experiments.verdicts.judged`)."""
    lines = ["| claim | paper | ours (mean ± std, se, seeds) | verdict | ours - paper | criterion | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {cell(r['claim'])} | {cell(r['paper'])} | {cell(r['ours'])} | {r['verdict']} | "
                     f"{r['delta']} | {cell(r['criterion'])} | {cell(r['note'])} |")
    return lines


def search_section(search: dict | None) -> list[str]:
    """The settings search of a result: the grid and the validation errors that chose each setting."""
    if not search:
        return []
    lines = ["", "## Settings chosen on validation", "",
             f"{search['what']}. Only validation errors are read; the test set is read once, by the reported runs.",
             "", "| learner | candidate | validation error (per search seed; %, or MSE for regression) | mean | chosen |",
             "|---|---|---|---|---|"]
    for label, entry in search["learners"].items():
        for cand in entry["candidates"]:
            errs = ", ".join(format_number(e) for e in cand["val_errors"])
            chosen = "yes" if cand["fields"] == entry["chosen"] else ""
            lines.append(f"| {cell(label)} | `{cell(json.dumps(cand['fields'], sort_keys=True))}` | {errs} | "
                         f"{format_number(cand['mean'])} | {chosen} |")
    edge = [label for label, entry in search["learners"].items() if entry.get("at_edge")]
    if edge:
        lines += ["", f"Chosen at the edge of the grid (a wider grid might choose otherwise): {', '.join(edge)}."]
    return lines


def render_report(results: dict) -> str:
    rows, retired = judged(results["experiment"], results)
    lines = [f"# {results['title']}", "", f"Reproduces: {results['paper']}", "",
             f"Command: `{results['command']}` ({results['config']['size']} size, {results['config']['seeds']} seeds); "
             f"ran in {run_time(results)} on {results['machine']}, finished {results['finished']}."]
    if results.get("full_runtime") and results["config"]["size"] == "quick":
        lines.append(f"Full size (estimate): {results['full_runtime']} on 2 CPU cores shared with other jobs.")
    lines += ["", "Verdicts are recomputed from the per-run values below and the registry of paper numbers "
              "(`feedalign/experiments/paper_numbers.toml`) whenever this report is written.", ""]
    lines += verdict_table(rows)
    if retired:
        lines += ["", "Rows withdrawn (their criterion could not fail at the numbers involved):", ""]
        lines += [f"- {r['claim']}: {r['reason']}" for r in retired]
    lines += search_section(results.get("search"))
    if results.get("carried"):
        carried = results["carried"]
        lines += ["", f"{len(carried['runs'])} finished runs were carried from an earlier run folder "
                  f"({', '.join(carried['from'])}) by scripts/carry_runs.py: their settings are these runs' own, "
                  f"made by code that computed the same (listed in results.json, `carried`)."]
    if results.get("deviations"):
        lines += ["", "## Where this run departs from the paper", ""] + [f"- {d}" for d in results["deviations"]]
    if results.get("figures"):
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in results["figures"]]
    lines += ["", "## Config", "", "```json", json.dumps(results["config"], indent=1, sort_keys=True), "```",
              "", f"Result key {results['key']} (config, package version and source hash {results.get('package_hash')}).",
              *provenance(results), ""]
    return "\n".join(lines)
