"""Local sweeps: a SIGKILLed sweep resumes without redoing or losing runs; a killed worker is retried once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPEC = """
name = "resume"
out_dir = "{out}"
workers = 1
population = "off"  # single runs, killed and resumed one by one (tests/test_sweep_population.py: populations)
[base]
dataset = "mnist1d"
architecture = "40-8-10"
epochs = 1
batch_size = 256
[grid]
rule = ["bp", "fa"]
lr = [0.05, 0.2]
"""


def sweep_cmd(spec, *extra):
    return [sys.executable, "-m", "feedalign", "sweep", str(spec), "--no-plot", *extra]


def finished(sweep_dir: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/summary.json")}


def test_killed_sweep_resumes_and_killed_worker_is_retried(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(out=tmp_path / "out"))
    sweep_dir = tmp_path / "out" / "resume"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(sweep_cmd(spec), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(finished(sweep_dir)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done_before = finished(sweep_dir)
    assert 1 <= len(done_before) < 4
    summaries = {k: (sweep_dir / "runs" / k / "summary.json").read_text() for k in done_before}
    time.sleep(0.5)  # the dead sweep's worker is gone too (PR_SET_PDEATHSIG): nothing finishes meanwhile
    assert finished(sweep_dir) == done_before

    # rerun; a worker SIGKILLs itself on each run's first try (tests/kill_once): each lost run is retried once
    faults = tmp_path / "faults"
    kill_once = str(Path(__file__).parent / "kill_once")
    rerun = subprocess.run(sweep_cmd(spec), env={**env, "FEEDALIGN_TEST_KILL_ONCE_DIR": str(faults),
                                                 "PYTHONPATH": os.pathsep.join([kill_once, env["PYTHONPATH"]])},
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert f"{len(done_before)} already finished" in rerun.stderr
    assert "SIGKILL" in rerun.stderr and "retrying" in rerun.stderr
    after = finished(sweep_dir)
    assert len(after) == 4  # no run lost
    for key, mtime in done_before.items():  # no finished run redone
        assert after[key] == mtime
        assert (sweep_dir / "runs" / key / "summary.json").read_text() == summaries[key]
    rows = json.loads((sweep_dir / "results.json").read_text())["runs"]
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    assert {r["outcome"] for r in rows} <= {"trained", "refused", "collapsed", "diverged"}
    retried = [r for r in rows if r["key"] not in done_before]
    assert retried and all(r["attempts"] == 2 for r in retried)
    killed = {p.name for p in faults.iterdir()}
    assert killed == {r["key"] for r in retried}
    header = (sweep_dir / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("rule", "lr", "best_val_accuracy", "test_error", "outcome", "outcome_epoch", "seconds"):
        assert column in header

    # a third run redoes nothing, and (without --no-plot) draws the figures from the table
    third = subprocess.run([sys.executable, "-m", "feedalign", "sweep", str(spec)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert third.returncode == 0 and "4 already finished, 0 to run" in third.stderr, third.stderr[-1000:]
    assert finished(sweep_dir) == after
    figures = {p.name for p in (sweep_dir / "figures").iterdir()}
    assert {"heatmap-fa-lr-only.png", "best-curves.png"} <= figures
