"""`feedalign reproduce`: every experiment's quick size asserts its paper's qualitative claim.

One seed each to keep the file's total well under a minute and a half on 2 cores.
MNIST experiments are skipped when feedalign.data cannot load MNIST here. The runs are
marked ``slow`` (``pytest -m "not slow"`` leaves them out; the default suite runs them).
"""
from __future__ import annotations

import json

import pytest

from feedalign.cli import main
import feedalign.data
from feedalign.experiments import experiments, run_experiment
from feedalign.experiments.summary import run_all

EXPECTED = ["toy1d", "linear", "review-fa", "review-dfa", "sensitivity", "mnist-fa", "deep100", "fixed-first-layer",
            "nokland-mnist", "hidden-activations"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce")


def claims(results):
    return {c["key"]: c for c in results["claims"]}


def assert_reproduced(results, *keys):
    """Each claim's verdict, recomputed as the page computes it, is 'reproduced'."""
    from feedalign.experiments.verdicts import judged
    rows = {r["key"]: r for r in judged(results["experiment"], results)[0]}
    for key in keys:
        r = rows[key]
        assert r["verdict"] == "reproduced", f"{results['experiment']}: {r['claim']}: ours {r['ours']}, paper {r['paper']}"


def test_registry_in_priority_order():
    names = experiments()
    assert [n for n in names if n in EXPECTED] == EXPECTED  # others may register more (e.g. family)


@pytest.mark.slow
def test_toy1d_quick(out):
    r = run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "fa_solutions", "bp_solutions", "fa_zero_branch", "fa_zero_product", "bp_zero_stuck")
    folder = out / "toy1d"
    assert (folder / "report.md").read_text().count("| reproduced |") >= 5
    assert (folder / "toy1d-trajectories.png").stat().st_size > 10_000
    saved = json.loads((folder / "results.json").read_text())
    assert saved["key"] == r["key"] and saved["config"]["size"] == "quick"


@pytest.mark.slow
def test_resume_skips_current_result_and_force_reruns(out, monkeypatch):
    first = json.loads((out / "toy1d" / "results.json").read_text()) if (out / "toy1d").exists() else \
        run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    again = run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert again["skipped"] and again["finished"] == first["finished"]
    other = run_experiment("toy1d", quick=True, out=out, seeds=2, log=lambda *a: None, force=False)
    assert not other["skipped"] and other["config"]["seeds"] == 2  # config changed: rerun
    from feedalign.experiments import base
    monkeypatch.setattr(base, "package_hash", lambda: "changed-code")
    changed = run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert not changed["skipped"]  # code changed: rerun


