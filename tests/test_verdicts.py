"""Verdicts against the registry of paper numbers, and settings searches that read validation error only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feedalign.experiments import experiment_config, experiments, get_experiment, papers
from feedalign.experiments.verdicts import VERDICTS, Compare, judge, judged

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_registry_is_well_formed_and_every_comparison_names_a_number():
    numbers = papers.load()
    assert len(numbers) >= 40
    for n in numbers.values():
        assert n.status in papers.STATUSES and n.source and n.measures and n.where
    assert papers.get("lillicrap2016/mnist/fa").mark == ""  # confirmed: no mark
    assert papers.label("nokland2016/table1/7x240/bp") == "2.16% (unverified)"
    assert papers.label("review/784-100-10/fa") == "93.9% (read off a plot)"
    for name in experiments():
        config = experiment_config(name, quick=False)
        for key, compare in get_experiment(name).comparisons(config).items():
            for number in (compare.number, compare.minus):
                assert number is None or number in numbers, (name, key, number)


def test_verdicts_are_two_sided():
    n = "lillicrap2016/mnist/fa"  # 2.1 %
    value = Compare("value", number=n)
    assert judge([2.0, 2.1, 2.2], value).verdict == "reproduced"
    assert judge([1.5, 1.6, 1.55], value).verdict == "better"   # a lower error is not a pass
    assert judge([2.7, 2.8, 2.75], value).verdict == "miss"
    assert judge([2.1], value).verdict == "-"                  # one seed is not judged
    assert judge([1.0, 3.2, 2.6], value).verdict == "reproduced"  # the paper inside mean ± 2 se
    acc = Compare("value", number="review/784-100-10/fa", tolerance=1.0, higher_is_better=True)  # 93.9 %
    assert judge([95.5, 95.6, 95.4], acc).verdict == "better"
    assert judge([92.0, 92.1, 91.9], acc).verdict == "miss"
    assert judge([93.1, 93.0, 93.2], acc).verdict == "reproduced"
    assert all(v in judge([2.1] * 3, value).criterion for v in ("<= 0.3", "2 se"))  # the criterion is printed


def test_gap_rows_keep_the_paper_sign():
    # Table 1, 3x800: DFA 1.70 below BP 1.75 (gap -0.05)
    gap = Compare("gap", number="nokland2016/table1/3x800/dfa", minus="nokland2016/table1/3x800/bp")
    assert judge([-0.10, -0.06, -0.08], gap).verdict == "reproduced"
    opposite = judge([0.10, 0.12, 0.11], gap)
    assert opposite.verdict == "miss"   # within 0.3 of -0.05, but DFA above BP on every seed
    assert opposite.note.startswith("opposite sign to the paper's gap: ours +0.110, paper -0.05")
    assert judge([-0.10, -0.06, -0.08], gap).note == ""
    assert "one run of each rule" not in opposite.note  # ours' std 0.01 is below the paper's 0.05
    noisy = judge([0.02, 0.14, 0.08], gap)  # std 0.06 > 0.05: the paper's sign rests on noise, and it says so
    assert noisy.verdict == "miss" and noisy.note.endswith(
        "the paper's gap (0.05 points) is smaller than the seed-to-seed std of ours (0.060): one run of each rule "
        "could show either sign")
    assert judge([-0.5, -0.45, -0.55], gap).verdict == "better"
    assert judge([0.2, -0.25, 0.1], gap).verdict == "reproduced"  # -0.05 inside ours' mean ± 2 se


def test_a_number_far_from_the_paper_either_way_carries_its_finding():
    value = Compare("value", number="nokland2016/table1/1x800/bp", finding="the likely reason")  # paper 1.59
    better, miss = judge([0.9, 0.95, 1.0], value), judge([2.4, 2.5, 2.6], value)
    assert (better.verdict, better.note) == ("better", "the likely reason")
    assert (miss.verdict, miss.note) == ("miss", "the likely reason")
    assert judge([1.55, 1.6, 1.65], value).note == ""  # reproduced: nothing to explain
    gap = Compare("gap", number="nokland2016/table1/3x800/dfa", minus="nokland2016/table1/3x800/bp", finding="why")
    assert judge([0.10, 0.12, 0.11], gap).note.endswith("; why")  # the sign note first, then the finding


def test_checks_contradicted_and_vocabulary():
    check = Compare("check", holds=lambda v: max(v) < 1.0, criterion="below 1 %", finding="it is not")
    assert judge([0.5, 0.6, 0.4], check).verdict == "reproduced"
    v = judge([0.5, 2.0, 0.4], check)
    assert v.verdict == "contradicted" and v.note == "it is not"
    for name in ("nokland-mnist", "mnist-fa", "deep100", "sensitivity", "toy1d"):
        rows, _ = judged(name, json.loads((DOCS / "reports" / name / "results.json").read_text()))
        assert rows and {r["verdict"] for r in rows} <= set(VERDICTS)
    rows, _ = judged("eqprop", json.loads((DOCS / "reports" / "eqprop" / "results.json").read_text()))
    chl = next(r for r in rows if r["key"] == "chl_1")
    assert (chl["verdict"], chl["criterion"]) == ("-", "")  # descriptive: no criterion printed beside it


def test_eqprop_is_judged_against_the_papers_range_on_either_side():
    config = experiment_config("eqprop", quick=False)
    compare = get_experiment("eqprop").comparisons(config)["ep_1"]
    assert papers.label(compare.number) == "2-3% (unverified)"  # read from the registry, marked
    inside = judge([2.3, 2.4, 2.5], compare)
    assert (inside.verdict, inside.delta) == ("reproduced", "+0.00")
    assert inside.criterion.startswith("reproduced: ours within 2-3, or that range meeting mean ± 2 se")
    below, above = judge([1.5, 1.6, 1.7], compare), judge([3.4, 3.5, 3.6], compare)
    assert (below.verdict, below.delta) == ("better", "-0.40")  # below the paper's range is a finding too
    assert (above.verdict, above.delta) == ("miss", "+0.50")
    assert below.note == above.note == compare.finding
    assert judge([1.2, 2.4, 1.8], compare).verdict == "reproduced"  # the range meets mean ± 2 se


def test_a_range_in_the_registry_is_checked(tmp_path):
    text = papers.DEFAULT.read_text().replace("high = 3.0", "high = 1.5", 1)
    (tmp_path / "numbers.toml").write_text(text)
    with pytest.raises(papers.RegistryError, match="scellier2017/mnist/ep.*a range needs high > value"):
        papers.load(tmp_path / "numbers.toml")


def _copy_docs(tmp_path, names):
    docs = tmp_path / "docs"
    for name in names:
        shutil.copytree(DOCS / "reports" / name, docs / "reports" / name)
    return docs


def _searched_on_test(tmp_path):
    """docs/ with nokland-mnist's published result as it was before the validation-only search: no selection
    in its config (so a key of its own), and a claim whose criterion has since been withdrawn."""
    docs = _copy_docs(tmp_path, ["nokland-mnist"])
    stored = docs / "reports" / "nokland-mnist" / "results.json"
    results = json.loads(stored.read_text())
    results["config"].pop("selection", None)
    results["key"] = "0" * 16
    results["claims"].append({"key": "7x240_all_train", "text": "7x240: BP, FA and DFA all train (worst of their "
                              "test errors)", "paper": "all between 1.59 and 2.32%", "values": [2.22, 2.44, 2.35],
                              "unit": "%", "reproduced": True, "criterion": "< 40% (chance 90%)"})
    stored.write_text(json.dumps(results))
    return docs


def _row(page: str, experiment: str, claim: str) -> list[str]:
    line = next(l for l in page.splitlines() if l.startswith(f"| {experiment} | {claim} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_a_registry_value_changes_the_verdict_on_the_page(tmp_path):
    """The page's verdicts are recomputed from the stored per-run values and the registry each time."""
    from feedalign.experiments.summary import write_docs
    docs = _copy_docs(tmp_path, ["nokland-mnist"])
    write_docs(tmp_path / "none", docs, quick=False, seeds=None, log=lambda *a: None)
    before = _row((docs / "reproduction.md").read_text(), "nokland-mnist", "7x240 tanh, BP: test error")
    assert before[2] == "2.16% (unverified)" and before[4] == "reproduced"
    changed = tmp_path / "numbers.toml"
    text = papers.DEFAULT.read_text()
    cell = '[numbers."nokland2016/table1/7x240/bp"]'
    head, tail = text.split(cell)
    changed.write_text(head + cell + tail.replace("value = 2.16", "value = 2.9", 1).replace(
        'status = "unverified"', 'status = "confirmed"', 1))
    with papers.use(changed):
        write_docs(tmp_path / "none", docs, quick=False, seeds=None, log=lambda *a: None)
    after = _row((docs / "reproduction.md").read_text(), "nokland-mnist", "7x240 tanh, BP: test error")
    assert after[2] == "2.9%" and after[4] == "better"  # ours 2.08: 0.8 below; no mark once confirmed
    gap = _row((docs / "reproduction.md").read_text(), "nokland-mnist", "7x240: DFA minus BP test error (points)")
    assert gap[2].startswith("2.32 - 2.9 = -0.58")
    write_docs(tmp_path / "none", docs, quick=False, seeds=None, log=lambda *a: None)  # back to the registry
    assert _row((docs / "reproduction.md").read_text(), "nokland-mnist", "7x240 tanh, BP: test error")[4] == "reproduced"


