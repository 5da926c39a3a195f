"""Training engine: Config validation, outcome labels, runs on mnist1d and synthetic regression."""
import json
import math

import pytest
import torch

from feedalign.training import Callback, Config, evaluate, label_outcome, resume, train
from feedalign.training.build import build_model, derived_seeds

from contracts import contract

SMALL = dict(dataset="mnist1d", architecture="40-32-10", epochs=2, batch_size=64, lr=0.05, threads=1)


@pytest.fixture
def small(tmp_path):
    return Config(**SMALL, out_dir=str(tmp_path / "runs"))


# -- Config ---------------------------------------------------------------------------------

def test_defaults_are_valid_and_roundtrip_through_toml(tmp_path):
    config = Config(name="x", feedback_scale=0.5)
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert Config.from_file(path) == config


def test_unknown_key_is_named_and_valid_keys_listed():
    with pytest.raises(ValueError, match=r"unknown setting 'learning_rate'; valid settings: dataset, .*\blr\b"):
        Config.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "lr must be a number"),
    ("epochs", 1.5, "epochs must be an integer"),
    ("standardize", "yes", "standardize must be true/false"),
    ("lr", -1.0, "lr must be > 0"),
    ("lr", 0.0, "lr must be > 0"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("optimizer", "lbfgs", "optimizer must be one of sgd, adam, adamw, rmsprop"),
    ("rule", "hebb", "rule must be one of bp, .*dfa.*; got .hebb."),
    ("architecture", "784-x-10", "malformed architecture"),
    ("device", "tpu", "device must be cpu, cuda, cuda:N or auto"),
    ("threads", -1, "threads must be >= 0"),
    ("nesterov", True, "nesterov needs optimizer = 'sgd' and momentum > 0"),
    ("collapse_drop", 0.0, r"collapse_drop must be in \(0, 1\]"),
    ("stop_train_error", 1.0, r"stop_train_error must be in \[0, 1\)"),
    ("stop_train_error", -0.1, r"stop_train_error must be in \[0, 1\)"),
    ("train_size", 0, "train_size must be >= 1"),
    ("test_size", 0, "test_size must be >= 1"),
    ("frozen", "output", "frozen must be one of none, first, hidden"),
    ("weight_decay_mode", "l1", "weight_decay_mode must be one of l2, constant"),
])
def test_bad_values_name_the_field(key, value, message):
    settings = {key: value, **({"momentum": 0.0} if key == "nesterov" else {})}
    with pytest.raises(ValueError, match=message):
        Config.from_dict(settings)


def test_int_in_float_field_becomes_float_and_yaml_reads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1\nrule: dfa\nstandardize: true\n")
    config = Config.from_file(path)
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.rule == "dfa" and config.standardize


@pytest.mark.parametrize("key, value", [("lr", "fast"), ("epochs", 1.5), ("standardize", "yes"), ("architecture", 784)])
def test_a_value_of_the_wrong_type_is_a_type_error(key, value):
    from feedalign.errors import ConfigError, ConfigTypeError
    with pytest.raises(ConfigTypeError, match=key) as err:
        Config.from_dict({key: value})
    assert isinstance(err.value, TypeError) and isinstance(err.value, ConfigError)


def test_a_bad_value_is_a_config_error_not_a_type_error():
    from feedalign.errors import ConfigError
    with pytest.raises(ConfigError, match="lr must be > 0") as err:
        Config.from_dict({"lr": -1.0})
    assert not isinstance(err.value, TypeError)


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "lr = = 1", "does not parse"),
    ("c.yaml", "lr: [1,", "does not parse"),
    ("c.yaml", "- 1\n- 2\n", "expected a table of settings"),
    ("c.json", "{}", "expected a .toml, .yaml or .yml file"),
])
def test_bad_config_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        Config.from_file(tmp_path / name)


# -- outcome labels -------------------------------------------------------------------------

def test_outcome_labels_on_sequences():
    kw = dict(num_classes=10, refuse_margin=0.1, collapse_drop=0.2)
    assert label_outcome([0.5, 0.8, 0.9], **kw) == ("trained", 3)
    assert label_outcome([0.11, 0.15, 0.2], **kw) == ("refused", 3)
    assert label_outcome([0.5, 0.8, 0.3, 0.1, 0.1], **kw) == ("collapsed", 3)
    assert label_outcome([0.5, 0.8, 0.3, 0.75, 0.1], **kw) == ("collapsed", 5)  # recovered, then fell again
    assert label_outcome([0.5, 0.8, 0.3, 0.75], **kw) == ("trained", 4)  # a dip it recovered from
    assert label_outcome([0.5], diverged_at=2, **kw) == ("diverged", 2)
    assert label_outcome([1.0, 0.5], task="regression", initial=1.2) == ("trained", 2)
    assert label_outcome([1.0, 1.15], task="regression", initial=1.2) == ("refused", 2)


