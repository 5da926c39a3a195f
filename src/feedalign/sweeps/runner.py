"""Run a sweep: plan its runs, skip the finished ones, dispatch the rest, keep the table current.

Sweep directory::

    OUT_DIR/NAME/spec.json          the resolved spec
    OUT_DIR/NAME/runs/<rule>-<hash>/  one ordinary run directory per run (config.toml, metrics, summary.json)
    OUT_DIR/NAME/results.csv, results.json
    OUT_DIR/NAME/figures/*.png
    OUT_DIR/NAME/logs/<key>.log     each worker's output, attempt by attempt

A run is finished when its run directory has summary.json and its config.toml
hashes to the run's config (or, for runs on remote Ray nodes, when results.json
already has it as done). Rerunning the same spec redoes nothing finished.

Populations (local backend, ``population = "auto"``, the default): the runs still to do
that :func:`feedalign.training.population.unsupported` accepts and that have no run
directory yet are grouped by :func:`~feedalign.training.population.population_key`
(they differ only in seed, lr, init_scale, feedback_scale, weight_decay); each group of
two or more is cut into jobs of at most ``population_size`` runs (smaller ones when that
leaves workers idle) and each job trains as ONE batched model in one worker
(:func:`~feedalign.training.population.train_population`). Every member still gets its
ordinary run directory ``runs/<key>/`` and its own row; the row's ``population`` names the
job (logs/<job>.log holds its output) and ``seconds`` is the member's share (1/N) of the
job's wall time. A population job that fails or whose worker dies is not retried as a
population: its members without summary.json go on as single-run jobs (which resume from
the checkpoints the population left), with ``retries`` more attempts each. Runs that
cannot share (another rule, optimizer or schedule, a partly trained run directory) train
alone as before; so do all runs with ``population = "off"`` or the Ray backend.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import FolderLock, atomic_write
from ..training.config import Config
from ..training.population import population_key, unsupported
from .local import default_workers, population_job, run_local, training_job
from .plots import plot_sweep
from .results import make_row, read_results, write_results
from .spec import POPULATION_MODES, SweepSpec, check_fit, config_hash


@dataclass
class SweepResult:
    sweep_dir: Path
    rows: list
    swept: list
    ran: int
    skipped: int
    figures: list

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] != "done"]


def _finished(run_dir: Path, hash_: str) -> dict | None:
    """The run's summary if ``run_dir`` holds a finished run of the config with this hash."""
    summary, config = run_dir / "summary.json", run_dir / "config.toml"
    if not summary.is_file():
        return None
    if config.is_file():
        try:
            if config_hash(Config.from_file(config)) != hash_:
                return None
        except ValueError:
            return None
    try:
        return json.loads(summary.read_text())
    except (OSError, ValueError):
        return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_jobs(points: list, runs_dir: Path, *, population: str = "auto", population_size: int = 8,
              workers: int = 1) -> list[dict]:
    """The jobs that train ``points`` (runs still to do): population jobs first, then single-run jobs.

    With ``population="auto"``, points with no run directory under ``runs_dir`` whose configs
    :func:`~feedalign.training.population.unsupported` accepts are grouped by
    :func:`~feedalign.training.population.population_key`; a group of ``M >= 2`` becomes
    ``ceil(M / population_size)`` jobs of near-equal size, and the largest jobs are halved
    while there are fewer jobs than ``workers`` (no job smaller than 2). A point alone in its
    group, or with a run directory to resume, is a single-run job.
    """
    _check_population(population)
    if not isinstance(population_size, int) or isinstance(population_size, bool) or population_size < 2:
        raise ConfigError(f"population_size must be an integer >= 2; got {population_size!r}")
    groups: dict[tuple, list] = {}
    singles = []
    for p in points:
        if population == "auto" and not (runs_dir / p.key).exists() and unsupported(p.config) is None:
            groups.setdefault(population_key(p.config), []).append(p)
        else:
            singles.append(p)
    chunks = []
    for members in groups.values():
        if len(members) < 2:
            singles.extend(members)
            continue
        chunks.extend(_split(members, math.ceil(len(members) / population_size)))
    while len(chunks) + len(singles) < workers:
        largest = max(chunks, key=len, default=[])
        if len(largest) < 4:  # halves of 2 or more only
            break
        chunks.remove(largest)
        chunks.extend(_split(largest, 2))
    chunks.sort(key=len, reverse=True)  # the longest jobs first
    order = {p.key: i for i, p in enumerate(points)}
    singles.sort(key=lambda p: order[p.key])
    jobs = [population_job([training_job(p.config, runs_dir / p.key, key=p.key) for p in chunk]) for chunk in chunks]
    return jobs + [training_job(p.config, runs_dir / p.key, key=p.key) for p in singles]


def _check_population(population) -> None:
    if population not in POPULATION_MODES:
        raise ConfigError(f"population must be {' or '.join(POPULATION_MODES)}; got {population!r}")


