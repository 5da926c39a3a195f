"""Sweep workers: ``python -m feedalign.sweeps.worker --serve THREADS`` runs the jobs named on its stdin.

The local backend keeps a pool of these processes (imports paid once per worker,
not once per run). For each line (a job file path) on stdin the worker sends the
run's output to the job's log file, trains, and answers one JSON line
``{"key", "status": "done"|"invalid"|"error", "error"}`` on its stdout.

The job file holds the run's Config (as a dict), its run directory and its thread
count. The run directory is an ordinary one (``feedalign.training.train``); a run
directory left by a killed worker (config.toml but no summary.json) is continued
with ``feedalign.training.resume`` from its last checkpoint.

A population job (:func:`feedalign.sweeps.local.population_job`) names several such runs
(``members``): the worker trains those that have no run directory yet as one population
(:func:`feedalign.training.population.train_population`, each member's data loaded for its
own seed, since the validation split depends on it) and leaves the rest, finished or partly
trained, to the sweep, which sees which members have a summary.json.

``invalid`` is an error in the run's settings or data (:class:`feedalign.errors.FeedalignError`:
the same on every try, not retried); ``error`` any other exception (retried like a worker that died).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch

from ..errors import FeedalignError, first_line
from ..training.build import load_data
from ..training.config import Config
from ..training.engine import resume, train
from ..training.population import train_population
from .local import finished
from .spec import config_hash


def pin_threads(threads: int) -> None:
    """Limit this process's torch (and OpenMP/MKL) to ``threads`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, threads))
    except RuntimeError:  # already set (or parallel work already started) in this process
        pass


def _config(job: dict, threads: int):
    """The run job's Config, writing into its run directory with ``threads`` threads."""
    run_dir = Path(job["run_dir"])
    values = dict(job["config"])
    values.update(out_dir=str(run_dir.parent), name=run_dir.name, threads=threads)
    return Config.from_dict(values, source="sweep job")


def run_job(job: dict) -> dict:
    """Train (or finish) one run; return its summary.json as a dict."""

    pin_threads(int(job.get("threads") or 1))
    run_dir = Path(job["run_dir"])
    config = _config(job, int(job.get("threads") or 1))
    if finished(job):
        return json.loads((run_dir / "summary.json").read_text())
    if run_dir.exists():
        ok = False
        if (run_dir / "config.toml").is_file() and not (run_dir / "summary.json").is_file():
            try:
                ok = config_hash(Config.from_file(run_dir / "config.toml")) == job["hash"]
            except ValueError:  # a config error, or a file too broken to decode
                ok = False
        if ok:
            return resume(run_dir, progress="lines").summary
        shutil.rmtree(run_dir)  # not a run of this config, or too broken to read: start over
    return train(config, progress="lines").summary


def run_population_job(job: dict) -> list[dict]:
    """Train the members of population job ``job`` that have no run directory yet as one population
    (one alone trains as a single run); return the summaries of the members trained."""

    threads = int(job.get("threads") or 1)
    pin_threads(threads)
    fresh = [member for member in job["members"] if not Path(member["run_dir"]).exists()]
    if len(fresh) == 1:
        return [run_job({**fresh[0], "threads": threads})]
    configs = [_config(member, threads) for member in fresh]
    data: dict = {}
    for config in configs:  # of the fields members may differ in, the data depends on the seed alone
        if config.seed not in data:
            data[config.seed] = load_data(config)
    print(f"feedalign sweep worker: {job['key']}: training {len(configs)} runs as one population", file=sys.stderr)
    results = train_population(configs, [data[c.seed] for c in configs], progress="lines") if configs else []
    return [result.summary for result in results]


def serve(threads: int) -> int:
    pin_threads(threads)
    proto = os.fdopen(os.dup(1), "w")  # the answer channel; fds 1 and 2 go to each job's log
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(Path(line.strip()).read_text())
        log = open(job["log"], "a")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        status, error = "done", None
        try:
            if "members" in job:
                for summary in run_population_job(job):
                    print(f"feedalign sweep worker: {job['key']}: {Path(summary['run_dir']).name} "
                          f"{summary.get('outcome')} best val acc {summary.get('best_val_accuracy')}", file=sys.stderr)
            else:
                summary = run_job(job)
                print(f"feedalign sweep worker: {job['key']} {summary.get('outcome')} "
                      f"best val acc {summary.get('best_val_accuracy')}", file=sys.stderr)
        except FeedalignError as err:  # settings or data (dataset, architecture fit, ...): the same every time
            status, error = "invalid", first_line(err)
            print(f"feedalign sweep worker: invalid run: {error}", file=sys.stderr)
        except Exception as err:  # noqa: BLE001 - reported, and the run retried
            traceback.print_exc()
            status, error = "error", f"{type(err).__name__}: {err}".splitlines()[0]
        sys.stdout.flush()
        sys.stderr.flush()
        log.close()
        proto.write(json.dumps({"key": job["key"], "status": status, "error": error}) + "\n")
        proto.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--serve":
        print("usage: python -m feedalign.sweeps.worker --serve THREADS", file=sys.stderr)
        return 2
    return serve(int(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
