"""`feedalign bench --smoke` runs end to end, and bench handles every registered rule (no timing
assertions: the machine is shared)."""
from __future__ import annotations

import json

import pytest
import torch

import feedalign
import feedalign.bench
from feedalign.cli import main

from contracts import contract


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| rule |" in printed and "GEMM ceiling" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["rule"] for r in rows} == {"bp", "fa", "dfa", "ifa"}
    assert all(r["step_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["fused"] == (r["rule"] != "bp") for r in rows)


def test_step_flops_counts_fewer_matmuls_for_dfa():
    widths = [784, 240, 240, 240, 10]
    bp = feedalign.bench.step_flops(widths, 64, "bp")
    assert feedalign.bench.step_flops(widths, 64, "fa") == bp
    assert feedalign.bench.step_flops(widths, 64, "dfa") < bp


def test_bench_rejects_bad_input(capsys):
    assert main(["bench", "--smoke", "--rules", "nope"]) == 2
    assert main(["bench", "--sizes", "784-x-10"]) == 2


def test_bench_times_every_registered_rule(sample_rule):
    """Every rule in the registry, the suite's own rule included, trains through bench's step."""
    rows = feedalign.bench.bench_size("20-16x3-5:8", feedalign.rules(), torch.device("cpu"), rounds=1,
                                      min_round_s=0.001, ceiling=1e9, log=lambda *args: None)
    assert [r.rule for r in rows] == ["bp"] + [r for r in feedalign.rules() if r != "bp"]
    assert sample_rule in {r.rule for r in rows}
    assert all(r.step_ms > 0 and r.ratio > 0 and r.gflops > 0 for r in rows)
    assert all(r.fused for r in rows if contract(r.rule).fused)


@pytest.mark.parametrize("rule", feedalign.rules())
def test_step_flops_counts_at_least_forward_and_weight_gradients(rule):
    widths = [784, 240, 240, 10]
    forward = 2 * 64 * sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    assert feedalign.bench.step_flops(widths, 64, rule) >= 2 * forward


def test_step_flops_refuses_an_unknown_rule():
    """bench asks the rule for its FLOPs: a rule it does not know is an error, never counted as FA."""
    with pytest.raises(ValueError, match="nope"):
        feedalign.bench.step_flops([20, 16, 5], 8, "nope")


def test_every_rule_counts_its_own_step_flops():
    """Rules that send the error through a weight-shaped matrix per layer cost what BP costs;
    the direct ones skip matmuls. The count comes from the rule, so no rule is counted as another."""
    widths = [784, 240, 240, 240, 10]
    bp = feedalign.bench.step_flops(widths, 64, "bp")
    for rule in feedalign.rules():
        flops = feedalign.get_rule(rule).step_flops(widths, 64)
        if contract(rule).own_model:  # an energy network relaxes for many steps: far more than one BP step;
            # forward-forward runs three passes through the hidden layers (neutral, positive and negative data)
            assert flops > (bp if rule == "ff" else 10 * bp), rule
            continue
        if rule == "pc":  # inference: every one of its steps passes the errors through every layer both ways
            assert flops > 5 * bp, rule
            continue
        if rule in ("pepita", "np"):  # two forward passes (the clean one and the modulated or perturbed replay)
            # and every layer's update (pepita also e F): more than BP's step, which skips the first input gradient
            assert bp < flops < 1.5 * bp, rule
            continue
        assert 0 < flops <= bp, rule
        # IFA's e @ B_1 costs what BP's input gradient of the output layer does; dkp adds e^T h_k to DFA's; wp's
        # estimate is element-wise, so it pays two forward passes and no product
        assert (flops < bp) == (rule in ("dfa", "drtp", "dkp", "wp")), rule


def test_time_to_accuracy_trains_each_rule_until_the_target(capsys):
    """On MNIST-1D (40 inputs) a small network reaches 35% test accuracy within a few epochs under bp and dfa;
    an unreachable target is reported as such, with the best accuracy seen."""
    from feedalign.bench import time_to_accuracy
    settings = {"bp": {"optimizer": "adam", "lr": 3e-3, "momentum": 0.9}, "dfa": {"optimizer": "adam", "lr": 3e-3,
                                                                                  "momentum": 0.9}}
    result = time_to_accuracy(0.35, ["bp", "dfa"], network="40-128-10", dataset="mnist1d", batch_size=64,
                              max_epochs=8, eval_every=10, settings=settings, log=lambda *a: None)
    rows = {r["rule"]: r for r in result["rows"]}
    for row in rows.values():
        assert row["seconds"] is not None and row["seconds"] > 0 and row["best_accuracy"] >= 0.35, row
        assert row["steps"] % 10 == 0 and row["epochs"] <= 8
    assert rows["bp"]["ratio"] == 1.0 and rows["dfa"]["ratio"] > 0
    assert "| dfa | adam lr 0.003 |" in result["table"]
    never = time_to_accuracy(0.999, ["bp"], network="40-16-10", dataset="mnist1d", max_epochs=1, eval_every=5,
                             settings=settings, log=lambda *a: None)
    (row,) = never["rows"]
    assert row["seconds"] is None and "not reached" in never["table"] and 0 < row["best_accuracy"] < 0.999


@pytest.mark.parametrize("argv, message", [(["--to-accuracy", "1.5"], "between 0 and 1"),
                                           (["--to-accuracy", "0.9", "--rules", "nosuch"], "rule must be one of"),
                                           (["--to-accuracy", "0.9", "--max-epochs", "0"], "max_epochs")])
def test_to_accuracy_rejects_bad_input(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_engine_times_the_epoch_and_a_fresh_interpreters_set_up(mnist, capsys):
    import importlib.util
    import pathlib
    import re

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "bench_engine.py"
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    bench_engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_engine)
    threads = torch.get_num_threads()
    try:
        assert bench_engine.main(["--architecture", "784-16-10", "--batch-size", "1000", "--rounds", "1",
                                  "--setup-runs", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert re.search(r"ratio engine / minimal: \d+\.\d{3}", printed)
    setup = re.search(r"import feedalign (\S+) s \+ data from the cache (\S+) s \+ before the first step (\S+) s .*"
                      r"after the last epoch (\S+) s .* = (\S+) s; besides, import torch and its first optimizer "
                      r"(\S+) s \(of which the optimizer's import of torch._dynamo (\S+) s\)", printed)
    assert setup, printed
    parts = [float(v) for v in setup.groups()]
    # each part and the total are printed rounded to 0.01 s: the parts' sum may miss the total by 5 x 0.005
    assert all(v >= 0 for v in parts) and abs(sum(parts[:4]) - parts[4]) <= 0.025 + 1e-9
    assert parts[6] <= parts[5]
