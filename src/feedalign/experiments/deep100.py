"""Nøkland 2016: a 100-layer network of 240 tanh units on MNIST; DFA trains it, BP and FA do not.

Beside the paper's setting (BP from U[-1/sqrt(n), 1/sqrt(n)], FA and DFA from zero weights), a BP control
starts from orthogonal weights, a sound init for a deep tanh network, so that "BP stalls" is not read as
an artifact of the init. Every learner's learning rate is chosen on the validation split
(``config["search"]``); the paper's numbers come from the registry (:mod:`feedalign.experiments.papers`).
"""
from __future__ import annotations

from ._training import TrainingExperiment
from .base import Claim, register
from .nokland import SETTINGS_NOTE, learner, learning_rates
from .verdicts import Compare

LABELS = ("BP", "FA", "DFA", "BP, orthogonal init")
CHANCE = 88.65  # % training error of a constant guess of MNIST's most frequent class
# Each learner's learning rates. Nøkland's 1e-4 and up to 1e-3 for all; DFA's first search chose 1e-3, so 2e-3
# joins its grid; from orthogonal weights BP learns only below 1e-4 (scripts/deep100_probe.py), so the learners
# that stall are searched down to 1e-5, the control to 3e-6: "BP stalls" must not be a rate too large.
LR_GRIDS = {"BP": (1e-5, 3e-5, 1e-4, 3e-4, 5e-4, 1e-3), "FA": (1e-5, 3e-5, 1e-4, 3e-4, 5e-4, 1e-3),
            "DFA": (1e-4, 3e-4, 5e-4, 1e-3, 2e-3), "BP, orthogonal init": (3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 5e-4, 1e-3)}