def test_verify_recomputes_verdicts_and_marks_test_set_searches(tmp_path):
    """--verify rewrites every report with verdicts of now; results searched on test error are marked."""
    from feedalign.experiments.summary import verify_published
    docs = _searched_on_test(tmp_path)
    report = docs / "reports" / "nokland-mnist" / "report.md"
    report.write_text("old")
    statuses = verify_published(docs, ["nokland-mnist"], out=tmp_path / "none", log=lambda *a: None)
    assert statuses["nokland-mnist"].startswith("stale: the experiment's settings changed")
    text = report.read_text()
    verdicts = text.split("## Settings chosen on validation")[0]  # (its search table marks the chosen setting "yes")
    assert "| reproduced |" in verdicts and "| yes |" not in verdicts and "chosen on test error" in text
    page = (docs / "reproduction.md").read_text()
    assert "chosen on test error" in _row(page, "nokland-mnist", "7x240 tanh, BP: test error")[7]
    # a retired criterion ('< 40 %') is listed as withdrawn, never judged in the table
    assert not [l for l in page.splitlines() if l.startswith("| nokland-mnist |") and "all train" in l]
    assert "all train (worst of their test errors): '< 40 %'" in page


class _Unreadable:
    """A test-set number that may not be read: any use of it fails the test."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("the settings search read a test-set number")

    __float__ = __lt__ = __gt__ = __le__ = __ge__ = __sub__ = __rsub__ = __add__ = __radd__ = __format__ = _fail
    __bool__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail


def _one_learner(name: str, label: str, fields: dict):
    """A training experiment of one learner (its search config is the test's), unregistered."""
    from feedalign.experiments import TrainingExperiment

    class Tiny(TrainingExperiment):
        def config(self, quick):
            return {}

        def learners(self, config):
            return {label: dict(fields)}

        def summarize(self, config, runs, out):
            return [], []

    Tiny.name = name
    return Tiny


@pytest.mark.slow
def test_settings_search_reads_validation_only(tmp_path, monkeypatch):
    """Searches choose by validation error; with every test number made unreadable they still run and choose
    the same, and the choice follows validation where test disagrees."""
    from feedalign.experiments import _training

    Tiny = _one_learner("tiny-search", "FA", {"architecture": "40-32-10", "rule": "fa", "optimizer": "sgd", "lr": 0.05,
                                              "epochs": 2, "batch_size": 64})
    config = {"data": {"name": "mnist1d", "n_train": 1500, "n_val": 500, "n_test": None}, "seeds": 1,
              "search": {"learners": {"FA": [{"lr": 1e-4}, {"lr": 0.2}]}, "seeds": 1, "n_val": 500, "pick": "final"}}
    experiment = Tiny()
    read = _training.read_jsonl

    def unreadable_test(path):
        return [{k: (_Unreadable() if k.startswith("test") else v) for k, v in row.items()} for row in read(path)]

    monkeypatch.setattr(_training, "read_jsonl", unreadable_test)
    record = experiment.run_search(config, tmp_path, workers=1, log=lambda *a: None)
    monkeypatch.setattr(_training, "read_jsonl", read)
    errors = record["learners"]["FA"]["candidates"]
    assert record["chosen"]["FA"] == {"lr": 0.2} and errors[1]["mean"] < errors[0]["mean"]
    # make the test set favour the other candidate: the choice must not move
    for run in (tmp_path / "search").glob("00-fa-c*-seed0"):
        rows = read(run / "metrics.jsonl")
        good = run.name.endswith("c0-seed0")
        for row in rows:
            row["test_accuracy"] = 0.99 if good else 0.01
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert experiment.run_search(config, tmp_path, workers=1, log=lambda *a: None)["chosen"] == record["chosen"]
    # search runs evaluate a single test example: the engine has nothing of the test set to offer the search
    assert all(c.test_size == 1 for _, _, _, c in experiment.search_configs(config, tmp_path))


def test_a_grid_is_extended_past_a_winning_edge():
    from feedalign.experiments._training import _at_edge, _round_nice, extension
    grid = [{"lr": 1e-4, "b": 1.0}, {"lr": 3e-4, "b": 1.0}, {"lr": 1e-3, "b": 1.0}]
    assert extension(grid, {0: [5.0], 1: [4.0], 2: [3.0]}) == {"lr": 3e-3, "b": 1.0}   # won at the top
    assert extension(grid, {0: [2.0], 1: [4.0], 2: [3.0]}) == {"lr": 3e-5, "b": 1.0}   # at the bottom
    assert extension(grid, {0: [5.0], 1: [2.0], 2: [3.0]}) is None                     # inside: nothing to add
    assert extension(grid + [{"lr": 3e-3, "b": 1.0}], {0: [5.0], 1: [4.0], 2: [3.0], 3: [2.5]}) == {"lr": 1e-2, "b": 1.0}
    assert extension(grid, {0: [5.0], 1: [4.0], 2: [float("nan")]}) is None           # a diverged edge never wins
    two_fields = [{"lr": 1e-4, "schedule": "cosine"}, {"lr": 3e-4, "schedule": "constant"}, {"lr": 1e-3, "schedule": "cosine"}]
    assert extension(two_fields, {0: [5.0], 1: [4.0], 2: [3.0]}) is None                # not one number: left as is
    paper = {"lr": 1e-4, "schedule": "constant"}  # a candidate of its own kind beside the rates (nokland 7x240 FA)
    assert extension(grid + [paper], {0: [5.0], 1: [4.0], 2: [3.0], 3: [3.5]}) == {"lr": 3e-3, "b": 1.0}
    assert extension(grid + [paper], {0: [5.0], 1: [4.0], 2: [3.0], 3: [2.0]}) is None
    assert not _at_edge(grid + [paper], 3) and _at_edge(grid + [paper], 2) and not _at_edge(grid, 1)
    assert [_round_nice(x) for x in (3.33e-3, 9e-3, 0.15, 4.1)] == [3e-3, 1e-2, 0.2, 5.0]


@pytest.mark.slow
def test_search_extends_its_grid_and_says_so(tmp_path):
    """A real search whose best rate is the grid's top adds the next rate, trains it, and records both rounds."""
    Tiny = _one_learner("tiny-extend", "BP", {"architecture": "40-16-10", "rule": "bp", "optimizer": "sgd", "lr": 0.05,
                                              "epochs": 1, "batch_size": 50})
    config = {"data": {"name": "mnist1d", "n_train": 1000, "n_val": 500, "n_test": None}, "seeds": 1,
              "search": {"learners": {"BP": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}]}, "seeds": 1, "n_val": 500,
                         "pick": "final", "extend": 1}}
    lines = []
    record = Tiny().run_search(config, tmp_path, workers=1, log=lines.append)
    candidates = [c["fields"] for c in record["learners"]["BP"]["candidates"]]
    means = [c["mean"] for c in record["learners"]["BP"]["candidates"]]
    assert candidates == [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}, {"lr": 3e-2}], means  # 20 steps: more is better
    assert any("adding {\"lr\": 0.03}" in line for line in lines) and "extended past it, up to 1" in record["what"]
    assert (tmp_path / "search" / "00-bp-c3-seed0" / "summary.json").is_file()
    assert record["chosen"]["BP"] == {"lr": 3e-2} and record["learners"]["BP"]["at_edge"]  # the cap of 1 reached


