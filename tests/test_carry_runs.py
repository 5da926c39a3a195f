"""Finished runs carried into a new run folder: kept only where their settings are the new plan's own."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from feedalign.experiments import TrainingExperiment, base
from feedalign.experiments._training import _carried
from feedalign.sweeps.local import finished, training_job
from feedalign.training import Config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("carry_runs", ROOT / "scripts" / "carry_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tiny(TrainingExperiment):
    name = "tiny-carry"
    grid = (1e-3, 3e-3, 1e-2)
    default_seeds = {"quick": 1, "full": 1}

    def config(self, quick):
        return {"data": {"name": "mnist1d", "n_train": 1000, "n_val": 500, "n_test": 200}, "lr": 0.05,
                "search": {"learners": {"BP": [{"lr": lr} for lr in self.grid]}, "seeds": 1, "n_val": 500,
                           "pick": "final"}}

    def learners(self, config):
        return {"BP": {"architecture": "40-16-10", "rule": "bp", "optimizer": "sgd", "lr": config["lr"], "epochs": 1,
                       "batch_size": 50}}

    def summarize(self, config, runs, out):
        return [], []


def _execute(experiment, out):
    config = base.experiment_config(experiment.name, quick=True)
    key = base.result_key(experiment, config)
    experiment.execute(config, out / experiment.name, key=key, workers=1, log=lambda *a: None)
    return out / experiment.name / f"runs-{key}"


@pytest.mark.slow
def test_carried_runs_are_kept_only_where_their_settings_are_the_new_plans(tmp_path, monkeypatch):
    monkeypatch.setitem(base._REGISTRY, Tiny.name, Tiny)
    out = tmp_path / "runs"
    old = _execute(Tiny(), out)  # 3 search runs (1e-2 wins at the top edge) and the reported run at 1e-2
    moved = tmp_path / "old"
    old.rename(moved)  # the new key's execute would remove every other runs-* folder of the experiment
    monkeypatch.setattr(Tiny, "grid", (1e-3, 3e-3, 1e-2, 3e-2))  # the grid widened: a new key
    assert _script().carry(Tiny.name, moved, out, quick=True, log=lambda *a: None) == 4
    experiment = Tiny()
    new = _execute(experiment, out)
    assert new != old and (new / "search" / "00-bp-c3-seed0" / "summary.json").is_file()  # the new rate trained
    # 3e-2 beats 1e-2 after 20 steps, so the reported run's settings changed: the carried one was trained again
    assert experiment.last_search["chosen"]["BP"] == {"lr": 3e-2}
    reported = new / "00-bp-seed0"
    assert not (reported / "CARRIED").exists() and Config.from_file(reported / "config.toml").lr == 3e-2
    assert experiment.last_carried == {"runs": [f"search/00-bp-c{j}-seed0" for j in range(3)], "from": [moved.name]}
    assert _carried(new) == experiment.last_carried


def test_a_finished_run_of_other_settings_is_not_the_jobs(tmp_path):
    config = Config.from_dict({"dataset": "mnist1d", "architecture": "40-16-10", "lr": 0.01, "epochs": 1,
                               "out_dir": str(tmp_path), "name": "run"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(config.to_toml())
    (run_dir / "summary.json").write_text(json.dumps({"epochs_completed": 1}))
    assert finished(training_job(config, run_dir))
    assert not finished(training_job(config.replace(lr=0.02), run_dir))  # another learning rate: not this run
    assert finished(training_job(config.replace(threads=2, out_dir="elsewhere"), run_dir))  # not settings
    (run_dir / "config.toml").write_text("lr = [")
    assert not finished(training_job(config, run_dir))  # unreadable: trained again, never trusted


def test_carry_script_refuses_a_missing_folder(tmp_path, capsys):
    assert _script().main(["nokland-mnist", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
