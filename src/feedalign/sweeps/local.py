"""Local backend: a pool of worker processes, each pinned to ``threads`` torch threads.

Each worker is ``python -m feedalign.sweeps.worker --serve THREADS`` (a fresh
interpreter, so nothing leaks from the sweep process) and trains the runs it is
handed one at a time; ``workers`` of them run at once. A worker that dies
(SIGKILL, segfault, out of memory) loses only its own run: a new worker takes its
place and the run is started again up to ``retries`` more times (a run directory
it left is continued from its last checkpoint). On
Linux each worker gets SIGKILL when the sweep process dies, so killing the sweep
leaves no orphans; rerunning the spec picks up where it stopped.

A population job (:func:`population_job`) trains its member runs as one batched model in
one worker. It is never retried as a population: when it ends, each member with a
summary.json is done and every other member (the job failed, or its worker died) goes
back in the queue as a single-run job, which resumes from the checkpoints the population
left and gets ``retries`` more attempts of its own; its attempt count includes the
population's.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from ..files import atomic_write
from ..training import Config
from .spec import config_hash


def training_job(config, run_dir: Path, **extra) -> dict:
    """One unit of work for :func:`run_local` and the Ray backend: train ``config`` (a Config) into
    ``run_dir``; ``key`` is the run's name, ``hash`` lets a worker recognise a run it may resume."""
    return {"key": config.name or Path(run_dir).name, "hash": config_hash(config), "config": config.to_dict(),
            "run_dir": str(run_dir), **extra}


def finished(job: dict) -> bool:
    """Whether a run job's directory holds its finished run: a summary.json under a config.toml of the job's
    settings. A finished run of other settings (one carried in from another run folder, say) is not the job's:
    the worker starts that job over."""
    run_dir = Path(job["run_dir"])
    if not (run_dir / "summary.json").is_file():
        return False
    try:
        return config_hash(Config.from_file(run_dir / "config.toml")) == job["hash"]
    except (OSError, ValueError):  # no config.toml, or one too broken to read
        return False


def population_job(members: list[dict]) -> dict:
    """One job that trains ``members`` (:func:`training_job` dicts of runs that share a
    :func:`~feedalign.training.population.population_key`) as one population; its key names
    the job's log and job files."""
    if len(members) < 2:
        raise ValueError(f"a population job needs at least two runs; got {len(members)}")
    return {"key": f"population-{members[0]['key']}-x{len(members)}", "members": list(members)}


