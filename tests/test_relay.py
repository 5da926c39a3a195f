"""scripts/relay.py: a reproduction's finished runs carried to a fresh runs folder resume it without training."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from feedalign.experiments import run_experiment

_spec = importlib.util.spec_from_file_location("relay", Path(__file__).resolve().parents[1] / "scripts" / "relay.py")
relay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay)


def test_finished_runs_travel_and_resume_without_training(tmp_path):
    first = tmp_path / "machine1"
    done = run_experiment("nonlinear", quick=True, out=first, seeds=1, workers=1, witness=False, log=lambda *a: None)
    runs = list(relay.finished_runs(first))
    assert runs and any("search" in r.parts for r in runs)  # the settings search travels too
    unfinished = runs[0].parent / "zz-unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text("")
    (runs[0] / "checkpoints").mkdir(exist_ok=True)
    (runs[0] / "checkpoints" / "latest.pt").write_bytes(b"x")

    assert relay.main(["save", str(first), str(tmp_path / "relay"), "--commit", "a" * 40]) == 0
    manifest = json.loads((tmp_path / "relay" / relay.MANIFEST).read_text())
    assert manifest["commit"] == "a" * 40 and manifest["finished_runs"] == {"nonlinear": len(runs)}
    carried = tmp_path / "relay" / runs[0].relative_to(first)
    assert not (carried / "checkpoints").exists()  # no checkpoints: a finished run does not need them
    assert not (tmp_path / "relay" / unfinished.relative_to(first)).exists()

    second = tmp_path / "machine2"
    assert relay.main(["load", str(tmp_path / "relay"), str(second)]) == 0
    lines = []
    again = run_experiment("nonlinear", quick=True, out=second, seeds=1, workers=1, witness=False, log=lines.append)
    assert not any("worker process" in line for line in lines)  # nothing trained again, search included

    def numbers(runs):  # every number of every run; run_dir names the machine's folder; NaN == NaN as text
        return json.dumps([{label: {k: v for k, v in h.items() if k != "run_dir"} for label, h in seed.items()}
                           for seed in runs], sort_keys=True)
    assert numbers(again["runs"]) == numbers(done["runs"])
    assert json.dumps(again["search"]) == json.dumps(done["search"])


def test_a_relay_of_another_commit_is_refused(tmp_path):
    root = tmp_path / "runs" / "x" / "runs-k" / "r"
    root.mkdir(parents=True)
    (root / "summary.json").write_text("{}")
    assert relay.main(["save", str(tmp_path / "runs"), str(tmp_path / "relay"), "--commit", "a" * 40]) == 0
    with pytest.raises(SystemExit, match="holds runs of commit aaaaaaaaaaaa"):
        relay.main(["save", str(tmp_path / "runs"), str(tmp_path / "relay"), "--commit", "b" * 40])