# -- runs -----------------------------------------------------------------------------------

class Recorder(Callback):
    def __init__(self):
        self.steps, self.epochs, self.run = [], [], None

    def on_train_begin(self, run):
        self.run = run

    def on_step(self, step, model, batch):
        self.steps.append(step)
        if step % 10 == 0:
            self.run.log({"probe": float(batch[0].shape[0])})

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)
        metrics["extra"] = epoch * 2


@pytest.mark.parametrize("top,tight", [(0.9, False), (12345.0, False), (123456.0, True)])
def test_epoch_plots_leave_room_for_their_tick_labels(tmp_path, top, tight):
    """Fixed margins where the y tick labels fit them (no measuring draw); wider labels (a diverging
    loss) get the measured layout, whose left margin is wider."""
    from feedalign.training.records import _MARGINS, epoch_figure, finish_epoch_plot
    fig, ax = epoch_figure(5, 3.5)
    ax.plot([0, 1, 2], [top / 3, top / 2, top], label="validation")
    finish_epoch_plot(fig, ax, tmp_path / "loss.png", "loss", "a title")
    fixed = fig.subplotpars.left == pytest.approx(_MARGINS["left"] / 5)
    assert fixed != tight and (tmp_path / "loss.png").stat().st_size > 0
    if tight:
        assert fig.subplotpars.left > _MARGINS["left"] / 5


