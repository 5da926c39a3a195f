"""Nøkland 2016, Table 1: MNIST test error of tanh networks trained with BP, FA, DFA (and IFA)."""
from __future__ import annotations

import numpy as np

from ._common import pyplot
from ._training import TrainingExperiment
from .base import Claim, register
from .nokland import SETTINGS_NOTE, learner

# Table 1 of arXiv 1609.01596, test error %.
PAPER = {"7x240": {"bp": 2.16, "fa": 2.20, "dfa": 2.32},
         "1x800": {"bp": 1.59, "fa": 1.68, "dfa": 1.68},
         "2x800": {"bp": 1.60, "fa": 1.64, "dfa": 1.74},
         "3x800": {"bp": 1.75, "fa": 1.66, "dfa": 1.70},
         "4x800": {"bp": 1.92, "fa": 1.70, "dfa": 1.83}}
RULES = ("bp", "fa", "dfa", "ifa")


@register
class NoklandMnist(TrainingExperiment):
    name = "nokland-mnist"
    title = "Table 1: tanh networks 1-4x800 and 7x240 on MNIST with BP, FA, DFA, IFA"
    paper = "Nøkland 2016 (arXiv 1609.01596), Table 1 (MNIST test error)"
    order = 80
    full_runtime = "about 25 min (1 seed, 8 epochs per network and rule)"
    default_seeds = {"quick": 1, "full": 1}
    hashed_helpers = ("_common", "_training", "nokland")

    def config(self, quick):
        nets = {"7x240": "784-240x7-10", "1x800": "784-800-10", "2x800": "784-800x2-10", "3x800": "784-800x3-10",
                "4x800": "784-800x4-10"}
        if quick:
            nets = {"1x100": "784-100-10", "2x100": "784-100x2-10"}
        return {"data": {"name": "mnist", "n_train": 2000 if quick else None, "n_val": 1000 if quick else None,
                         "n_test": 1000 if quick else None},
                "nets": nets, "epochs": 3 if quick else 8, "lr": 3e-3 if quick else 3e-4, "evals": 4}

    def learners(self, config):
        return {f"{net} {rule.upper()}": learner(rule, arch, config["epochs"], lr=config["lr"], evals=config["evals"])
                for net, arch in config["nets"].items() for rule in RULES}

    def deviations(self, config):
        return [SETTINGS_NOTE, f"Learning rate {config['lr']} instead of the code's 1e-4: with 1e-4, our few "
                "epochs leave every network far from trained; 1e-3 makes RMSprop diverge on the deeper tanh networks.",
                self.data_deviation(config),
                f"{config['epochs']} epoch(s) at lr {config['lr']} per network and rule: the paper trains each "
                "network to convergence (hundreds of epochs); 20 networks in about 25 min on 2 CPU cores allow eight, "
                "so our errors are well above the paper's and only the comparison between rules means something.",
                "The paper's Table 1 has no IFA column for MNIST; we train IFA too and report it without a paper value."]

    def summarize(self, config, runs, out):
        claims = []
        for net in config["nets"]:
            errs = {rule: self.final(runs, f"{net} {rule.upper()}") for rule in RULES}
            for rule in RULES:
                paper = PAPER.get(net, {}).get(rule)
                mean = float(np.mean(errs[rule]))
                claims.append(Claim(f"{net}_{rule}", f"{net} tanh, {rule.upper()}: test error",
                                    f"{paper}%" if paper is not None else "-", errs[rule], unit="%", paper_value=paper,
                                    reproduced=None if paper is None else abs(mean - paper) < 0.5,
                                    criterion="within 0.5 point of the paper" if paper is not None else ""))
            table = [errs[r] for r in ("bp", "fa", "dfa")]
            claims.append(Claim(f"{net}_all_train", f"{net}: BP, FA and DFA all train (worst of their test errors)",
                                "all between 1.59 and 2.32%", [max(v) for v in zip(*table)], unit="%",
                                reproduced=max(max(v) for v in table) < 40, criterion="< 40% (chance 90%)"))
        return claims, [self.bar_figure(config, runs, out)]

    def bar_figure(self, config, runs, out):
        plt = pyplot()
        nets = list(config["nets"])
        fig, ax = plt.subplots(figsize=(9, 4.4))
        width = 0.2
        for i, rule in enumerate(RULES):
            means = [np.mean(self.final(runs, f"{n} {rule.upper()}")) for n in nets]
            stds = [np.std(self.final(runs, f"{n} {rule.upper()}")) for n in nets]
            ax.bar(np.arange(len(nets)) + (i - 1.5) * width, means, width, yerr=stds, label=f"{rule.upper()} (ours)")
            paper = [PAPER.get(n, {}).get(rule) for n in nets]
            if any(p is not None for p in paper):
                ax.scatter(np.arange(len(nets)) + (i - 1.5) * width, [p if p is not None else np.nan for p in paper],
                           marker="_", s=200, color="k", zorder=3, label="paper" if i == 0 else None)
        ax.set(xticks=np.arange(len(nets)), xticklabels=nets, ylabel="test error (%)",
               title=f"MNIST test error after {config['epochs']} epoch(s) (black: paper's Table 1)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = "nokland-mnist-test-error.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return name