@register
class Deep100(TrainingExperiment):
    name = "deep100"
    title = "Very deep 100x240 tanh network: DFA trains, BP and FA stall (BP with a sound init as control)"
    paper = ("Nøkland 2016 (NeurIPS, arXiv 1609.01596), abstract ('zero training error even in very deep networks') "
             "and the 100x240 tanh row (DFA 3.92% test error, unverified)")
    order = 60
    full_runtime = ("about 10 h on 2 workers: a validation search (5-7 learning rates x 4 learners), then 4 learners "
                    "x 3 seeds, 20 epochs of a 100-layer network; see docs/reproduction-plan.md")
    default_seeds = {"quick": 1, "full": 3}
    searched = ("learning rate",)
    searched_on_test_before = True
    retired = {"loss_gap": "'BP minus DFA training loss > 0.02' could not fail beside a gap of 0.3; the training "
                           "errors say the same"}

    def config(self, quick):
        if quick:
            search = {"learners": {"DFA": [{"lr": 1e-3}, {"lr": 3e-3}]}, "seeds": 1, "epochs": None, "n_val": 1000,
                      "pick": "final"}
        else:
            search = {"learners": {label: [{"lr": lr} for lr in LR_GRIDS[label]] for label in LABELS}, "seeds": 1,
                      "epochs": None, "n_val": 2000, "pick": "final"}
        return {"data": {"name": "mnist", "n_train": 4000 if quick else None, "n_val": 1000 if quick else 2000,
                         "n_test": 1000 if quick else None},
                "depth": 30 if quick else 100, "width": 64 if quick else 240, "epochs": 8 if quick else 20,
                "selection": "validation", "search": search,
                "lr": {rule: 3e-3 for rule in ("bp", "fa", "dfa")} if quick else learning_rates(100)}

    def learners(self, config):
        # Nøkland's code: FA and DFA from zero forward weights and biases, BP from U[-1/sqrt(n), 1/sqrt(n)]
        arch = f"784-{config['width']}x{config['depth']}-10"
        out = {rule.upper(): learner(rule, arch, config["epochs"], lr=config["lr"][rule]) for rule in ("bp", "fa", "dfa")}
        out["BP, orthogonal init"] = {**out["BP"], "init": "orthogonal"}
        return out

    def comparisons(self, config):
        stall = lambda v: min(v) >= 80.0  # noqa: E731
        if config.get("depth") != 100 or config.get("width") != 240:  # quick size: no paper number for the net
            return {"dfa_trains": Compare("check", holds=lambda v: max(v) < 80.0, min_seeds=1,
                                          criterion="DFA's last-epoch training error below 80 % (chance 88.65 %)",
                                          finding="DFA did not leave chance at the quick size"),
                    "bp_stalls": Compare("check", holds=stall, min_seeds=1,
                                         criterion="BP's last-epoch training error at least 80 %")}
        budget = (f"the budget: {config['epochs']} epochs here against 300 by default in Nøkland's code "
                  f"(anokland/dfa-torch), which trains towards zero training error; its 300 would make the reported "
                  f"runs {300 / config['epochs']:g} times as long")
        return {
            "dfa_test": Compare("value", number="nokland2016/deep/100x240/dfa", finding=budget),
            "dfa_trains": Compare("value", number="nokland2016/abstract/zero-train-error", finding=budget),
            "bp_stalls": Compare("check", holds=stall,
                                 criterion="last-epoch training error at least 80 % on every seed (chance 88.65 %)",
                                 finding="BP trains the 100x240 network from Nøkland's init"),
            "fa_stalls": Compare("check", holds=stall,
                                 criterion="last-epoch training error at least 80 % on every seed (chance 88.65 %)",
                                 finding="FA trains the 100x240 network"),
        }

    def deviations(self, config):
        d = [SETTINGS_NOTE, self.data_deviation(config),
             f"{config['epochs']} epochs (cosine), each learner at the learning rate chosen on the validation split "
             "(search below); every learner with every seed. A 100-layer network costs tens of seconds per epoch "
             "and rule on 2 CPU cores; the paper trains to convergence, so a training error above zero after 20 "
             "epochs is a miss of this budget, not necessarily of DFA.",
             "Control: BP from orthogonal weights (zero biases), a sound init for a deep tanh network, beside BP "
             "from Nøkland's U[-1/sqrt(n), 1/sqrt(n)]: if it trains, BP's stall is the init's, not depth's alone. "
             "From Nøkland's init the input's signal vanishes within a few dozen layers and the gradient reaching "
             "the first layers underflows to zero; from orthogonal weights both keep their size through all 100 "
             "layers, but RMSprop at Nøkland's rate and above (1e-4 to 1e-3) wrecks the network within its first "
             "hundred steps, while 1e-5 trains it (scripts/deep100_probe.py). So the learners that stall are "
             "searched down to 1e-5 and the control to 3e-6 (grids below).",
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
        labels = [label for label in LABELS if label in runs[0]]
        tr = {k: self.final(runs, k, "train_error") for k in labels}
        test = {k: self.final(runs, k) for k in labels}
        claims = [
            Claim("dfa_test", "DFA: test error (at the best validation epoch)", "-", test["DFA"], unit="%"),
            Claim("dfa_trains", "DFA: training error in the last epoch", "zero training error", tr["DFA"], unit="%"),
            Claim("bp_stalls", "BP (Nøkland's init): training error in the last epoch", "stalls", tr["BP"], unit="%"),
            Claim("fa_stalls", "FA: training error in the last epoch", "stalls", tr["FA"], unit="%"),
        ]
        if "BP, orthogonal init" in tr:
            claims += [Claim("bp_orthogonal_train", "control: BP from orthogonal weights, training error in the last "
                             "epoch", "(not in the paper)", tr["BP, orthogonal init"], unit="%"),
                       Claim("bp_orthogonal_test", "control: BP from orthogonal weights, test error", "(not in the paper)",
                             test["BP, orthogonal init"], unit="%")]
        figures = [self.curves(config, runs, out, key="train_error",
                               title=f"{config['depth']}x{config['width']} tanh, MNIST: training error")]
        return claims, figures