def test_package_hash_covers_every_source_file(tmp_path):
    import shutil
    from pathlib import Path
    from feedalign.experiments.base import package_hash
    root = tmp_path / "feedalign"
    shutil.copytree(Path(feedalign.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = package_hash(root)
    assert before == package_hash(Path(feedalign.__file__).parent)
    for module in ("rules/fa.py", "training/engine.py", "data/mnist.py", "experiments/nokland.py"):
        path = root / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        assert package_hash(root) != before, module
        path.write_bytes(original)
    assert package_hash(root) == before


@pytest.mark.slow
def test_linear_quick(out):
    r = run_experiment("linear", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "fa_error", "shallow_error", "angle_start", "angle_end", "angle_pbp", "theorem")
    run = r["runs"][0]
    assert run["angle_fa_bp"][-1] < 60 and run["fa_error"][-1] < 0.01 * run["fa_error"][0]


@pytest.mark.slow
def test_linear_np_quick(out):
    r = run_experiment("linear-np", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "np_slower")
    run = r["runs"][0]
    assert run["np_error"][-1] < 0.5 * run["np_error"][0]  # slower, but it learns
    assert set(r["search"]["chosen"]) == {"bp", "fa", "np", "wp"}


@pytest.mark.slow
def test_nonlinear_quick(out):
    r = run_experiment("nonlinear", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "30-20-10_fa_below_shallow")
    assert set(r["search"]["chosen"]) == {"30-20-10 BP", "30-20-10 FA", "30-20-10 shallow"}


@pytest.mark.slow
def test_review_fa_quick(out, mnist):
    assert_reproduced(run_experiment("review-fa", quick=True, out=out, seeds=1, log=lambda *a: None), "fa_test_acc")


@pytest.mark.slow
def test_review_dfa_and_hidden_activations_quick(out, mnist):
    r = run_experiment("review-dfa", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "dfa_test_acc")
    h = run_experiment("hidden-activations", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert (out / "hidden-activations" / "hidden-activations.png").exists() and len(h["claims"]) == 8


@pytest.mark.slow
def test_mnist_fa_quick(out, mnist):
    assert_reproduced(run_experiment("mnist-fa", quick=True, out=out, seeds=1, log=lambda *a: None), "ordering")


@pytest.mark.slow
def test_deep100_quick(out, mnist):
    r = run_experiment("deep100", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "dfa_trains", "bp_stalls")
    assert r["search"]["chosen"]["DFA"] in [{"lr": 1e-3}, {"lr": 3e-3}]  # chosen on validation


@pytest.mark.slow
def test_sensitivity_quick(out):
    r = run_experiment("sensitivity", quick=True, out=out, seeds=1, log=lambda *a: None)
    observations = {c["key"].split(":")[0] for c in r["claims"]}
    # one row per observation of the review (per rule and sweep), each decided on the swept grid
    assert observations == {"zero-init", "init-too-small", "init-too-large", "high-lr", "weight-decay", "refusals",
                            "collapse"}
    assert all(c["reproduced"] in (True, False) and c["evidence"] for c in r["claims"])
    rules = {c["key"].split(":")[1] for c in r["claims"]}
    assert rules == {"bp", "fa", "dfa"}
    assert {"sensitivity-init-lr-dfa-init_scale-lr.png", "sensitivity-dfa-wd-dfa-weight_decay-lr.png"} <= set(r["figures"])
    report = (out / "sensitivity" / "report.md").read_text()
    assert report.count("(init-lr sweep)") >= 15 and "weight decay is essential" in report


@pytest.mark.slow
def test_fixed_first_layer_quick(out, mnist):
    assert_reproduced(run_experiment("fixed-first-layer", quick=True, out=out, seeds=1, log=lambda *a: None),
                      "dfa_fixed_trains", "dfa_full_trains")


@pytest.mark.slow
def test_nokland_mnist_quick(out, mnist):
    r = run_experiment("nokland-mnist", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert max(claims(r)["2x100_dfa"]["values"]) < 40  # trains (chance 90%)
    search = r["search"]["learners"]["1x100 FA"]
    assert [c["fields"] for c in search["candidates"]] == [{"lr": 1e-3}, {"lr": 3e-3}]
    assert search["chosen"] == min(search["candidates"], key=lambda c: c["mean"])["fields"]
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path
    trained = tomllib.loads((Path(r["runs"][0]["1x100 FA"]["run_dir"]) / "config.toml").read_text())
    assert trained["lr"] == search["chosen"]["lr"]  # the reported run trains at the chosen rate
    report = (out / "nokland-mnist" / "report.md").read_text()
    assert "## Settings chosen on validation" in report and "| 1x100 FA |" in report


@pytest.mark.slow
def test_launay_transformer_quick(out, mnist):
    r = run_experiment("launay-transformer", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert claims(r)["dfa_trains"]["values"][0] < 85  # above chance (90%) even at the quick size
    assert_reproduced(r, "bp_ahead")


@pytest.mark.slow
def test_dtp_quick(out, mnist):
    r = run_experiment("dtp", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "dtp_test", "dtp_gap")  # DTP trains well above chance, near BP


@pytest.mark.slow
def test_all_writes_docs_from_results(out, tmp_path):
    run_all(quick=True, out=out, seeds=1, docs=tmp_path / "docs", only=["toy1d", "linear"], log=lambda *a: None)
    page = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "feedalign reproduce toy1d --quick --seeds 1" in page and "| reproduced |" in page
    assert (tmp_path / "docs" / "figures" / "toy1d-trajectories.png").exists()
    assert (tmp_path / "docs" / "figures" / "linear-error-angles.png").exists()
    # the reports under runs/ (ignored by git) are published beside the page, figure links rewritten
    report = (tmp_path / "docs" / "reports" / "toy1d" / "report.md").read_text()
    assert "(reports/toy1d/report.md)" in page and "](../../figures/toy1d-trajectories.png)" in report
    assert json.loads((tmp_path / "docs" / "reports" / "toy1d" / "results.json").read_text())["experiment"] == "toy1d"
    # a fresh checkout (nothing under runs/) regenerates the page from the published results
    from feedalign.experiments.summary import write_docs
    write_docs(tmp_path / "empty", tmp_path / "docs", quick=True, seeds=1, log=lambda *a: None)
    again = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "(reports/toy1d/report.md)" in again and "figures/toy1d-trajectories.png" in again
    assert again.count("| toy1d |") == page.count("| toy1d |") and "(stale:" not in again
    # a page for one experiment (--skip the rest) still shows the others' published results
    run_all(quick=True, out=out, seeds=1, docs=tmp_path / "docs", only=["linear"], log=lambda *a: None)
    one = (tmp_path / "docs" / "reproduction.md").read_text()
    assert one.count("| toy1d |") == page.count("| toy1d |") and "| toy1d | (skipped" not in one


@pytest.mark.slow
def test_cli(out, capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "toy1d" in capsys.readouterr().out
    assert main(["reproduce", "no-such-experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "toy1d", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert main(["reproduce", "toy1d", "--quick", "--workers", "0", "--out", str(out)]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_list_gives_the_measured_full_run_time(tmp_path, capsys):
    """--list reads the run time of a published full-size result, and falls back to the estimate."""
    report = tmp_path / "docs" / "reports" / "linear"
    report.mkdir(parents=True)
    (report / "results.json").write_text(json.dumps({"config": {"size": "full"}, "seconds": 60.0,
                                                     "run_seconds": 1200.0, "workers": 2}))
    assert main(["reproduce", "--list", "--docs", str(tmp_path / "docs")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["linear"].endswith("full size: 20.0 min of training runs on 2 workers (measured) on 2 CPU cores")
    assert "about" in lines["mnist-fa"]


def _curves(run_dir):
    """A run's metrics without its timings (which differ from run to run)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, mnist):
    """mnist-fa at quick size, one seed, trained by one worker: the reference for the two tests below."""
    out = tmp_path_factory.mktemp("sequential")
    return run_experiment("mnist-fa", quick=True, out=out, seeds=1, workers=1, log=lambda *a: None)


@pytest.mark.slow
def test_parallel_runs_give_the_sequential_numbers(sequential, tmp_path):
    parallel = run_experiment("mnist-fa", quick=True, out=tmp_path, seeds=1, workers=2, log=lambda *a: None)
    assert parallel["key"] == sequential["key"] and parallel["workers"] == 2
    assert parallel["run_seconds"] > 0 and "min of training runs on 2 workers" in (tmp_path / "mnist-fa" / "report.md").read_text()
    for label, history in sequential["runs"][0].items():
        other = parallel["runs"][0][label]
        assert other["test_error"] == history["test_error"] and other["val_error"] == history["val_error"]
        from pathlib import Path
        assert _curves(Path(other["run_dir"])) == _curves(Path(history["run_dir"]))


@pytest.mark.slow
def test_interrupted_reproduction_continues_from_checkpoints(sequential, tmp_path):
    """SIGKILL `feedalign reproduce` (and with it its workers) mid-run; the rerun resumes, not restarts."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "feedalign", "reproduce", "mnist-fa", "--quick", "--seeds", "1",
                             "--workers", "1", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first_run = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # until the first run has a checkpoint and is not finished
            found = sorted(out.glob("mnist-fa/runs-*/00-bp-seed0/checkpoints/latest.pt"))
            if found and not (found[0].parents[1] / "summary.json").exists():
                first_run = found[0].parents[1]
                break
            assert proc.poll() is None, "reproduce ended before a checkpoint was seen"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first_run is not None, "no checkpoint within 120 s"
    time.sleep(0.5)  # the worker dies with its parent (PR_SET_PDEATHSIG)
    epochs_done = len(_curves(first_run))
    assert not (first_run / "summary.json").exists()
    messages = []
    resumed = run_experiment("mnist-fa", quick=True, out=out, seeds=1, workers=1, log=messages.append)
    assert any("continue from checkpoints" in m for m in messages), messages
    log = (first_run.parent / "logs" / f"{first_run.name}.log").read_text()
    assert "resuming" in log and epochs_done >= 2  # epoch 0 (the initial evaluation) and at least one epoch
    assert resumed["key"] == sequential["key"]
    for label, history in sequential["runs"][0].items():
        assert _curves(Path(resumed["runs"][0][label]["run_dir"])) == _curves(Path(history["run_dir"]))
