"""`compare`'s figure: test error against optimizer steps (evaluated within epochs) beside the hidden
layers' signal angle to the true gradient, mean and spread over seeds."""
import json
import math

import pytest

from feedalign.cli import main
from feedalign.diagnostics.plots import hidden_signal_angle, error_curve

SMALL = ["--dataset", "mnist1d", "--architecture", "40-16-16-10", "--epochs", "1", "--threads", "1", "--quiet",
         "--rules", "bp,dfa", "--seeds", "2", "--alignment-every", "13"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluations_within_epochs_leave_the_runs_unchanged_and_feed_the_figure(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["compare", *SMALL, "--out-dir", out, "--name", "plain", "--population", "off"]) == 0
    assert main(["compare", *SMALL, "--out-dir", out, "--name", "evals", "--evals-per-epoch", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"figure: {tmp_path / 'evals' / 'error-and-alignment.png'}" in printed
    plain, evals = (json.loads((tmp_path / n / "compare.json").read_text()) for n in ("plain", "evals"))
    assert [r["test_errors"] for r in plain["rows"]] == [r["test_errors"] for r in evals["rows"]]  # bitwise
    run = tmp_path / "evals" / "dfa-seed1"
    summary = json.loads((run / "summary.json").read_text())
    per_epoch = summary["steps"]  # one epoch of 50 steps: every 13 steps, powers of two before, the epoch's end
    every = math.ceil(per_epoch / 4)
    expected = sorted({1, 2, 4, 8} | set(range(every, per_epoch + 1, every)) | {per_epoch})
    curve = error_curve(run)
    assert [step for step, _ in curve] == expected
    assert curve[-1][1] == pytest.approx(summary["final_test_error"])
    assert curve[0][1] > curve[-1][1]  # it learns
    # the angle panel: hidden layers 1 and 2 averaged, the output layer (angle 0 by construction) left out;
    # the evaluations measure it too (steps 1, 2, 4, 8 before alignment.jsonl's first), on the same probe
    alignment = rows(run / "alignment.jsonl")
    at_13 = [r["signal_angle"] for r in alignment if r["layer"] in (1, 2) and r["step"] == 13]
    logged = {r["step"]: r["hidden_signal_angle"] for r in rows(run / "steps.jsonl") if "hidden_signal_angle" in r}
    assert logged[13] == pytest.approx(sum(at_13) / 2)
    angles = dict(hidden_signal_angle(run))
    assert {0, 1, 2, 4, 8, 13, 26, 39} <= set(angles) and angles[13] == pytest.approx(sum(at_13) / 2)
    assert all(angle < 90 for step, angle in angles.items() if step >= 13)  # DFA's signal points downhill
    assert all(angle == 0 for _, angle in hidden_signal_angle(tmp_path / "evals" / "bp-seed0"))
    for name in ("plain", "evals"):
        assert (tmp_path / name / "error-and-alignment.png").stat().st_size > 10_000
    # without evaluations within epochs the figure has each epoch's end, from metrics.jsonl
    metrics = rows(tmp_path / "plain" / "dfa-seed1" / "metrics.jsonl")
    assert error_curve(tmp_path / "plain" / "dfa-seed1") == [
        (per_epoch * m["epoch"], pytest.approx(1 - m["test_accuracy"])) for m in metrics[1:]]


@pytest.mark.slow
def test_evaluations_within_epochs_in_worker_processes_give_the_same_runs(tmp_path, capsys):
    """--workers 2 with --evals-per-epoch trains in spawned processes that run the evaluations too."""
    args = [*SMALL, "--seeds", "1", "--out-dir", str(tmp_path), "--evals-per-epoch", "2"]
    assert main(["compare", *args, "--name", "one"]) == 0
    assert main(["compare", *args, "--name", "two", "--workers", "2"]) == 0
    one, two = (json.loads((tmp_path / n / "compare.json").read_text()) for n in ("one", "two"))
    assert [r["test_errors"] for r in one["rows"]] == [r["test_errors"] for r in two["rows"]]
    for rule in ("bp", "dfa"):
        assert rows(tmp_path / "one" / f"{rule}-seed0" / "steps.jsonl") == rows(
            tmp_path / "two" / f"{rule}-seed0" / "steps.jsonl")
    assert main(["compare", *args, "--name", "bad", "--evals-per-epoch", "-1"]) == 2