def _split(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` consecutive slices whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def run_sweep(spec: SweepSpec, *, backend: str | None = None, address: str | None = None, workers: int | None = None,
              plot: bool = True, log=_stderr, population: str | None = None) -> SweepResult:
    """Run every unfinished run of ``spec`` and write the results table (and figures).

    ``population`` (``"auto"`` or ``"off"``) overrides ``spec.population``: see the module docstring. A sweep
    directory another sweep is running is refused (:class:`~feedalign.files.FolderLock`).
    """
    backend = backend or spec.backend
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; expected local or ray")
    population = spec.population if population is None else population
    _check_population(population)
    if backend == "ray":
        from .ray_backend import import_ray
        import_ray()  # fail before any run starts
    elif address:
        raise ConfigError("--address is for the ray backend; add --backend ray")
    points = spec.points()
    check_fit(points, spec.source)  # an unfit architecture fails here, not in every run
    sweep_dir = spec.sweep_dir.resolve()
    runs_dir = sweep_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    # One sweep per folder: a second one would hand the same runs to workers of its own and rewrite the table.
    with FolderLock(sweep_dir, "sweep directory"):
        return _run_locked(spec, sweep_dir, runs_dir, points, backend=backend, address=address, workers=workers,
                           plot=plot, log=log, population=population)


def _run_locked(spec: SweepSpec, sweep_dir: Path, runs_dir: Path, points: list, *, backend: str, address, workers,
                plot: bool, log, population: str) -> SweepResult:
    atomic_write(sweep_dir / "spec.json", json.dumps(spec.to_dict(), indent=1, default=str) + "\n")
    swept = spec.swept
    previous = {}
    if (sweep_dir / "results.json").is_file():
        try:
            previous = {r.get("hash"): r for r in read_results(sweep_dir)[0] if r.get("status") == "done"}
        except (ValueError, KeyError):
            previous = {}

    rows: dict[str, dict] = {}
    todo = []
    for p in points:
        run_dir = runs_dir / p.key
        summary = _finished(run_dir, p.hash)
        if summary is not None:
            old = previous.get(p.hash, {})
            rows[p.key] = make_row(p, run_dir, summary, status="done", seconds=old.get("seconds"),
                                   attempts=old.get("attempts", 1), population=old.get("population"))
        elif p.hash in previous and not run_dir.exists():  # finished on a Ray node whose disk we do not see
            rows[p.key] = {**previous[p.hash], **p.params}
        else:
            todo.append(p)
    skipped = len(rows)
    by_key = {p.key: p for p in points}

    def table():
        return [rows[p.key] for p in points if p.key in rows]

    def on_done(job, summary, status, seconds, attempts, error, curve=None):
        p = by_key[job["key"]]
        rows[p.key] = make_row(p, Path(job["run_dir"]), summary, status=status, seconds=seconds, attempts=attempts,
                               error=error, curve=curve, population=job.get("population"))
        write_results(sweep_dir, table(), swept)
        n = sum(1 for k in rows if k in {q.key for q in todo})
        acc = rows[p.key]["best_val_accuracy"]
        log(f"sweep: [{n}/{len(todo)}] {p.key} {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in p.params.items())}"
            f" -> {rows[p.key]['outcome']}" + (f" (best val acc {acc:.3f})" if isinstance(acc, (int, float)) else "")
            + (f" [in {job['population']}]" if job.get("population") else "")
            + (f": {error}" if error else ""))

    write_results(sweep_dir, table(), swept)
    log(f"sweep {spec.name}: {len(points)} runs, {skipped} already finished, {len(todo)} to run "
        f"({backend} backend) in {sweep_dir}")
    t0 = time.perf_counter()
    if todo:
        if backend == "local":
            n_workers = workers or spec.workers or default_workers(spec.threads_per_run)
            jobs = plan_jobs(todo, runs_dir, population=population, population_size=spec.population_size,
                             workers=n_workers)
            log(f"sweep: {n_workers} worker process(es), {spec.threads_per_run} thread(s) per run")
            batched = [len(job["members"]) for job in jobs if "members" in job]
            if batched:
                log(f"sweep: {sum(batched)} run(s) train as {len(batched)} population(s) of "
                    f"{', '.join(map(str, batched))}; {len(jobs) - len(batched)} run(s) train alone")
            run_local(jobs, workers=n_workers, threads=spec.threads_per_run, retries=spec.retries, sweep_dir=sweep_dir,
                      on_done=on_done, log=log)
        else:  # Ray trials train one run each
            from .ray_backend import run_ray
            jobs = [training_job(p.config, runs_dir / p.key, key=p.key) for p in todo]
            run_ray(jobs, address=address, threads=spec.threads_per_run, retries=spec.retries, sweep_dir=sweep_dir,
                    name=spec.name, on_done=on_done, log=log, max_concurrent=workers or spec.workers)
    final = table()
    write_results(sweep_dir, final, swept)
    log(f"sweep {spec.name}: done in {time.perf_counter() - t0:.1f}s; results in {sweep_dir / 'results.csv'}")
    figures = []
    if plot:
        figures = plot_sweep(sweep_dir, pairs=spec.plot or None)
        if figures:
            log(f"sweep: {len(figures)} figure(s) in {sweep_dir / 'figures'}")
    return SweepResult(sweep_dir, final, swept, ran=len(todo), skipped=skipped, figures=figures)
