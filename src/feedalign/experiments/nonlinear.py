"""Lillicrap et al.'s nonlinear task: tanh networks learn the map of a fixed random tanh network; BP, FA, shallow.

The paper (arXiv 1411.0247v1, as a second, public transcription describes it: shared/notes/paper-settings.md)
trains 30-20-10 and 30-20-10-10 tanh networks on the input-output map of a fixed random target network and
averages 20 runs; it plots the error curves and gives no number, so the claims here are the curves'
ordering: FA learns the task (below shallow learning, which trains only the output layer) and BP too. The
target network is feedalign's ``nonlinear-task`` (a 30-20-10-10 tanh teacher with unit-variance
pre-activations, ``x ~ N(0, I_30)``); the learning rate of each learner is chosen on validation.
"""
from __future__ import annotations

from ._training import TrainingExperiment
from .base import Claim, register
from .verdicts import Compare

NETS = {"30-20-10": "30-20-10", "30-20-10-10": "30-20-10-10"}
LEARNERS = ("BP", "FA", "shallow")
LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@register
class NonlinearTask(TrainingExperiment):
    name = "nonlinear"
    title = "Nonlinear task: 30-20-10 and 30-20-10-10 tanh networks learn a random tanh network (BP, FA, shallow)"
    paper = ("Lillicrap et al., arXiv 1411.0247v1, nonlinear task (30-20-10 and 30-20-10-10 tanh networks, a fixed "
             "random target network, 20 runs; curves, no number)")
    order = 25
    full_runtime = "about 10 min (a validation search of 6 learning rates x 6 learners, then 5 seeds x 6 learners)"
    default_seeds = {"quick": 1, "full": 5}
    searched = ("learning rate",)

    def config(self, quick):
        grid = (0.01, 0.03) if quick else LR_GRID
        nets = ["30-20-10"] if quick else list(NETS)
        labels = [f"{net} {k}" for net in nets for k in LEARNERS]
        return {"nets": nets, "data": {"name": "nonlinear-task", "n_train": 2000 if quick else None, "n_val": 2000, "n_test": None},
                "epochs": 3 if quick else 30, "batch_size": 64, "selection": "validation",
                "search": {"learners": {label: [{"lr": lr} for lr in grid] for label in labels}, "seeds": 1,
                           "epochs": None, "n_val": 2000, "pick": "best"}}

    def learners(self, config):
        out = {}
        for net in config["nets"]:
            arch = NETS[net]
            base = {"architecture": arch, "activation": "tanh", "loss": "mse", "optimizer": "sgd", "lr": 0.01,
                    "momentum": 0.9, "batch_size": config["batch_size"], "epochs": config["epochs"],
                    "schedule": "cosine"}
            out[f"{net} BP"] = dict(base, rule="bp")
            out[f"{net} FA"] = dict(base, rule="fa")
            out[f"{net} shallow"] = dict(base, rule="bp", frozen="hidden")
        return out

    def comparisons(self, config):
        out = {}
        for net in config.get("nets", NETS):
            out[f"{net}_fa_below_shallow"] = Compare(
                "check", holds=lambda v: max(v) < 1.0, criterion="FA's test MSE below shallow's on every seed (ratio < 1)",
                finding="FA's hidden learning does not beat a fixed hidden layer here",
                min_seeds=1 if config.get("size") == "quick" else 3)
        return out

    def deviations(self, config):
        return [f"Target network: feedalign's nonlinear-task (30-20-10-10 tanh teacher, U[-1, 1] weights scaled to "
                "unit-variance pre-activations; the paper's teacher scale is not given). "
                f"{config['data']['n_train'] or 8000} training, {config['data']['n_val']} validation and 2000 test "
                "examples.",
                f"SGD with momentum 0.9, batch {config['batch_size']}, {config['epochs']} epochs with a cosine schedule, "
                "squared error; each learner's learning rate chosen on validation (search below). The paper's "
                "optimiser for this task is not given; it plots curves, so the claims are orderings."]

    def summarize(self, config, runs, out):
        claims = []
        for net in config["nets"]:
            mse = {k: [e / 100.0 for e in self.final(runs, f"{net} {k}")] for k in LEARNERS}
            for k in LEARNERS:
                claims.append(Claim(f"{net}_{k.lower()}", f"{net} {k}: test MSE at the best validation epoch",
                                    "curve (no number)", mse[k]))
            claims.append(Claim(f"{net}_fa_below_shallow", f"{net}: FA's test MSE / shallow's", "FA below shallow",
                                [f / s for f, s in zip(mse["FA"], mse["shallow"])]))
            # FA against BP on the scale the paper's curves show them, shallow's error: a ratio FA / BP would say
            # "ten thousand times worse" where BP fits the teacher to 1e-7 and both lie far below shallow
            claims.append(Claim(f"{net}_fa_gap_over_shallow", f"{net}: (FA's test MSE - BP's) / shallow's",
                                "FA close to BP (curves)",
                                [(f - b) / s for f, b, s in zip(mse["FA"], mse["BP"], mse["shallow"])]))
        figures = [self.curves(config, runs, out, key="val_loss", log=True, ylabel="validation MSE",
                               panels=[[f"{net} {k}" for k in LEARNERS] for net in config["nets"]],
                               title="Nonlinear task: validation MSE (mean ± std over seeds)")]
        return claims, figures
