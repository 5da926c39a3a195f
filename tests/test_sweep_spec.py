"""Sweep spec parsing: grids, random samples, and one-line errors before any run starts."""
import pytest

from feedalign.cli import main
from feedalign.sweeps import load_spec, sensitivity_report

BASE = {"dataset": "mnist1d", "architecture": "40-16-10", "epochs": 1}


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_product_and_keys(tmp_path):
    path = write(tmp_path, """
name = "g"
[base]
dataset = "mnist1d"
architecture = "40-16-10"
[grid]
rule = ["bp", "fa", "dfa"]
lr = [0.01, 0.1]
init_scale = [0, 0.5]
""")
    spec = load_spec(path)
    points = spec.points()
    assert len(points) == 12 and spec.swept == ["rule", "lr", "init_scale"]
    assert len({p.key for p in points}) == 12
    assert all(p.key.startswith(p.config.rule + "-") for p in points)
    # 0 in a float field is 0.0: the same config, the same hash
    again = load_spec(path).points()
    assert [p.hash for p in points] == [p.hash for p in again]
    assert points[0].config.init_scale == 0.0


def test_yaml_random_sample_is_seeded(tmp_path):
    text = """
name: r
seed: 3
samples: 4
base: {dataset: mnist1d, architecture: 40-16-10}
grid: {rule: [fa, dfa]}
random:
  lr: {loguniform: [0.001, 0.5]}
  batch_size: {choice: [16, 32]}
  seed: {randint: [0, 9]}
"""
    path = write(tmp_path, text, "spec.yaml")
    a, b = load_spec(path).points(), load_spec(path).points()
    assert len(a) == 8 and [p.params for p in a] == [p.params for p in b]
    assert all(0.001 <= p.config.lr <= 0.5 and p.config.batch_size in (16, 32) for p in a)


def test_overrides_apply_to_base(tmp_path):
    path = write(tmp_path, '[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\n[grid]\nrule = ["bp"]\n')
    spec = load_spec(path, overrides={"epochs": 2, "lr": 0.2})
    assert spec.points()[0].config.epochs == 2 and spec.points()[0].config.lr == 0.2
    with pytest.raises(ValueError, match="is swept"):
        load_spec(path, overrides={"rule": "fa"})


BAD = [
    ('colour = "red"\n[grid]\nrule = ["bp"]\n', "unknown key 'colour'"),
    ('lr = 0.1\n[grid]\nrule = ["bp"]\n', "put it under [base]"),
    ('[grid]\nlearning_rate = [0.1]\n', "'learning_rate' is not a config field"),
    ('[base]\nlearning_rate = 0.1\n[grid]\nrule = ["bp"]\n', "'learning_rate' is not a config field"),
    ('[grid]\nlr = []\n', "grid.lr is empty"),
    ('[grid]\nlr = 0.1\n', "grid.lr must be a list"),
    ('[grid]\nlr = [0.1, "fast"]\n', "lr must be a number"),
    ('[grid]\nrule = ["bp", "magic"]\n', "rule must be one of"),
    ('[grid]\nepochs = [1.5]\n', "epochs must be an integer"),
    ('backend = "slurm"\n[grid]\nrule = ["bp"]\n', "backend must be one of local, ray"),
    ('samples = 3\n[grid]\nrule = ["bp"]\n', "needs a [random] table"),
    ('[random]\nlr = { gaussian = [0, 1] }\n', "unknown distribution 'gaussian'"),
    ('[random]\nlr = { loguniform = [0, 1] }\n', "loguniform needs low > 0"),
    ('[random]\nbatch_size = { uniform = [8, 64] }\n', "batch_size must be an integer"),
    ('[grid]\nrule = ["bp"]\n[random]\nrule = { choice = ["fa"] }\n', "in both [grid] and [random]"),
    ('[grid]\nrule = ["bp"\n', "does not parse"),
    ('plot = [["lr", "seed"]]\n[grid]\nlr = [0.1]\n', "plot axis 'seed' is not a swept field"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path, f'out_dir = "{tmp_path / "out"}"\n' + text)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedalign: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_cli_errors_exit_2(tmp_path, capsys):
    path = write(tmp_path, f'out_dir = "{tmp_path / "out"}"\n[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\n'
                           '[grid]\nrule = ["bp"]\n')
    assert main(["sweep", str(path), "--backend", "slurm"]) == 2
    assert "unknown backend 'slurm'" in capsys.readouterr().err
    assert main(["sweep", str(path), "--set", "nope=1"]) == 2
    assert "unknown config field" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", str(path), "--address", "auto"]) == 2
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "1 runs" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_examples_parse():
    from pathlib import Path
    examples = sorted((Path(__file__).parents[1] / "examples" / "sweeps").glob("*.toml"))
    assert {p.name for p in examples} >= {"sensitivity-init-lr.toml", "sensitivity-dfa-wd.toml"}
    for path in examples:
        assert load_spec(path).points()


def test_sensitivity_report_on_synthetic_rows():
    def row(rule, scale, lr, acc, outcome, wd=0.0):
        return {"status": "done", "rule": rule, "init_scale": scale, "lr": lr, "best_val_accuracy": acc,
                "outcome": outcome, "config": {"rule": rule, "init": "uniform", "init_scale": scale, "lr": lr,
                                               "weight_decay": wd}}
    rows = []
    for lr in (0.001, 0.01, 0.1):
        rows += [row("fa", 0.0, lr, 0.1, "refused"), row("fa", 0.01, lr, 0.5 if lr == 0.1 else 0.2, "trained"),
                 row("fa", 0.1, lr, 0.9 if lr == 0.1 else 0.3, "trained"), row("fa", 3.0, lr, 0.4, "collapsed")]
    text = sensitivity_report(rows)
    assert "| zero initial weights do not train | fa | yes |" in text
    assert "| initial weights can't be too small | fa | yes |" in text
    assert "| initial weights can't be too large | fa | yes |" in text
    assert "| a high-ish learning rate is needed | fa | yes |" in text
    assert "| some runs gain accuracy, then lose it | fa | yes |" in text


def test_plot_only_from_results_table(tmp_path, capsys):
    import json
    out = tmp_path / "out"
    path = write(tmp_path, f'name = "p"\nout_dir = "{out}"\n[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\n'
                           '[grid]\nrule = ["fa"]\ninit_scale = [0.0, 0.1]\nlr = [0.01, 0.1]\n')
    assert main(["sweep", str(path), "--plot-only"]) == 2  # no results yet
    assert "run the sweep first" in capsys.readouterr().err
    rows = [{"key": f"k{i}", "status": "done", "rule": "fa", "init_scale": s, "lr": lr, "best_val_accuracy": 0.1 + s + lr,
             "outcome": "trained" if lr > 0.05 else "refused", "val_curve": [0.1, 0.1 + s + lr],
             "config": {"rule": "fa", "init": "uniform", "init_scale": s, "lr": lr}}
            for i, (s, lr) in enumerate([(0.0, 0.01), (0.0, 0.1), (0.1, 0.01), (0.1, 0.1)])]
    (out / "p").mkdir(parents=True)
    (out / "p" / "results.json").write_text(json.dumps({"swept": ["rule", "init_scale", "lr"], "runs": rows}))
    assert main(["sweep", str(path), "--plot-only", "--report"]) == 0
    printed = capsys.readouterr().out
    assert "heatmap-fa-init_scale-lr.png" in printed and "best-curves.png" in printed
    assert "| zero initial weights do not train | fa | no |" in printed