def test_searched_experiments_choose_on_validation():
    """Every experiment that searches settings says so in its config and searches on a validation split."""
    for name in ("nokland-mnist", "mnist-fa", "deep100", "family"):
        for quick in (True, False):
            config = experiment_config(name, quick=quick)
            assert config["selection"] == "validation" and config["search"]["n_val"] > 0, name
            assert get_experiment(name).selection_note(config) is None
    # learners outside the search keep the defaults by depth (7x240 is seven hidden layers: FA 3e-4)
    assert experiment_config("nokland-mnist", quick=False)["lr"]["7x240"] == {"bp": 5e-4, "fa": 3e-4, "dfa": 5e-4,
                                                                             "ifa": 5e-4}
    # a stored result from before the search is marked where that search read test error (not family's)
    for name in ("nokland-mnist", "mnist-fa", "deep100", "family"):
        assert (get_experiment(name).selection_note({"seeds": 3}) is not None) == (name != "family")


def test_verify_cli_lists_results_awaiting_a_rerun_without_failing(tmp_path, capsys, monkeypatch):
    """A result whose experiment has new settings cannot be replayed; --verify says so and still passes."""
    from feedalign.cli import main
    monkeypatch.chdir(tmp_path)
    docs = _searched_on_test(tmp_path)
    assert main(["reproduce", "--verify", "nokland-mnist", "--docs", str(docs)]) == 0
    assert "awaiting a rerun with their new settings" in capsys.readouterr().out
    assert "| reproduced |" in (docs / "reports" / "nokland-mnist" / "report.md").read_text()


def test_every_full_size_default_has_the_seeds_its_rows_need():
    """`feedalign reproduce NAME` at full size, without --seeds, judges every row: no row left '-' for want of
    seeds that the default could have given it."""
    for name in experiments():
        config = experiment_config(name, quick=False)
        needs = {key: c.min_seeds for key, c in get_experiment(name).comparisons(config).items()}
        short = {key: n for key, n in needs.items() if n > config["seeds"]}
        assert not short, f"{name}: default {config['seeds']} seeds, but rows {short} need more"
