"""Sweeps that train runs as populations (feedalign.sweeps.runner.plan_jobs, the worker's population jobs):
the numbers of separate runs, both kinds in one sweep, a killed population's runs finished alone, nothing redone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedalign.cli import main
from feedalign.errors import ConfigError
from feedalign.sweeps import spec_from_dict
from feedalign.sweeps.runner import plan_jobs

SPEC = """
name = "{name}"
out_dir = "{out}"
workers = 1
retries = 0
[base]
dataset = "mnist1d"
architecture = "40-8-10"
epochs = 2
batch_size = 256
[grid]
rule = {rules}
seed = [0, 1]
lr = [0.1]
"""


def _points(rules, seeds, lrs=(0.1,)):
    spec = spec_from_dict({"base": {"dataset": "mnist1d", "architecture": "40-8-10"},
                           "grid": {"rule": list(rules), "seed": list(seeds), "lr": list(lrs)}})
    return spec.points()


def _sizes(jobs):
    return [len(job["members"]) if "members" in job else 1 for job in jobs]


def _keys(jobs):
    return sorted(k for job in jobs for k in ([m["key"] for m in job["members"]] if "members" in job else [job["key"]]))


def test_plan_groups_shareable_runs_caps_and_balances(tmp_path):
    points = _points(["dfa", "dtp", "bp"], range(5), (0.05, 0.2))  # 10 runs per rule
    jobs = plan_jobs(points, tmp_path, population_size=4, workers=2)
    assert _sizes(jobs) == [4, 4, 3, 3, 3, 3] + [1] * 10  # dfa and bp: 10 = 4 + 3 + 3; dtp alone
    assert _keys(jobs) == sorted(p.key for p in points)  # every run once
    for job in jobs:
        rules = {m["config"]["rule"] for m in job.get("members", [job])}
        assert len(rules) == 1 and (("members" in job) == (rules != {"dtp"}))
    # 8 dfa runs and 4 workers: the one population of 8 is halved until every worker has a job
    dfa = _points(["dfa"], range(4), (0.05, 0.2))
    assert _sizes(plan_jobs(dfa, tmp_path, workers=4)) == [2, 2, 2, 2]
    assert _sizes(plan_jobs(dfa, tmp_path, workers=1)) == [8]
    assert _sizes(plan_jobs(dfa, tmp_path, population="off")) == [1] * 8
    # a run with a run directory (partly trained) resumes alone; a group of one is a single run
    (tmp_path / dfa[0].key).mkdir()
    assert _sizes(plan_jobs(dfa[:3], tmp_path)) == [2, 1]
    assert "members" not in plan_jobs(dfa[:3], tmp_path)[1] and plan_jobs(dfa[:3], tmp_path)[1]["key"] == dfa[0].key
    with pytest.raises(ConfigError, match="population must be auto or off"):
        plan_jobs(dfa, tmp_path, population="on")
    with pytest.raises(ConfigError, match="population_size must be an integer >= 2"):
        plan_jobs(dfa, tmp_path, population_size=1)


@pytest.mark.parametrize("line,message", [
    ('population = "sometimes"', "population must be one of auto, off; got 'sometimes'"),
    ("population = false", "population must be one of auto, off; got False"),
    ("population_size = 1", "population_size must be an integer >= 2; got 1"),
])
def test_bad_population_setting_is_one_line_exit_2(tmp_path, capsys, line, message):
    path = tmp_path / "spec.toml"
    path.write_text(f'{line}\n' + SPEC.format(name="bad", out=tmp_path / "out", rules='["dfa"]'))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedalign: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_cli_population_flags_are_checked(tmp_path, capsys):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(name="cli", out=tmp_path / "out", rules='["dfa"]'))
    for flags, message in ((["--population", "bogus"], "invalid choice: 'bogus'"),
                           (["--population-size", "1"], "--population-size must be at least 2")):
        assert main(["sweep", str(path), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("feedalign: error: ") and err.count("\n") == 1 and message in err, err
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "to run: 2 runs as 1 population(s) of 2, 0 run(s) alone" in capsys.readouterr().out
    assert main(["sweep", str(path), "--dry-run", "--population", "off"]) == 0
    assert "to run:" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def _rows(sweep_dir: Path) -> dict:
    return {r["key"]: r for r in json.loads((sweep_dir / "results.json").read_text())["runs"]}


def _summaries(sweep_dir: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/summary.json")}


@pytest.mark.slow
def test_population_sweep_matches_separate_runs_and_survives_a_killed_worker(tmp_path, capsys):
    out = tmp_path / "out"
    specs = {}
    for name, rules in (("auto", '["dfa", "dtp"]'), ("off", '["dfa", "dtp"]'), ("killed", '["dfa"]')):
        specs[name] = tmp_path / f"{name}.toml"
        specs[name].write_text(SPEC.format(name=name, out=out, rules=rules))

    # population auto (the default): the dfa seeds train as one population, dtp's alone
    assert main(["sweep", str(specs["auto"]), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "2 run(s) train as 1 population(s) of 2; 2 run(s) train alone" in err, err
    auto = _rows(out / "auto")
    jobs = {r["rule"]: r["population"] for r in auto.values()}
    assert jobs["dtp"] is None and jobs["dfa"].startswith("population-dfa-")
    assert [r["population"] for r in auto.values()].count(jobs["dfa"]) == 2
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in auto.values())
    assert "training 2 runs as one population" in (out / "auto" / "logs" / f"{jobs['dfa']}.log").read_text()
    assert (out / "auto" / "results.csv").read_text().splitlines()[0].endswith(",population")

    # the same sweep with --population off: every run alone, the same numbers to float tolerance
    assert main(["sweep", str(specs["off"]), "--no-plot", "--population", "off"]) == 0
    assert "population(s)" not in capsys.readouterr().err
    off = _rows(out / "off")
    assert sorted(off) == sorted(auto) and all(r["population"] is None for r in off.values())
    for key, row in off.items():
        for column in ("best_val_accuracy", "test_error", "final_test_error"):
            assert auto[key][column] == pytest.approx(row[column], abs=1e-4), (key, column)
        assert auto[key]["outcome"] == row["outcome"]

    # rerunning a finished sweep trains nothing
    before = _summaries(out / "auto")
    assert main(["sweep", str(specs["auto"]), "--no-plot"]) == 0
    assert "4 runs, 4 already finished, 0 to run" in capsys.readouterr().err
    assert _summaries(out / "auto") == before and _rows(out / "auto")[key]["population"] == auto[key]["population"]

    # a worker SIGKILLed in the population's second epoch (tests/kill_once): with retries = 0 its members
    # still finish, as single runs resumed from the population's epoch-1 checkpoints, with the same numbers
    faults = tmp_path / "faults"
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "FEEDALIGN_TEST_KILL_POPULATION_ONCE_DIR": str(faults),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "kill_once"), src])}
    killed = subprocess.run([sys.executable, "-m", "feedalign", "sweep", str(specs["killed"]), "--no-plot"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 0, killed.stderr[-1500:]
    assert [p.name for p in faults.iterdir()] == [jobs["dfa"].rsplit("-", 1)[0]]  # population-<first member>
    assert "failed (worker killed by SIGKILL); its 2 unfinished run(s) go on as single runs" in killed.stderr
    rows = _rows(out / "killed")
    assert sorted(rows) == sorted(k for k in off if k.startswith("dfa-"))
    for key, row in rows.items():
        assert row["status"] == "done" and row["population"] is None and row["attempts"] == 2
        assert row["best_val_accuracy"] == pytest.approx(off[key]["best_val_accuracy"], abs=1e-4), key
        assert row["test_error"] == pytest.approx(off[key]["test_error"], abs=1e-4), key
        log = (out / "killed" / "logs" / f"{key}.log").read_text()
        assert "continuing as a single run" in log and "resuming dfa" in log, log
