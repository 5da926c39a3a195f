"""Local backend: a pool of worker processes, each pinned to ``threads`` torch threads.

Each worker is ``python -m feedalign.sweeps.worker --serve THREADS`` (a fresh
interpreter, so nothing leaks from the sweep process) and trains the runs it is
handed one at a time; ``workers`` of them run at once. A worker that dies
(SIGKILL, segfault, out of memory) loses only its own run: a new worker takes its
place and the run is started again up to ``retries`` more times (a run directory
it left is continued from its last checkpoint). On
Linux each worker gets SIGKILL when the sweep process dies, so killing the sweep
leaves no orphans; rerunning the spec picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from ..files import atomic_write


def training_job(config, run_dir: Path, **extra) -> dict:
    """One unit of work for :func:`run_local` and the Ray backend: train ``config`` (a Config) into
    ``run_dir``; ``key`` is the run's name, ``hash`` lets a worker recognise a run it may resume."""
    from .spec import config_hash
    return {"key": config.name or Path(run_dir).name, "hash": config_hash(config), "config": config.to_dict(),
            "run_dir": str(run_dir), **extra}


def default_workers(threads_per_run: int) -> int:
    """CPUs this process may use, divided by the threads of each run (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, threads_per_run))


def _die_with_parent():  # runs in the child between fork and exec
    try:
        import ctypes
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
    """Run ``jobs`` (dicts with key, hash, config, run_dir); call ``on_done(job, summary, status, seconds, attempts, error)``."""
    import selectors
    jobs_dir, logs_dir = sweep_dir / "jobs", sweep_dir / "logs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    env = _child_env(threads)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    pending = deque((job, 1) for job in jobs)
    pool: list[_Worker] = []
    sel = selectors.DefaultSelector()

    def retry_or_fail(job, attempt, seconds, log_file, why):
        if attempt <= retries:
            log(f"sweep: run {job['key']} failed ({why}); retrying (attempt {attempt + 1} of {retries + 1})")
            with open(log_file, "a") as f:
                f.write(f"--- {why}; retrying ---\n")
            pending.append((job, attempt + 1))
        else:
            on_done(job, None, "crashed", seconds, attempt, f"{why} on all {attempt} attempts; see {log_file}")

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
                job, attempt = pending.popleft()
                log_file = logs_dir / f"{job['key']}.log"
                with open(log_file, "a") as f:
                    f.write(f"--- attempt {attempt} (worker pid {w.proc.pid}) ---\n")
                job_file = jobs_dir / f"{job['key']}.json"
                atomic_write(job_file, json.dumps({**job, "threads": threads, "log": str(log_file)}))
                try:
                    w.give(job_file, (job, attempt, time.perf_counter(), log_file))
                except (BrokenPipeError, OSError):
                    pass  # died meanwhile: seen as EOF below
            for key, _ in sel.select(timeout=0.5):
                w = key.data
                line = w.proc.stdout.readline()
                if not w.job:
                    if not line:
                        sel.unregister(w.proc.stdout)
                    continue
                job, attempt, t0, log_file = w.job
                seconds = time.perf_counter() - t0
                if not line:  # EOF: the worker died with the run
                    rc = w.proc.wait()
                    sel.unregister(w.proc.stdout)
                    pool.remove(w)
                    w.job = None
                    retry_or_fail(job, attempt, seconds, log_file, f"worker {_describe(rc)}")
                    continue
                w.job = None
                answer = json.loads(line)
                summary_path = Path(job["run_dir"]) / "summary.json"
                if answer["status"] == "done" and summary_path.is_file():
                    on_done(job, json.loads(summary_path.read_text()), "done", seconds, attempt, None)
                elif answer["status"] == "invalid":
                    on_done(job, None, "invalid", seconds, attempt, answer.get("error"))
                else:
                    retry_or_fail(job, attempt, seconds, log_file, answer.get("error") or "run failed")
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
