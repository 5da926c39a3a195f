"""`feedalign reproduce --verify`: a published result is carried over to new code only when its witness replays."""
from __future__ import annotations

import json

import pytest

from feedalign.cli import main
from feedalign.experiments import base, run_experiment
from feedalign.experiments.summary import collect, publish_report, verify_published
from feedalign.experiments.witness import TOLERANCE, compute_witness, first_difference


def test_settings_compare_as_results_json_holds_them():
    from feedalign.experiments.witness import settings_changed
    config = {"epochs": {1: 25}, "lr": 0.5, "size": "full"}
    assert settings_changed(config, json.loads(json.dumps(config))) == []
    assert settings_changed(config, {"epochs": {"1": 60}, "lr": 0.5}) == ["epochs", "size"]


def test_first_difference_names_the_first_disagreement():
    stored = {"values": [{"state": {"w": [1.0, 2.0]}, "test_accuracy": 0.5, "label": "FA"}]}
    assert first_difference(stored, json.loads(json.dumps(stored))) is None
    close = {"values": [{"state": {"w": [1.0 * (1 + TOLERANCE / 10), 2.0]}, "test_accuracy": 0.5, "label": "FA"}]}
    assert first_difference(stored, close) is None  # float rounding of another CPU
    far = {"values": [{"state": {"w": [1.0, 2.0 * (1 + 10 * TOLERANCE)]}, "test_accuracy": 0.5, "label": "FA"}]}
    assert first_difference(stored, far).startswith("/values[0]/state/w[1]: 2.0 -> 2.00002")
    assert first_difference(stored, {"values": []}) == "/values: 1 entries -> 0"
    renamed = {"values": [{"state": {"w": [1.0, 2.0]}, "test_accuracy": 0.5, "label": "DFA"}]}
    assert first_difference(stored, renamed) == "/values[0]/label: 'FA' -> 'DFA'"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "/b: 'missing' -> 2"
    assert first_difference({"a": float("nan")}, {"a": float("nan")}) is None
    assert first_difference({"a": True}, {"a": 1}) == "/a: True -> 1"


def _publish(name, out, docs, **kwargs):
    results = run_experiment(name, quick=True, out=out, seeds=1, witness=True, log=lambda *a: None, **kwargs)
    publish_report(out / name, docs / "reports" / name)
    return results


def _read(docs, name):
    return json.loads((docs / "reports" / name / "results.json").read_text())


@pytest.mark.slow
def test_verify_carries_a_result_over_to_new_code_only_when_its_witness_replays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, docs = tmp_path / "runs", tmp_path / "docs"
    made = _publish("toy1d", out, docs)
    assert made["witness"]["kind"] == "every number of the quick size" and made["witness"]["values"]
    quiet = dict(out=out, quick=True, log=lambda *a: None)
    assert verify_published(docs, ["toy1d"], **quiet) == {"toy1d": "current"}

    monkeypatch.setattr(base, "package_hash", lambda root=None: "new-code")  # any edit of any module
    toy = type(base.get_experiment("toy1d"))
    monkeypatch.setattr(toy, "deviations", lambda self, config: ["a note written since"])
    assert [current for name, _, current in collect(out, True, 1, docs / "reports") if name == "toy1d"] == [False]
    # regenerating the page never copies the stale local result (under runs/) over the published one
    published = docs / "reports" / "toy1d" / "results.json"
    published.write_text(json.dumps({**json.loads(published.read_text()), "note": "published"}))
    before = published.read_text()
    assert verify_published(docs, ["linear"], **quiet) == {"linear": "not published"}
    assert published.read_text() == before
    assert verify_published(docs, ["toy1d"], **quiet) == {"toy1d": "verified"}
    verified = _read(docs, "toy1d")
    assert verified["key"] == base.result_key(base.get_experiment("toy1d"), base.experiment_config("toy1d", True, 1))
    assert verified["produced_by"] == made["package_hash"] and verified["package_hash"] == "new-code"
    assert verified["claims"] == made["claims"] and verified["runs"] == made["runs"]  # the numbers are untouched
    assert verified["deviations"] == ["a note written since"]  # the current code's account of the settings
    report = (docs / "reports" / "toy1d" / "report.md").read_text()
    assert f"Produced by the code with source hash {made['package_hash']}" in report
    assert "](../../figures/toy1d-trajectories.png)" in report
    page = (docs / "reproduction.md").read_text()
    assert "feedalign reproduce --verify" in page and "Produced by the code" in page
    # the published (verified) copy is current and wins over the stale local one under runs/
    assert [current for name, _, current in collect(out, True, 1, docs / "reports") if name == "toy1d"] == [True]

    # the code now computes something else: the result stays stale and the difference is named
    tampered = dict(verified, witness=dict(verified["witness"]))
    tampered["witness"]["values"] = json.loads(json.dumps(verified["witness"]["values"]))
    tampered["witness"]["values"][0]["bp"]["paths"][0][1][0] += 0.5
    (docs / "reports" / "toy1d" / "results.json").write_text(json.dumps(tampered))
    monkeypatch.setattr(base, "package_hash", lambda root=None: "newer-code")
    status = verify_published(docs, ["toy1d"], **quiet)["toy1d"]
    assert status.startswith("stale: the code now computes something else ([0]/bp/paths[0][1][0]: ")
    assert _read(docs, "toy1d")["key"] == verified["key"]  # left as it was

    # settings changed: no replay can carry the result over
    original = base.experiment_config
    monkeypatch.setattr(base, "experiment_config",
                        lambda name, quick, seeds=None: {**original(name, quick, seeds), "steps": -1})
    assert verify_published(docs, ["toy1d"], **quiet)["toy1d"] == \
        "stale: the experiment's settings changed (steps); rerun it"


@pytest.mark.slow
def test_training_experiment_witness_is_the_first_steps_of_every_run(tmp_path, monkeypatch, mnist):
    config = base.experiment_config("mnist-fa", True, 1)
    witness = compute_witness("mnist-fa", config, steps=3)
    assert [(v["label"], v["seed"], v["step"]) for v in witness["values"]] == [
        ("BP", 0, 3), ("FA", 0, 3), ("shallow", 0, 3)]
    fa = witness["values"][1]
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(fa["state"])
    assert any("feedback" in name for name in fa["state"])  # the fixed B's are part of it
    assert 0 < fa["test_accuracy"] < 1 and fa["test_loss"] > 0
    assert compute_witness("mnist-fa", config, steps=3)["values"] == witness["values"]  # deterministic
    # a change of the numbers (here: one more step) is seen
    assert first_difference(witness["values"], compute_witness("mnist-fa", config, steps=4)["values"])

    monkeypatch.chdir(tmp_path)
    out, docs = tmp_path / "runs", tmp_path / "docs"
    _publish("mnist-fa", out, docs)
    monkeypatch.setattr(base, "package_hash", lambda root=None: "new-code")
    assert main(["reproduce", "--verify", "mnist-fa", "--docs", str(docs)]) == 0
    assert _read(docs, "mnist-fa")["verified"][-1]["witness"] == "first 20 steps of every run"


def test_verify_cli_errors(tmp_path, capsys):
    assert main(["reproduce", "--verify", "no-such", "--docs", str(tmp_path)]) == 2
    assert "unknown experiment 'no-such'" in capsys.readouterr().err
    assert main(["reproduce", "--verify", "--quick", "--docs", str(tmp_path)]) == 2
    assert "--verify checks the published" in capsys.readouterr().err
