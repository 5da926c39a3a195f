"""The rule-alignment experiment: every rule that converts an MLP is in it, the costly ones by their own
step_flops run one seed, and its figure and rows come from the runs' alignment curves."""
import math

from feedalign.experiments import experiment_config, get_experiment
from feedalign.experiments.rule_alignment import COSTLY, mlp_rules, step_cost


def test_every_rule_that_converts_an_mlp_is_in_it():
    config = experiment_config("rule-alignment", quick=False)
    assert config["rules"] == mlp_rules()
    assert "bp" in config["rules"] and step_cost("bp") == 1.0
    assert set(config["search"]["learners"]) == set(config["rules"])  # each rule's rate chosen on validation


def test_costly_rules_run_one_seed_and_the_rest_all():
    experiment = get_experiment("rule-alignment")
    config = experiment_config("rule-alignment", quick=False)
    for rule in config["rules"]:
        expected = 1 if step_cost(rule) > COSTLY else config["seeds"]
        assert experiment.seeds_for(rule, config) == expected, rule
    assert any(step_cost(r) > COSTLY for r in config["rules"])  # the relaxation rules


def test_rows_and_figure_come_from_the_runs(tmp_path):
    experiment = get_experiment("rule-alignment")
    config = {**experiment_config("rule-alignment", quick=True), "rules": ["bp", "fa"]}
    runs = [{rule: {"alignment_steps": [5, 10], "update_angle": [angle, angle / 2], "test_error": 10.0 + seed}
             for rule, angle in (("bp", 0.0), ("fa", 80.0))} for seed in range(2)]
    claims, figures = experiment.summarize(config, runs, tmp_path)
    by_key = {c.key: c for c in claims}
    assert by_key["fa_angle"].values == [40.0, 40.0] and by_key["bp_angle"].values == [0.0, 0.0]
    assert by_key["fa_error"].values == [10.0, 11.0] and not math.isnan(by_key["fa_error"].mean)
    assert figures == ["rule-alignment.png"] and (tmp_path / "rule-alignment.png").stat().st_size > 0
