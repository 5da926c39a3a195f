"""``feedalign reproduce all``: run every experiment, then write docs/reproduction.md from their results.

Every number in the page comes from the experiments' ``results.json``; nothing is
typed by hand. Experiments whose result is current (same config and code hash) are
not rerun, so an interrupted ``all`` resumes where it stopped.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..files import atomic_write
from .base import (
    DataUnavailable,
    cell,
    experiment_config,
    experiments,
    get_experiment,
    provenance,
    read_results,
    result_key,
    run_time,
)
from .runner import render_report, run_experiment, verify
from .verdicts import judged
from .witness import settings_changed


def run_all(*, quick: bool = False, out: str | Path = "runs/reproduce/full", seeds: int | None = None,
            force: bool = False, docs: str | Path | None = "docs", only: list[str] | None = None,
            workers: int | None = None, log=print) -> dict:
    """Run (or reuse) every experiment into ``out``; regenerate ``docs/reproduction.md``. Returns name -> results.

    Each experiment's report is published under ``docs/reports/NAME/`` as soon as it finishes, so an
    interrupted ``all`` leaves every finished result where it can be committed.
    """
    out = Path(out)
    outcomes: dict[str, dict] = {}
    for name in only or experiments():
        published = None if docs is None or force else _current_published(name, Path(docs), quick, seeds, out)
        if published is not None:
            log(f"{name}: the result published under {Path(docs) / 'reports' / name} is current; skipped, "
                "--force reruns it")
            outcomes[name] = {**published, "skipped": True}
            continue
        try:
            outcomes[name] = run_experiment(name, quick=quick, out=out, seeds=seeds, force=force, workers=workers,
                                            log=log)
            if docs is not None:
                publish_report(out / name, Path(docs) / "reports" / name)
        except DataUnavailable as err:
            log(f"{name}: not run: {err}")
            outcomes[name] = {"experiment": name, "not_run": str(err)}
    if docs is not None:
        skipped = [n for n in experiments() if only is not None and n not in only]
        command = (f"feedalign reproduce {only[0]}{' --quick' if quick else ''}"
                   f"{f' --seeds {seeds}' if seeds else ''} --publish" if only and len(only) == 1 else None)
        write_docs(out, Path(docs), quick=quick, seeds=seeds, log=log, skipped=skipped, command=command)
    return outcomes


def _current_published(name: str, docs: Path, quick: bool, seeds: int | None, out: Path) -> dict | None:
    """The result published under ``docs/reports/NAME`` when it is current and ``out`` has no current one."""
    key = result_key(get_experiment(name), experiment_config(name, quick, seeds))
    local = read_results(out / name)
    if local is not None and local.get("key") == key:
        return None  # run_experiment reuses (and publish_report republishes) the local one
    published = read_results(docs / "reports" / name)
    return published if published is not None and published.get("key") == key else None


def collect(out: Path, quick: bool, seeds: int | None,
            published: Path | None = None) -> list[tuple[str, dict | None, bool]]:
    """(name, results or None, current?) for every registered experiment, from ``out``; where ``out`` has
    no current one, the copy published under ``published/NAME`` (of the same size), so a page regenerated on
    a fresh checkout keeps the results it had, marked stale when the code or config has changed since (and
    not verified for the new code by ``reproduce --verify``)."""
    rows = []
    size = "quick" if quick else "full"
    for name in experiments():
        def current(results, experiment=get_experiment(name), name=name):  # same code, settings and seeds
            return results is not None and results.get("key") == result_key(
                experiment, experiment_config(name, quick, seeds or results.get("config", {}).get("seeds")))
        results = read_results(out / name)
        if published is not None and not current(results):
            copy = read_results(published / name)  # a stale local result never replaces the published one
            if copy is not None and copy.get("config", {}).get("size") == size:
                results = copy
        rows.append((name, results, current(results)))
    return rows


def publish_report(source: Path, target: Path) -> str | None:
    """Copy ``report.md`` and ``results.json`` of one experiment from ``source`` (under runs/, which git ignores)
    to ``target`` (under docs/reports/NAME/), its figure links pointing at docs/figures/; return the link
    relative to docs/, or None when there is no report."""
    report = source / "report.md"
    if not report.exists():
        return None
    target.mkdir(parents=True, exist_ok=True)
    results = read_results(source) or {}
    (target / "report.md").write_text(_linked_figures(report.read_text(), results))
    if (source / "results.json").exists():
        shutil.copyfile(source / "results.json", target / "results.json")
    return f"reports/{target.name}/report.md"


def write_docs(out: Path, docs: Path, *, quick: bool, seeds: int | None, log=print, skipped=(),
               command: str | None = None) -> Path:
    """Write ``docs/reproduction.md`` from the results (local in ``out``, else published under ``docs/reports``),
    every verdict recomputed now (:func:`feedalign.experiments.verdicts.judged`)."""
    figures = docs / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    size = "quick" if quick else "full"
    command = command or ("feedalign reproduce all" + (" --quick" if quick else "")
                          + (f" --seeds {seeds}" if seeds else "") + (f" --skip {','.join(skipped)}" if skipped else ""))
    lines = [
        "# Reproducing the FA and DFA papers",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} from the",
        f"results in `{out}` (or, where that has none, those published under `{docs / 'reports'}`); every number",
        "below is read from those `results.json` files, and every verdict is recomputed from their per-run values",
        "and the registry of paper numbers (`src/feedalign/experiments/paper_numbers.toml`) each time this page is",
        "written or `feedalign reproduce --verify` runs. Do not edit this page: rerun the command.",
        "",
        "Papers: Lillicrap, Cownden, Tweed & Akerman, *Random synaptic feedback weights support error",
        "backpropagation for deep learning*, Nat. Commun. 7:13276 (2016), arXiv 1411.0247; Nøkland, *Direct",
        "Feedback Alignment Provides Learning in Deep Neural Networks*, NeurIPS 2016, arXiv 1609.01596; the",
        "review's own reproduction (xuexue/randombp) and its observations on which settings train; BioTorch",
        "(Sanfiz & Akrout 2021) for the wider family. Each paper number carries its registry status: no mark when",
        "confirmed in a primary source, otherwise `(one source)`, `(read off a plot)` or `(unverified)`.",
        "",
        "Verdicts (one vocabulary): **reproduced**: |ours - paper| within the row's tolerance (0.3 points for",
        "errors below 5 %, else as the row says), or the paper's value inside ours' mean ± 2 standard errors; a gap",
        "row (rule minus reference) decided by the tolerance also needs the paper's sign. **better**: ours better",
        "than the paper by more than that (column *ours - paper*). **miss**: ours worse by more than that.",
        "**contradicted**: a qualitative claim our evidence shows does not hold (the row says what we found).",
        "**-**: nothing to compare, or fewer seeds than the row needs (3), or a stored result whose protocol the",
        "paper number does not describe (the note says which). Ours is mean ± sample std over seeds, with the",
        "standard error (se).",
        "",
        "| experiment | claim | paper | ours (mean ± std, se, seeds) | verdict | ours - paper | criterion | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sections, status_rows, todo = [], [], []
    for name, results, current in collect(out, quick, seeds, published=docs / "reports"):
        if name in skipped and results is None:  # skipped, with no earlier result to show
            lines.append(f"| {name} | (skipped for this page: `--skip {name}`) | | | | | | |")
            continue
        experiment = get_experiment(name)
        command = f"feedalign reproduce {name}{' --quick' if quick else ''} --publish"
        if results is None:
            lines.append(f"| {name} | (not run at {size} size for this page) | | | | | | |")
            todo.append((name, f"`{command}`", "never run at this size"))
            continue
        by_settings = not current and settings_changed(
            experiment_config(name, quick, results.get("config", {}).get("seeds")), results.get("config", {}))
        stale = ("" if current else "stale: its settings changed since; rerun" if by_settings else
                 "stale: the code changed since; not yet verified")
        rows, retired = judged(name, results)
        for r in rows:
            note = "; ".join(n for n in (r["note"], stale) if n)
            lines.append(f"| {name} | {cell(r['claim'])} | {cell(r['paper'])} | {cell(r['ours'])} | {r['verdict']} | "
                         f"{r['delta']} | {cell(r['criterion'])} | {cell(note)} |")
        why = [w for w in (stale, experiment.selection_note(results.get("config", {})),
                           experiment.incomparable(results.get("config", {}))) if w]
        under = sorted({r["claim"] for r in rows if r["note"].startswith("not judged:")})
        if under:
            why.append(f"{len(under)} row(s) with too few seeds")
        if why == [stale] and not by_settings:  # only the code changed: a witness replay may carry it over
            todo.append((name, f"`feedalign reproduce --verify {name}`", "the code changed since; its witness replay "
                         "carries the result over"))
        elif why:
            more = under and results.get("config", {}).get("seeds", 0) < 3
            todo.append((name, f"`{command.replace(' --publish', ' --seeds 3 --publish') if more else command}`",
                         "; ".join(why)))
        status_rows.append(f"| {name} | `{results['command']}` | {run_time(results)} | "
                           f"{'current' if current else 'stale'} |")
        estimate = (f"; full size (estimate): {experiment.full_runtime} on 2 shared CPU cores"
                    if quick and experiment.full_runtime else "")
        local = read_results(out / name)
        from_local = current and local is not None and local.get("key") == results.get("key")
        report = publish_report(out / name, docs / "reports" / name) if from_local else None  # never a stale one
        if report is None and (docs / "reports" / name / "report.md").exists():  # published by an earlier run
            report = f"reports/{name}/report.md"
        where = f"[reports/{name}/report.md]({report})" if report else f"`{out / name / 'report.md'}`"
        section = [f"## {name}: {results['title']}", "", f"{results['paper']}. Size: {results['config']['size']}, "
                   f"{results['config']['seeds']} seeds, ran in {run_time(results)} on 2 CPU cores shared with "
                   f"other jobs{estimate}. Command: `{results['command']}`. Report: {where} (with its "
                   "`results.json`).", *provenance(results), ""]
        if retired:
            section += ["Rows withdrawn (their criterion could not fail at the numbers involved):", ""]
            section += [f"- {r['claim']}: {r['reason']}" for r in retired] + [""]
        search = results.get("search")
        if search:
            section += [f"Settings chosen on validation: {search['what']}; chosen "
                        + "; ".join(f"{label}: `{json.dumps(fields, sort_keys=True)}`"
                                    for label, fields in search["chosen"].items()) + " (grid and errors in the report).", ""]
        if results.get("deviations"):
            section += ["Where it departs from the paper:", ""] + [f"- {d}" for d in results["deviations"]] + [""]
        for fig in results.get("figures", []):
            source = out / name / fig
            if from_local and source.exists():
                shutil.copyfile(source, figures / fig)
            if (figures / fig).exists():
                section += [f"![{fig}](figures/{fig})", ""]
        sections.append("\n".join(section))
    lines += ["", "| experiment | command that made the result | run time | result |", "|---|---|---|---|",
              *status_rows]
    if todo:
        lines += ["", "## Still to run", "",
                  "Each of these rows awaits a rerun before its verdicts count (the long ones: see "
                  "[reproduction-plan.md](reproduction-plan.md) for the split, resumable commands):", ""]
        lines += [f"- {name}: {cmd} ({why})" for name, cmd, why in todo]
    text = "\n".join(lines) + "\n\n" + "\n\n".join(sections) + "\n"
    path = docs / "reproduction.md"
    path.write_text(text)
    log(f"wrote {path} and {figures}/")
    return path


def verify_published(docs: str | Path = "docs", names: list[str] | None = None, *,
                     out: str | Path = "runs/reproduce/full", quick: bool = False, log=print) -> dict[str, str]:
    """``feedalign reproduce --verify``: carry published results over to the code as it is now.

    For each experiment (``names``, default all) with a result under ``docs/reports/NAME``, replay its
    witness (:mod:`feedalign.experiments.witness`) when its key is stale only by the code; re-key and
    republish the verified ones, then regenerate ``docs/reproduction.md`` (for the ``quick`` or full size,
    with local results from ``out``). Returns name -> status.
    """
    docs = Path(docs)
    statuses = {}
    for name in names or experiments():
        folder = docs / "reports" / name
        results = read_results(folder)
        if results is None:
            statuses[name] = "not published"
            log(f"{name}: not published under {folder}")
            continue
        status, updated = verify(name, results, log=log)
        if status == "verified":
            atomic_write(folder / "results.json", json.dumps(updated, indent=1))
        # every report's verdicts recomputed against the registry and criteria as they are now
        atomic_write(folder / "report.md", _linked_figures(render_report(updated), updated))
        statuses[name] = status
        log(f"{name}: {status}")
    write_docs(Path(out), docs, quick=quick, seeds=None, log=log,
               command="feedalign reproduce --verify" + (" (of quick-size results)" if quick else ""))
    return statuses


def _linked_figures(report: str, results: dict) -> str:
    """A report's figure links as seen from docs/reports/NAME/: the figures live in docs/figures/."""
    for fig in results.get("figures", []):
        report = report.replace(f"]({fig})", f"](../../figures/{fig})")
    return report