def _summary(job: dict) -> dict | None:
    """A run job's summary.json, or None while it has none."""
    try:
        return json.loads((Path(job["run_dir"]) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def default_workers(threads_per_run: int) -> int:
    """CPUs this process may use, divided by the threads of each run (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, threads_per_run))


def _die_with_parent():  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding `feedalign`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class _Worker:
    def __init__(self, env: dict, threads: int, preexec):
        self.proc = subprocess.Popen([sys.executable, "-m", "feedalign.sweeps.worker", "--serve", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, preexec_fn=preexec, text=True, bufsize=1)
        self.job = None  # (job, attempt, t0, log_file)

    def give(self, job_file: Path, item: tuple) -> None:
        self.job = item
        self.proc.stdin.write(f"{job_file}\n")
        self.proc.stdin.flush()


def run_local(jobs: list[dict], *, workers: int, threads: int, retries: int, sweep_dir: Path, on_done, log) -> None:
    """Run ``jobs``: run jobs (:func:`training_job`: key, hash, config, run_dir) and population jobs
    (:func:`population_job`). Call ``on_done(job, summary, status, seconds, attempts, error)`` once per
    run; for a run trained in a population, ``job`` is its member job with ``population`` set to the
    population job's key, and ``seconds`` its 1/N share of the job's wall time."""
    jobs_dir, logs_dir = sweep_dir / "jobs", sweep_dir / "logs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    env = _child_env(threads)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    pending = deque((job, 1, 1 + retries) for job in jobs)  # (job, this attempt, its last allowed attempt)
    pool: list[_Worker] = []
    sel = selectors.DefaultSelector()

    def retry_or_fail(job, attempt, last, seconds, log_file, why):
        if attempt < last:
            log(f"sweep: run {job['key']} failed ({why}); retrying (attempt {attempt + 1} of {last})")
            with open(log_file, "a") as f:
                f.write(f"--- {why}; retrying ---\n")
            pending.append((job, attempt + 1, last))
        else:
            on_done(job, None, "crashed", seconds, attempt, f"{why} on all {attempt} attempts; see {log_file}")

    def population_ended(job, attempt, seconds, log_file, why):
        """Finished members are done; the others go on as single runs (why: None when the job answered done)."""
        members, left = job["members"], []
        for member in members:
            summary = _summary(member)
            if summary is None:
                left.append(member)
            else:
                on_done({**member, "population": job["key"]}, summary, "done", seconds / len(members), attempt, None)
        if not left:
            return
        why = why or "it ended without their summary.json"
        log(f"sweep: population {job['key']} failed ({why}); its {len(left)} unfinished run(s) go on as single runs")
        for member in left:
            with open(logs_dir / f"{member['key']}.log", "a") as f:
                f.write(f"--- population {job['key']} failed ({why}; see {log_file.name}); "
                        f"continuing as a single run ---\n")
            pending.append((member, attempt + 1, attempt + 1 + retries))

    try:
        while pending or any(w.job for w in pool):
            # hand out work, starting workers as needed (and replacing dead ones)
            for w in [w for w in pool if w.job is None and w.proc.poll() is not None]:
                sel.unregister(w.proc.stdout)
                pool.remove(w)
            idle = [w for w in pool if w.job is None]
            while pending and (idle or len(pool) < workers):
                if idle:
                    w = idle.pop()
                else:
                    w = _Worker(env, threads, preexec)
                    pool.append(w)
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                job, attempt, last = pending.popleft()
                log_file = logs_dir / f"{job['key']}.log"
                with open(log_file, "a") as f:
                    f.write(f"--- attempt {attempt} (worker pid {w.proc.pid}) ---\n")
                for member in job.get("members", ()):
                    with open(logs_dir / f"{member['key']}.log", "a") as f:
                        f.write(f"--- attempt {attempt}: in population {job['key']} (worker pid {w.proc.pid}); "
                                f"its output is in {log_file.name} ---\n")
                job_file = jobs_dir / f"{job['key']}.json"
                atomic_write(job_file, json.dumps({**job, "threads": threads, "log": str(log_file)}))
                try:
                    w.give(job_file, (job, attempt, last, time.perf_counter(), log_file))
                except (BrokenPipeError, OSError):
                    pass  # died meanwhile: seen as EOF below
            for key, _ in sel.select(timeout=0.5):
                w = key.data
                line = w.proc.stdout.readline()
                if not w.job:
                    if not line:
                        sel.unregister(w.proc.stdout)
                    continue
                job, attempt, last, t0, log_file = w.job
                seconds = time.perf_counter() - t0
                if not line:  # EOF: the worker died with the run
                    rc = w.proc.wait()
                    sel.unregister(w.proc.stdout)
                    pool.remove(w)
                    w.job = None
                    if "members" in job:
                        population_ended(job, attempt, seconds, log_file, f"worker {_describe(rc)}")
                    else:
                        retry_or_fail(job, attempt, last, seconds, log_file, f"worker {_describe(rc)}")
                    continue
                w.job = None
                answer = json.loads(line)
                if "members" in job:
                    why = None if answer["status"] == "done" else (answer.get("error") or "population failed")
                    population_ended(job, attempt, seconds, log_file, why)
                    continue
                summary = _summary(job) if answer["status"] == "done" else None
                if summary is not None:
                    on_done(job, summary, "done", seconds, attempt, None)
                elif answer["status"] == "invalid":
                    on_done(job, None, "invalid", seconds, attempt, answer.get("error"))
                else:
                    retry_or_fail(job, attempt, last, seconds, log_file, answer.get("error") or "run failed")
    finally:
        for w in pool:  # done or interrupted: stop our own workers, by pid
            try:
                w.proc.stdin.close()
            except OSError:
                pass
        for w in pool:
            try:
                w.proc.wait(timeout=2 if w.job is None else 0.1)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
