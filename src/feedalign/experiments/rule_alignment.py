"""Every registered rule's alignment with backprop on one MNIST network: the page's alignment figure.

Each rule that converts a plain MLP trains the same tanh network (784-200-200-10) through the one training
engine, and logs every ``alignment_every`` steps the angle between its weight update and the true gradient on
the same weights (:func:`feedalign.diagnostics.alignment`, mean over the hidden layers; 0 for bp by
definition). Each rule's learning rate is chosen on the validation split (SGD with momentum 0.9, a short
search of three rates); the runs use a 10000-image training subset so that every rule, the slow relaxation
and perturbation rules included, fits a working session on 2 CPU cores.

Nothing here is a paper's number: the figure and the rows are descriptive. The papers behind the rules state
the qualitative picture this shows: FA's and DFA's updates align to within 90 degrees of the gradient
(Lillicrap et al. 2016, Nøkland 2016), Kolen-Pollack and weight mirrors align further (Akrout et al. 2019),
and perturbation estimates are unbiased but noisy. A rule whose step costs over ten backprop steps (the
relaxation rules, by their own ``step_flops``) runs one seed, and is marked so.
"""
from __future__ import annotations

from ..convert import convertible_rules
from ..models import mlp, parse_sizes
from ..rules import get_rule, reference_rule
from ._training import TrainingExperiment
from .base import Claim, register
from .plotting import pyplot, save_figure

ARCHITECTURE = "784-200-200-10"
LR_GRID = (0.1, 0.03, 0.01)
COSTLY = 10.0  # a rule whose step costs more than this many backprop steps (its own step_flops) runs one seed


def step_cost(rule: str, batch: int = 64) -> float:
    """``rule``'s matmul FLOPs per training step of :data:`ARCHITECTURE` relative to backprop's (its
    :meth:`~feedalign.rules.LearningRule.step_flops`)."""
    widths = parse_sizes(ARCHITECTURE)
    return get_rule(rule).step_flops(widths, batch) / get_rule(reference_rule()).step_flops(widths, batch)


def mlp_rules() -> list[str]:
    """The registered rules that convert a plain tanh MLP."""
    return convertible_rules(lambda: mlp(ARCHITECTURE, activation="tanh"))


@register
class RuleAlignment(TrainingExperiment):
    name = "rule-alignment"
    title = "Every rule's alignment with backprop on MNIST (784-200-200-10 tanh)"
    paper = ("descriptive: the update angle to the true gradient for every registered rule (Lillicrap et al. 2016, "
             "Nøkland 2016, Akrout et al. 2019 and the rules' own papers, cited in each rule's module)")
    order = 95
    full_runtime = "about 40 min on 2 CPU cores (every rule x 3 seeds x 3 epochs on 10000 images, after a search)"
    default_seeds = {"quick": 1, "full": 3}
    searched = ("learning rate",)

    def config(self, quick):
        rules = mlp_rules()
        n_train = 1000 if quick else 10000
        search = {"learners": {rule: [{"lr": lr} for lr in (LR_GRID[1:] if quick else LR_GRID)] for rule in rules},
                  "seeds": 1, "epochs": 1, "n_train": n_train, "n_val": 500 if quick else 5000,
                  "pick": "best"}
        return {"data": {"name": "mnist", "n_train": n_train, "n_val": 500 if quick else 5000,
                         "n_test": 500 if quick else None},
                "rules": rules, "search": search, "architecture": ARCHITECTURE, "activation": "tanh",
                "epochs": 1 if quick else 3, "batch_size": 64, "costly": [r for r in rules if step_cost(r) > COSTLY], "momentum": 0.9,
                "alignment_every": 5 if quick else 40}

    def learners(self, config):
        base = {"architecture": config["architecture"], "activation": config["activation"], "optimizer": "sgd",
                "momentum": config["momentum"], "lr": LR_GRID[1], "batch_size": config["batch_size"],
                "epochs": config["epochs"], "alignment_every": config["alignment_every"]}
        return {rule: dict(base, rule=rule) for rule in config["rules"]}

    def seeds_for(self, label, config):
        return 1 if label in config.get("costly", ()) else config["seeds"]

    def deviations(self, config):
        return [self.data_deviation(config),
                f"One network for every rule ({config['architecture']} {config['activation']}, SGD momentum "
                f"{config['momentum']}, batch {config['batch_size']}, {config['epochs']} epochs); each rule's learning "
                "rate chosen on validation (search below). The rules' papers use other networks and recipes.",
                f"Alignment angle: the rule's weight update against the true gradient, mean over hidden layers, on "
                f"256 validation images every {config['alignment_every']} steps.",
                f"One seed for the rules whose step costs over {COSTLY:g} backprop steps (by their own step_flops): "
                f"{', '.join(config.get('costly', ())) or 'none'}."]

    def summarize(self, config, runs, out):
        claims = []
        for rule in config["rules"]:
            claims.append(Claim(f"{rule}_angle", f"{rule}: final alignment angle to the true gradient", "-",
                                self.final(runs, rule, "update_angle"), unit="deg"))
            claims.append(Claim(f"{rule}_error", f"{rule}: test error at the best validation epoch", "-",
                                self.final(runs, rule, "test_error"), unit="%"))
        return claims, [self.figure(config, runs, out)]

    def figure(self, config, runs, out):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(11, 5.5))
        styles = ("-", "--", ":", "-.")
        for i, rule in enumerate(config["rules"]):
            curves = [r[rule]["update_angle"] for r in runs if rule in r]
            steps = runs[0][rule]["alignment_steps"]
            n = min(len(c) for c in curves)
            mean = [sum(c[k] for c in curves) / len(curves) for k in range(n)]
            ax.plot(steps[:n], mean, styles[(i // 10) % len(styles)], label=rule, lw=1.4)
        ax.axhline(90, color="grey", lw=0.6)  # beyond 90 degrees an update climbs the loss
        ax.set(xlabel="training step", ylabel="update angle to the true gradient (deg, mean over hidden layers)",
               title=f"MNIST {config['architecture']} {config['activation']}: alignment of every rule "
                     f"(mean over seeds)", ylim=(0, 120))
        ax.legend(ncol=1, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save_figure(fig, out, "rule-alignment.png")
