"""The wider family on LeNet-5 / Fashion-MNIST, beside BioTorch's published errors.

Every rule of the registry trains ``feedalign.lenet5()`` (tanh) through the one
training engine (``architecture = "lenet5"``) with the same SGD settings; each run
logs its alignment with backprop (``alignment.jsonl``): the angle between each hidden
layer's weight update under the rule and the true gradient on the same weights
(``feedalign.exact_gradients``) on 256 validation images, averaged over the hidden
layers (BP is 0 by definition). Rules with an after-step phase (wm's mirrors) run it
as the engine runs it for them.

BioTorch's numbers (Sanfiz & Akrout 2021, jsalbert/biotorch ``Benchmarks.md``,
Fashion-MNIST LeNet, error %) come from 100 epochs on 50000 examples with per-rule
settings, reported on BioTorch's validation split; on 2 CPU cores this experiment
trains on a subset for a few epochs, so its errors are higher and only the ordering
is comparable.
"""
from __future__ import annotations

import feedalign

from ._training import TrainingExperiment
from .base import Claim, register
from .plotting import mean_std_band, pyplot

# Error (%) of LeNet on Fashion-MNIST, BioTorch Benchmarks.md; rules not listed there have no paper value.
BIOTORCH = {"bp": 9.2, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "brsf": 10.02, "frsf": 9.61}


def convolutional_rules() -> list[str]:
    """The registered rules that convert LeNet-5's Conv2d layers (IFA, say, is for linear stacks only)."""
    out = []
    for rule in feedalign.rules():
        try:
            feedalign.convert(feedalign.lenet5(), rule)
        except ValueError:  # the rule's own refusal of this model
            continue
        out.append(rule)
    return out


@register
class Family(TrainingExperiment):
    name = "family"
    title = "LeNet-5 on Fashion-MNIST: every registered rule that converts Conv2d layers"
    paper = ("Sanfiz & Akrout 2021 (BioTorch, Benchmarks.md, Fashion-MNIST LeNet); rules: Lillicrap et al. 2016, "
             "Nøkland 2016, Liao et al. 2016, Akrout et al. 2019, Frenkel et al. 2021")
    order = 90
    full_runtime = "about 15 min (3 seeds, every rule, 3 epochs of 40000 examples, 2 workers)"
    default_seeds = {"quick": 2, "full": 3}

    def config(self, quick):
        return {"data": {"name": "fashion-mnist", "n_train": 5000 if quick else 40000, "n_test": None},
                "rules": convolutional_rules(), "epochs": 1 if quick else 3, "batch_size": 64, "lr": 0.05,
                "momentum": 0.9, "weight_decay": 5e-4, "alignment_every": 20 if quick else 150}

    def learners(self, config):
        base = {"architecture": "lenet5", "activation": "tanh", "loss": "cross_entropy", "optimizer": "sgd",
                "lr": config["lr"], "momentum": config["momentum"], "weight_decay": config["weight_decay"],
                "batch_size": config["batch_size"], "epochs": config["epochs"],
                "alignment_every": config["alignment_every"]}
        return {rule: dict(base, rule=rule) for rule in config["rules"]}

    def deviations(self, config):
        return [f"Scaled down for 2 CPU cores: {config['data']['n_train']} training examples, {config['epochs']} "
                f"epoch(s), one SGD setting for every rule (lr {config['lr']}, momentum {config['momentum']}, "
                f"weight decay {config['weight_decay']}); BioTorch trains for 100 epochs with per-rule settings, so "
                "our errors are higher; compare orderings, not values.",
                "LeNet-5 here: tanh, max-pooling, padding 2 on the first conv (feedalign.lenet5).",
                self.data_deviation(config),
                f"Alignment angle: the rule's weight update against the true gradient, mean over hidden layers, on "
                f"256 validation images every {config['alignment_every']} steps."]

    def summarize(self, config, runs, out):
        claims = []
        for rule in config["rules"]:
            paper = BIOTORCH.get(rule)
            claims.append(Claim(f"{rule}_error", f"{rule}: LeNet-5 Fashion-MNIST test error",
                                f"{paper}" if paper is not None else "not in BioTorch's table",
                                self.final(runs, rule), unit="%", paper_value=paper))
            claims.append(Claim(f"{rule}_angle", f"{rule}: final alignment angle to the true gradient",
                                "-", self.final(runs, rule, "update_angle"), unit="deg"))
        return claims, [self.figure(config, runs, out)]

    def figure(self, config, runs, out):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 5))
        for rule in config["rules"]:
            mean_std_band(ax, runs[0][rule]["alignment_steps"], [r[rule]["update_angle"] for r in runs], rule)
        ax.set(xlabel="training step", ylabel="angle to the true gradient (deg, hidden layers)",
               title="LeNet-5 / Fashion-MNIST: alignment over training", ylim=(0, 100))
        ax.legend(ncol=3, fontsize=8)
        fig.tight_layout()
        name = "family-alignment.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return name