def test_train_writes_a_complete_run_directory(small):
    recorder = Recorder()
    result = train(small, [recorder], progress="none")
    d = result.run_dir
    for name in ("config.toml", "metrics.jsonl", "metrics.csv", "summary.json", "accuracy.png", "loss.png",
                 "steps.jsonl", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (d / name).is_file(), name
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows == result.metrics
    assert rows[1]["extra"] == 2 and "extra" in (d / "metrics.csv").read_text().splitlines()[0]
    assert set(rows[1]) >= {"train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "test_loss", "seconds"}
    assert len((d / "metrics.csv").read_text().splitlines()) == 4
    steps_per_epoch = math.ceil(3200 / 64)
    assert recorder.steps == list(range(1, 2 * steps_per_epoch + 1)) and recorder.epochs == [1, 2]
    assert len((d / "steps.jsonl").read_text().splitlines()) == 2 * steps_per_epoch // 10
    s = json.loads((d / "summary.json").read_text())
    assert s == result.summary and s["outcome"] == "trained" and s["epochs_completed"] == 2
    assert s["final_test_error"] == pytest.approx(1 - rows[2]["test_accuracy"])
    assert Config.from_file(d / "config.toml") == small  # (small has no name; a given name is not saved)
    assert resume(d, progress="none").summary == s  # a finished run is returned as it is


def test_huge_learning_rate_diverges_and_keeps_last_good_checkpoint(small):
    result = train(small.replace(lr=1e6, activation="relu", epochs=3), progress="none")
    s = result.summary
    assert s["outcome"] == "diverged" and s["outcome_epoch"] == 1 and s["epochs_completed"] == 0
    assert not (result.run_dir / "checkpoints" / "latest.pt").exists()  # nothing good was ever saved


def test_stop_train_error_stops_at_noklands_running_mean(small):
    """m = 0.75 m + 0.25 err per epoch from m = 1 (anokland/dfa-torch Main.lua), computed here by hand."""
    full = train(small.replace(epochs=4, name="full"), progress="none")
    errors = [1 - r["train_accuracy"] for r in full.metrics[1:]]
    running = [1.0]
    for err in errors:
        running.append(0.75 * running[-1] + 0.25 * err)
    assert running[1] > running[2] > running[3]  # so the threshold below is first reached after epoch 2
    stopped = train(small.replace(epochs=4, stop_train_error=running[2], name="stopped"), progress="none")
    assert stopped.summary["epochs_completed"] == 2 and stopped.summary["outcome"] == "trained"
    assert [r["train_accuracy"] for r in stopped.metrics] == [r["train_accuracy"] for r in full.metrics[:3]]
    assert resume(stopped.run_dir, progress="none").summary == stopped.summary


def test_negligible_learning_rate_refuses(small):  # lr 0 itself is a ConfigError
    s = train(small.replace(lr=1e-12, momentum=0.0), progress="none").summary
    assert s["outcome"] == "refused" and s["outcome_epoch"] == 2


def test_constructed_collapse(small):
    class Sabotage(Callback):  # from epoch 3 on, silence the output layer and stop learning
        def on_train_begin(self, run):
            self.run = run

        def on_step(self, step, model, batch):
            if self.run.epoch >= 3:
                for group in self.run.optimizer.param_groups:
                    group["lr"] = 0.0
                with torch.no_grad():
                    model[-1].weight.zero_()
                    model[-1].bias.zero_()

    config = small.replace(epochs=4, lr=0.1, collapse_drop=0.1)
    s = train(config, [Sabotage()], progress="none").summary
    assert s["outcome"] == "collapsed" and s["outcome_epoch"] == 3 and s["best_epoch"] <= 2


def test_regression_task_trains_with_mse(tmp_path):
    config = Config(dataset="linear-task", architecture="30-20-10", rule="dfa", epochs=2, lr=0.01, threads=1,
                    out_dir=str(tmp_path))
    s = train(config, progress="none").summary
    assert s["task"] == "regression" and s["loss"] == "mse" and s["outcome"] == "trained"
    assert train(config.replace(lr=1e-12), progress="none").summary["outcome"] == "refused"


@pytest.mark.parametrize("rule", __import__("feedalign").rules())
def test_evaluation_under_inference_mode_is_the_plain_forward(rule):
    config = Config(architecture="40-16-16-10", rule=rule)
    model = build_model(config, torch.device("cpu")).eval()  # evaluate's mode (ff scores labels by goodness there)
    x, y = torch.randn(50, 40), torch.randint(0, 10, (50,))
    expected = torch.nn.functional.cross_entropy(model(x), y).item()
    loss, acc = evaluate(model, x, y, torch.nn.functional.cross_entropy, classification=True, batch_size=7)
    assert loss == pytest.approx(expected, rel=1e-6) and 0 <= acc <= 1


def test_forward_init_and_feedback_use_independent_seeds():
    seeds = derived_seeds(0)
    assert len(set(seeds.values())) == 3
    model = build_model(Config(architecture="40-16-10", rule="fa"), torch.device("cpu"))
    assert not torch.allclose(model[0].weight, model[0].feedback)  # with one seed B would equal W
    zero = build_model(Config(architecture="40-16-10", init="zero"), torch.device("cpu"))
    assert all((p == 0).all() for p in zero.parameters())
    uniform = build_model(Config(architecture="40-16-10", init="uniform", init_scale=0.01), torch.device("cpu"))
    assert all(p.abs().max() <= 0.01 for p in uniform.parameters())
    # Nøkland's FA: the first layer keeps U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (weights and biases), the rest start at 0
    first = build_model(Config(architecture="40-16-16-10", rule="fa", init="zero-except-first"), torch.device("cpu"))
    layers = [m for m in first if isinstance(m, torch.nn.Linear)]
    for p in (layers[0].weight, layers[0].bias):
        assert 0 < p.abs().max() <= 1 / 40 ** 0.5 and torch.count_nonzero(p) == p.numel()
    assert all((p == 0).all() for layer in layers[1:] for p in (layer.weight, layer.bias))


@pytest.mark.parametrize("rule", __import__("feedalign").rules())
def test_every_rule_trains_through_the_engine(small, rule):
    s = train(small.replace(rule=rule, architecture="40-32-32-10", epochs=2), progress="none").summary
    if contract(rule).estimate or rule == "ff":  # np, wp: 2 epochs of one perturbation a step stay near chance on
        # mnist1d (that they learn through the engine: test_perturbation.py, blobs, 4 epochs); ff's layer-wise goodness
        # needs more epochs than this too (test_ff.py trains it through the engine on MNIST); here: the run completes
        assert s["outcome"] in ("trained", "refused") and math.isfinite(s["final_test_error"]), s
        return
    assert s["outcome"] == "trained", s


def test_a_rule_registered_later_trains_through_the_engine(small, sample_rule):
    """The engine needs nothing but the registry to train a new rule (the suite's own, sample_rule.py)."""
    s = train(small.replace(rule=sample_rule, architecture="40-32-32-10", epochs=2), progress="none").summary
    assert s["outcome"] == "trained", s


def test_drtp_with_a_loss_it_cannot_recover_the_target_from(small):
    s = train(small.replace(rule="drtp", architecture="40-32-32-10", loss="bce", lr=0.5), progress="none").summary
    assert s["outcome"] == "trained" and s["loss"] == "bce"


def test_without_a_validation_set_selection_uses_test_and_says_so(small):
    result = train(small.replace(validation_size=0, epochs=1), progress="none")
    assert result.summary["selection_split"] == "test" and result.metrics[1]["val_accuracy"] is None
    assert result.summary["outcome"] == "trained"


def test_resume_without_a_checkpoint_restarts_and_matches(small):
    first = train(small, progress="none")
    for name in ("summary.json", "checkpoints/latest.pt", "checkpoints/best.pt"):
        (first.run_dir / name).unlink()  # as if killed during epoch 1
    again = resume(first.run_dir, progress="none")
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in again.metrics] == \
           [{k: v for k, v in r.items() if "seconds" not in k} for r in first.metrics]
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


def test_callbacks_are_duck_typed(small):
    class OnlySteps:
        count = 0

        def on_step(self, step, model, batch):
            OnlySteps.count += 1

    result = train(small.replace(epochs=1), [OnlySteps()], progress="none")
    assert OnlySteps.count == result.summary["steps"] == math.ceil(3200 / 64)


def test_a_bad_progress_mode_is_refused_before_the_run_directory_exists(small):
    with pytest.raises(ValueError, match="progress must be"):
        train(small, progress="loud")
    out = __import__("pathlib").Path(small.out_dir)
    assert not out.exists() or not any(out.iterdir())


def test_a_run_directory_that_fails_while_being_created_is_removed(small, monkeypatch):
    import feedalign.training.engine as engine

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "atomic_write", disk_full)
    with pytest.raises(OSError):
        train(small, progress="none")
    out = __import__("pathlib").Path(small.out_dir)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_subsets_and_frozen_layers(small, rule):
    """train_size/test_size cut the splits; frozen layers end the run with their initial weights."""
    config = small.replace(rule=rule, frozen="first", train_size=96, test_size=50, epochs=2)
    start = build_model(config, torch.device("cpu"))
    result = train(config, progress="none")
    first = [m for m in result.model.modules() if isinstance(m, torch.nn.Linear)]
    initial = [m for m in start.modules() if isinstance(m, torch.nn.Linear)]
    assert torch.equal(first[0].weight, initial[0].weight) and torch.equal(first[0].bias, initial[0].bias)
    assert not torch.equal(first[-1].weight, initial[-1].weight)
    assert result.summary["steps"] == 2 * -(-96 // config.batch_size)


def test_constant_weight_decay_subtracts_the_coefficient_after_each_step():
    """The review's code: w <- w - lr * g - decay, for every weight and bias (g = 0 leaves only the decay)."""
    from feedalign.training.build import make_optimizer
    config = Config(**{**SMALL, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.01, "weight_decay_mode": "constant"})
    model = build_model(config, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(config, model)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.rand(4, 40)).sum().backward()
        for p in model.parameters():  # lr * g = 0 (lr itself must be > 0)
            p.grad.zero_()
        optimizer.step()
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b - 0.03)


def test_named_convolutional_architecture_trains_on_images(tmp_path):
    """architecture = 'lenet5': the data stays (N, 1, 28, 28), every rule that converts Conv2d runs it."""
    import feedalign.data
    try:
        feedalign.data.load("mnist", download=False)
    except feedalign.data.DatasetError as err:
        pytest.skip(str(err).splitlines()[0])
    config = Config(dataset="mnist", architecture="lenet5", rule="dfa", epochs=1, train_size=256, test_size=100,
                    validation_size=100, lr=0.05, alignment_every=2, threads=1, out_dir=str(tmp_path))
    result = train(config, progress="none")
    assert any(isinstance(m, torch.nn.Conv2d) for m in result.model.modules())
    assert result.summary["epochs_completed"] == 1 and (result.run_dir / "alignment.jsonl").stat().st_size > 0
    with pytest.raises(ValueError, match="'lenet5' classifies images; mnist1d is not"):
        train(config.replace(dataset="mnist1d"), progress="none")
