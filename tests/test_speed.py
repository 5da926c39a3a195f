"""`feedalign bench --smoke` runs end to end (no timing assertions: the machine is shared)."""
from __future__ import annotations

import json

import feedalign.bench
from feedalign.cli import main


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| rule |" in printed and "GEMM ceiling" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["rule"] for r in rows} == {"bp", "fa", "dfa", "ifa"}
    assert all(r["step_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["fast_path"] == (r["rule"] != "bp") for r in rows)


def test_step_flops_counts_fewer_matmuls_for_dfa():
    widths = [784, 240, 240, 240, 10]
    bp = feedalign.bench.step_flops(widths, 64, "bp")
    assert feedalign.bench.step_flops(widths, 64, "fa") == bp
    assert feedalign.bench.step_flops(widths, 64, "dfa") < bp


def test_bench_rejects_bad_input(capsys):
    assert main(["bench", "--smoke", "--rules", "nope"]) == 2
    assert main(["bench", "--sizes", "784-x-10"]) == 2


def test_every_rule_counts_its_own_step_flops():
    """Rules that send the error through a weight-shaped matrix per layer cost what BP costs;
    the direct ones skip matmuls. The count comes from the rule, so no rule is counted as another."""
    widths = [784, 240, 240, 240, 10]
    bp = feedalign.bench.step_flops(widths, 64, "bp")
    for rule in feedalign.rules():
        flops = feedalign.get_rule(rule).step_flops(widths, 64)
        assert 0 < flops <= bp, rule
        # IFA's e @ B_1 costs what BP's input gradient of the output layer does
        assert (flops < bp) == (rule in ("dfa", "drtp")), rule
