"""Nøkland 2016: a 100-layer network of 240 tanh units on MNIST; DFA trains it, BP and FA do not."""
from __future__ import annotations

from ._training import TrainingExperiment
from .base import Claim, register
from .nokland import SETTINGS_NOTE, learner, learning_rates


@register
class Deep100(TrainingExperiment):
    name = "deep100"
    title = "Very deep 100x240 tanh network: DFA trains, BP and FA stall"
    paper = "Nøkland 2016 (NeurIPS, arXiv 1609.01596), Sec. 5.1: 100x240 tanh, DFA 3.92% test error"
    order = 60
    full_runtime = "about 60 min (DFA 3 seeds, BP and FA 1 seed, 20 epochs; 2 workers)"
    default_seeds = {"quick": 1, "full": 3}

    def config(self, quick):
        return {"data": {"name": "mnist", "n_train": 4000 if quick else None, "n_val": 1000 if quick else 2000,
                         "n_test": 1000 if quick else None},
                "depth": 30 if quick else 100, "width": 64 if quick else 240, "epochs": 8 if quick else 20,
                "lr": {rule: 3e-3 for rule in ("bp", "fa", "dfa")} if quick else learning_rates(100)}

    def learners(self, config):
        # Nøkland's code: FA and DFA from zero forward weights and biases, BP from U[-1/sqrt(n), 1/sqrt(n)]
        arch = f"784-{config['width']}x{config['depth']}-10"
        return {rule.upper(): learner(rule, arch, config["epochs"], lr=config["lr"][rule]) for rule in ("bp", "fa", "dfa")}

    def seeds_for(self, label, config):
        return config["seeds"] if label == "DFA" else 1  # BP and FA stall on every seed; one shows it

    def deviations(self, config):
        d = [SETTINGS_NOTE, self.data_deviation(config),
             f"{config['epochs']} epochs, learning rates {config['lr']} (cosine; the 7x240 rates of nokland-mnist); "
             "DFA with every seed, BP and FA with the first (they stall on any seed). A 100-layer network costs "
             "tens of seconds per epoch and rule on 2 CPU cores; the paper trains to convergence.",
             "Why an earlier version of this experiment did not reproduce: it started every rule from "
             "U[-1/sqrt(n), 1/sqrt(n)] weights and biases and trained 312 steps at lr 3e-4. Through 100 tanh layers "
             "with that init the input's signal shrinks by about 0.58 per layer (weight std 1/sqrt(3n)), so every "
             "hidden layer above the first few carries only its bias, the same for every input: DFA's update "
             "dW_k = delta_k^T h_(k-1) then holds no information about the input and training error stays at "
             "chance (88.75%). From zero weights (Nøkland's setting) DFA grows the forward path layer by layer; "
             "on 5000 examples its training error leaves chance after about 1000 steps and reaches 12-20% by "
             "3750 steps (measured while fixing this), so the run has to be several thousand steps long."]
        if config["size"] == "quick":
            d.append(f"Quick size: {config['depth']}x{config['width']}, lr {config['lr']}, {config['epochs']} epochs "
                     f"of {config['data']['n_train']} examples.")
        return d

    def summarize(self, config, runs, out):
        tr = {k: self.final(runs, k, "train_error") for k in ("BP", "FA", "DFA")}
        loss = {k: self.final(runs, k, "train_loss") for k in tr}
        test = {k: self.final(runs, k) for k in tr}
        claims = [
            Claim("dfa_test", "DFA: test error", "3.92%", test["DFA"], unit="%", paper_value=3.92,
                  reproduced=sum(test["DFA"]) / len(test["DFA"]) <= 5.0, criterion="at or below 5%"),
            Claim("dfa_trains", "DFA: training error in the last epoch", "trains (low)", tr["DFA"], unit="%",
                  reproduced=all(d < b - 15 for d, b in zip(tr["DFA"], tr["BP"])),
                  criterion="at least 15 points below BP's"),
            Claim("bp_stalls", "BP: training error in the last epoch", "stalls (vanishing gradients)", tr["BP"], unit="%",
                  reproduced=min(tr["BP"]) > 70, criterion="> 70%"),
            Claim("fa_stalls", "FA: training error in the last epoch", "stalls", tr["FA"], unit="%",
                  reproduced=min(tr["FA"]) > 70, criterion="> 70%"),
            Claim("loss_gap", "BP minus DFA training loss in the last epoch (BCE, mean over classes)", "DFA falls, BP flat",
                  [b - d for b, d in zip(loss["BP"], loss["DFA"])],
                  reproduced=all(b - d > 0.02 for b, d in zip(loss["BP"], loss["DFA"])), criterion="> 0.02"),
        ]
        figures = [self.curves(config, runs, out, key="train_error",
                               title=f"{config['depth']}x{config['width']} tanh, MNIST: training error")]
        return claims, figures
