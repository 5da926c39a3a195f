"""`feedalign reproduce`: every experiment's quick size asserts its paper's qualitative claim.

One seed each to keep the file's total well under a minute and a half on 2 cores.
MNIST experiments are skipped when feedalign.data cannot load MNIST here. The runs are
marked ``slow`` (``pytest -m "not slow"`` leaves them out; the default suite runs them).
"""
from __future__ import annotations

import json

import pytest

from feedalign.cli import main
from feedalign.experiments import experiments, run_experiment
from feedalign.experiments._common import DataUnavailable, load_data
from feedalign.experiments.summary import run_all

EXPECTED = ["toy1d", "linear", "review-fa", "review-dfa", "sensitivity", "mnist-fa", "deep100", "fixed-first-layer",
            "nokland-mnist", "hidden-activations"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce")


@pytest.fixture(scope="module")
def mnist():
    try:
        load_data("mnist", n_train=10, n_val=10, n_test=10)
    except DataUnavailable as err:
        pytest.skip(str(err))


def claims(results):
    return {c["key"]: c for c in results["claims"]}


def assert_reproduced(results, *keys):
    by_key = claims(results)
    for key in keys:
        c = by_key[key]
        assert c["reproduced"], f"{results['experiment']}: {c['text']}: ours {c['ours']}, paper {c['paper']}"


def test_registry_in_priority_order():
    names = experiments()
    assert [n for n in names if n in EXPECTED] == EXPECTED  # others may register more (e.g. family)


@pytest.mark.slow
def test_toy1d_quick(out):
    r = run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "fa_solutions", "bp_solutions", "fa_zero_branch", "fa_zero_product", "bp_zero_stuck")
    folder = out / "toy1d"
    assert (folder / "report.md").read_text().count("| yes |") >= 5
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
    from feedalign.experiments import toy1d
    monkeypatch.setattr(toy1d.Toy1D, "source_hash", lambda self: "changed-code")
    changed = run_experiment("toy1d", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert not changed["skipped"]  # code changed: rerun


def test_source_hash_covers_the_learning_rules(monkeypatch):
    from feedalign.experiments import base, get_experiment
    experiment = get_experiment("deep100")
    assert "rules" in experiment.library_sources and "data" in experiment.library_sources
    assert "training" in get_experiment("sensitivity").library_sources
    before = experiment.source_hash()
    real = base.library_hash
    monkeypatch.setattr(base, "library_hash", lambda sources: real(sources) + "a rule changed")
    assert experiment.source_hash() != before


@pytest.mark.slow
def test_linear_quick(out):
    r = run_experiment("linear", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "fa_error", "shallow_error", "angle_start", "angle_end", "angle_pbp", "theorem")
    run = r["runs"][0]
    assert run["angle_fa_bp"][-1] < 60 and run["fa_error"][-1] < 0.01 * run["fa_error"][0]


@pytest.mark.slow
def test_review_fa_quick(out, mnist):
    assert_reproduced(run_experiment("review-fa", quick=True, out=out, seeds=1, log=lambda *a: None), "fa_val_acc", "fa_gap")


@pytest.mark.slow
def test_review_dfa_and_hidden_activations_quick(out, mnist):
    r = run_experiment("review-dfa", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert_reproduced(r, "dfa_val_acc", "dfa_gap")
    h = run_experiment("hidden-activations", quick=True, out=out, seeds=1, log=lambda *a: None)
    assert (out / "hidden-activations" / "hidden-activations.png").exists() and len(h["claims"]) == 8


@pytest.mark.slow
def test_mnist_fa_quick(out, mnist):
    assert_reproduced(run_experiment("mnist-fa", quick=True, out=out, seeds=1, log=lambda *a: None), "ordering")


@pytest.mark.slow
def test_deep100_quick(out, mnist):
    assert_reproduced(run_experiment("deep100", quick=True, out=out, seeds=1, log=lambda *a: None),
                      "dfa_trains", "bp_stalls", "loss_gap")


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
    assert_reproduced(r, "1x100_all_train", "2x100_all_train")


@pytest.mark.slow
def test_all_writes_docs_from_results(out, tmp_path):
    run_all(quick=True, out=out, seeds=1, docs=tmp_path / "docs", only=["toy1d", "linear"], log=lambda *a: None)
    page = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "feedalign reproduce toy1d --quick --seeds 1" in page and "| yes |" in page
    assert (tmp_path / "docs" / "figures" / "toy1d-trajectories.png").exists()
    assert (tmp_path / "docs" / "figures" / "linear-error-angles.png").exists()
    # the reports under runs/ (ignored by git) are published beside the page, figure links rewritten
    report = (tmp_path / "docs" / "reports" / "toy1d" / "report.md").read_text()
    assert "(reports/toy1d/report.md)" in page and "](../../figures/toy1d-trajectories.png)" in report
    assert json.loads((tmp_path / "docs" / "reports" / "toy1d" / "results.json").read_text())["experiment"] == "toy1d"


@pytest.mark.slow
def test_cli(out, capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "toy1d" in capsys.readouterr().out
    assert main(["reproduce", "no-such-experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "toy1d", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
