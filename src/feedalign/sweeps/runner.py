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
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write
from .results import make_row, read_results, write_results
from .spec import SweepSpec, check_fit, config_hash


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
        from ..training.config import Config
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


def run_sweep(spec: SweepSpec, *, backend: str | None = None, address: str | None = None, workers: int | None = None,
              plot: bool = True, log=_stderr) -> SweepResult:
    """Run every unfinished run of ``spec`` and write the results table (and figures)."""
    from .local import default_workers, run_local, training_job
    backend = backend or spec.backend
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; expected local or ray")
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
                                   attempts=old.get("attempts", 1))
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
                               error=error, curve=curve)
        write_results(sweep_dir, table(), swept)
        n = sum(1 for k in rows if k in {q.key for q in todo})
        acc = rows[p.key]["best_val_accuracy"]
        log(f"sweep: [{n}/{len(todo)}] {p.key} {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in p.params.items())}"
            f" -> {rows[p.key]['outcome']}" + (f" (best val acc {acc:.3f})" if isinstance(acc, (int, float)) else "")
            + (f": {error}" if error else ""))

    write_results(sweep_dir, table(), swept)
    log(f"sweep {spec.name}: {len(points)} runs, {skipped} already finished, {len(todo)} to run "
        f"({backend} backend) in {sweep_dir}")
    jobs = [training_job(p.config, runs_dir / p.key, key=p.key) for p in todo]
    t0 = time.perf_counter()
    if jobs:
        if backend == "local":
            n_workers = workers or spec.workers or default_workers(spec.threads_per_run)
            log(f"sweep: {n_workers} worker process(es), {spec.threads_per_run} thread(s) per run")
            run_local(jobs, workers=n_workers, threads=spec.threads_per_run, retries=spec.retries, sweep_dir=sweep_dir,
                      on_done=on_done, log=log)
        else:
            from .ray_backend import run_ray
            run_ray(jobs, address=address, threads=spec.threads_per_run, retries=spec.retries, sweep_dir=sweep_dir,
                    name=spec.name, on_done=on_done, log=log, max_concurrent=workers or spec.workers)
    final = table()
    write_results(sweep_dir, final, swept)
    log(f"sweep {spec.name}: done in {time.perf_counter() - t0:.1f}s; results in {sweep_dir / 'results.csv'}")
    figures = []
    if plot:
        from .plots import plot_sweep
        figures = plot_sweep(sweep_dir, pairs=spec.plot or None)
        if figures:
            log(f"sweep: {len(figures)} figure(s) in {sweep_dir / 'figures'}")
    return SweepResult(sweep_dir, final, swept, ran=len(todo), skipped=skipped, figures=figures)
