"""Nøkland 2016, the training curves of a network whose first hidden layer stays at its random init."""
from __future__ import annotations

from ._training import TrainingExperiment
from .verdicts import Compare
from .base import Claim, register
from .nokland import SETTINGS_NOTE, learner, learning_rates


@register
class FixedFirstLayer(TrainingExperiment):
    name = "fixed-first-layer"
    title = "Fixed random first hidden layer vs fully trained network, BP and DFA"
    paper = "Nøkland 2016 (arXiv 1609.01596), training curves with a fixed first hidden layer (left) and the full network (right)"
    order = 70
    full_runtime = "about 36 min (3 seeds, 2 workers; measured)"
    default_seeds = {"quick": 1, "full": 3}  # its checks need 3 seeds

    def config(self, quick):
        return {"data": {"name": "mnist", "n_train": 3000 if quick else None, "n_val": 1000 if quick else None,
                         "n_test": 1000 if quick else None},
                "architecture": "784-200-200-10" if quick else "784-800-800-10", "epochs": 3 if quick else 10,
                "lr": 3e-3 if quick else learning_rates(2)["dfa"]}

    def learners(self, config):
        out = {}
        for rule in ("bp", "dfa"):
            for frozen, tag in (("first", "fixed first layer"), ("none", "full network")):
                out[f"{rule.upper()}, {tag}"] = learner(rule, config["architecture"], config["epochs"], zero_init=False,
                                                        frozen=frozen, lr=config["lr"])
        return out

    def deviations(self, config):
        return [SETTINGS_NOTE, "All learners start from U[-1/sqrt(n), 1/sqrt(n)]: a fixed first layer must be random, "
                "and the trained ones start from the same init so the only difference is which layers learn.",
                self.data_deviation(config),
                f"{config['architecture']}, {config['epochs']} epochs, lr {config['lr']} (cosine); training error is "
                "the running error over each epoch's minibatches; the paper trains longer."]

    def comparisons(self, config):
        if config.get("size") != "full":
            return {}
        near_zero = lambda v: max(v) < 1.0  # noqa: E731
        return {key: Compare("check", holds=near_zero, criterion="final training error below 1 % on every seed "
                             "(the paper's curves reach near zero)", finding="DFA's training error stays above 1 %")
                for key in ("dfa_fixed_trains", "dfa_full_trains")}

    def summarize(self, config, runs, out):
        labels = list(runs[0])
        tr = {k: self.final(runs, k, "train_error") for k in labels}
        claims = [Claim(f"train_{i}", f"{k}: final training error", "curve (figure)", tr[k], unit="%")
                  for i, k in enumerate(labels)]
        claims.append(Claim("dfa_fixed_trains", "DFA with the first layer fixed: final training error",
                            "trains (upper layers learn from the direct feedback)", tr["DFA, fixed first layer"],
                            unit="%", reproduced=max(tr["DFA, fixed first layer"]) < 20, criterion="< 20%"))
        claims.append(Claim("dfa_full_trains", "DFA, full network: final training error", "trains",
                            tr["DFA, full network"], unit="%", reproduced=max(tr["DFA, full network"]) < 20,
                            criterion="< 20%"))
        figures = [self.curves(config, runs, out, key="train_error", log=True,
                               panels=[[l for l in labels if "fixed" in l], [l for l in labels if "full" in l]],
                               title=f"{config['architecture']} tanh, MNIST: training error, first layer fixed (left) "
                                     "vs trained (right)")]
        return claims, figures
