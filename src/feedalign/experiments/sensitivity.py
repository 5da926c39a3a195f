"""The review's sensitivity observations, run as sweeps (``feedalign.sweeps``, local backend).

The review (fa-dfa-review, "Reproducing the results") reports, from its own runs on
MNIST with 784-200-100-10 networks: starting weights can't be too small, can't be
too large, and zeros don't work; a high-ish learning rate is needed; weight decay is
essential for DFA; lots of configurations refuse to train; some runs gain accuracy,
then lose it. Two sweeps test these (the grids of ``examples/sweeps/sensitivity-*.toml``,
shortened): forward-init scale (U[-s, s], s = 0 is all-zero weights and biases) against
learning rate for BP, FA and DFA, and weight decay against learning rate for DFA.
:func:`feedalign.sweeps.sensitivity_findings` decides each observation per rule on the
swept grid; every finding is one claim here, its evidence the "ours" column.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from feedalign.sweeps import (
    run_sweep,
    sensitivity_findings,
    sensitivity_report,
    spec_from_dict,
)

from .base import Claim, SeededExperiment, register

REVIEW = {
    "zero-init": "zeros DON'T work",
    "init-too-small": "starting weights can't be too small",
    "init-too-large": "starting weights can't be too large",
    "high-lr": "need high-ish learning rate",
    "weight-decay": "weight decay essential (direct feedback)",
    "refusals": "lots of configurations refuse to train",
    "collapse": "network began getting better accuracy, then loses accuracy",
}
SWEEPS = ("init-lr", "dfa-wd", "review-code")
# The review's own code (xuexue/randombp): sigmoid units, N(0, 0.2^2) weights and feedback, softmax cross-entropy,
# SGD on batches of 1000, 3000 steps, and its "decay" subtracted from every weight after each step.
REVIEW_CODE = {"activation": "sigmoid", "init": "gaussian", "init_scale": 0.2, "feedback_init": "gaussian",
               "feedback_scale": 0.2, "loss": "cross_entropy", "batch_size": 1000, "weight_decay_mode": "constant"}


@register
class Sensitivity(SeededExperiment):
    name = "sensitivity"
    title = "The review's sensitivity observations as sweeps: init scale x learning rate, weight decay x learning rate"
    paper = "FA/DFA review slides, 'Reproducing the results' (observations on MNIST 784-200-100-10); sweeps as in examples/sweeps/"
    order = 45
    full_runtime = "about 35 min (2 worker processes)"
    default_seeds = {"quick": 1, "full": 1}

    def config(self, quick):
        if quick:  # MNIST-1D (generated locally), a tiny grid: under a minute on 2 cores
            base = {"dataset": "mnist1d", "architecture": "40-200-100-10", "epochs": 3, "validation_size": None}
            return {"base": base, "workers": 2,
                    "init_lr": {"rule": ["bp", "fa", "dfa"], "init_scale": [0.0, 0.01, 0.1, 1.0], "lr": [0.001, 0.05, 0.2]},
                    "dfa_wd": {"weight_decay": [0.0, 0.001], "lr": [0.01, 0.1]}, "dfa_wd_init_scale": 0.05,
                    "review_code": {"rule": ["fa", "dfa"], "weight_decay": [0.0, 1e-4], "lr": [0.05, 0.5, 2.0]},
                    "review_code_epochs": 5}
        # MNIST, 784-200-100-10 tanh; 50000 of the 60000 training images are held out as the validation split, so
        # each run trains on 10000 examples (the sweep engine has no training-subset setting) for 10 epochs
        base = {"dataset": "mnist", "architecture": "784-200-100-10", "epochs": 10, "validation_size": 50000}
        return {"base": base, "workers": 2,
                "init_lr": {"rule": ["bp", "fa", "dfa"], "init_scale": [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0],
                            "lr": [0.0001, 0.001, 0.01, 0.05, 0.2]},
                "dfa_wd": {"weight_decay": [0.0, 0.00001, 0.0001, 0.001, 0.01], "lr": [0.001, 0.01, 0.05, 0.2]},
                "dfa_wd_init_scale": 0.05,
                # all 50000 training images in batches of 1000: 60 epochs are the review's 3000 steps
                "review_code": {"rule": ["fa", "dfa"], "weight_decay": [0.0, 1e-6, 1e-5, 1e-4],
                                "lr": [0.05, 0.5, 2.0]},
                "review_code_epochs": 60}

    def specs(self, config: dict, seed: int, root: Path) -> list:
        base = {k: v for k, v in config["base"].items() if v is not None}
        base.update(activation="tanh", init="uniform", optimizer="sgd", momentum=0.0, batch_size=64, seed=seed,
                    alignment_every=0)
        common = {"out_dir": str(root), "threads_per_run": 1, "workers": config["workers"]}
        init_lr = spec_from_dict(dict(common, name="init-lr", plot=[["init_scale", "lr"]], base=dict(base),
                                      grid=dict(config["init_lr"])), source="sensitivity init-lr")
        wd_base = dict(base, rule="dfa", init_scale=config["dfa_wd_init_scale"])
        dfa_wd = spec_from_dict(dict(common, name="dfa-wd", plot=[["weight_decay", "lr"]], base=wd_base,
                                     grid=dict(config["dfa_wd"])), source="sensitivity dfa-wd")
        code_base = dict(base, **REVIEW_CODE, epochs=config["review_code_epochs"])
        if config["size"] == "full":
            code_base.update(validation_size=10000)
        review_code = spec_from_dict(dict(common, name="review-code", plot=[["weight_decay", "lr"]], base=code_base,
                                          grid=dict(config["review_code"])), source="sensitivity review-code")
        return [init_lr, dfa_wd, review_code]

    def run_seed(self, config, seed, out):
        root = Path(out) / "sweeps" / f"seed{seed}"
        if root.exists():  # this experiment's own resuming decides what is current: a rerun starts clean
            shutil.rmtree(root)
        figures = []
        for spec in self.specs(config, seed, root):
            result = run_sweep(spec, backend="local", workers=config["workers"], log=lambda *a: None)
            if seed == 0:
                for path in result.figures:
                    if path.name.startswith("heatmap-"):
                        name = f"sensitivity-{spec.name}-{path.name[len('heatmap-'):]}"
                        shutil.copyfile(path, Path(out) / name)
                        figures.append(name)
        dirs = [root / name for name in SWEEPS]
        (Path(out) / f"sensitivity-seed{seed}.md").write_text(sensitivity_report([str(d) for d in dirs]))
        findings = [f.to_dict() for f in sensitivity_findings([str(d) for d in dirs])]
        return {"findings": findings, "figures": figures}

    def summarize(self, config, runs, out):
        claims = []
        first = runs[0]["findings"]
        for i, f in enumerate(first):
            same = [r["findings"][i] for r in runs if i < len(r["findings"])]
            holds = [g["holds"] for g in same]
            verdict = None if any(h is None for h in holds) else all(holds)
            seeds = f"; holds in {sum(bool(h) for h in holds)}/{len(holds)} seeds" if len(runs) > 1 else ""
            claims.append(Claim(f"{f['key']}:{f['rule']}:{f['sweep']}", f"{f['rule'].upper()} ({f['sweep']} sweep): {f['text']}",
                                REVIEW.get(f["key"], f["text"]), [1.0 if h else 0.0 for h in holds],
                                reproduced=verdict, evidence=f["evidence"] + seeds,
                                criterion="feedalign.sweeps.sensitivity_findings on the swept grid (margin 5 points "
                                          "of best validation accuracy)"))
        return claims, runs[0]["figures"]

    def deviations(self, config):
        b = config["base"]
        grid = config["init_lr"]
        d = [f"Data: {b['dataset']}, {b['architecture']} tanh, plain SGD (momentum 0), batch 64, {b['epochs']} epochs, "
             "1 seed per grid point. Forward weights and biases U[-s, s] (s = 0: all zero); feedback matrices at each "
             "rule's default scale.",
             f"Grid: rules {', '.join(grid['rule'])}; init scale {grid['init_scale']}; lr {grid['lr']}. Weight decay "
             f"sweep (DFA, init scale {config['dfa_wd_init_scale']}): weight decay {config['dfa_wd']['weight_decay']} "
             f"x lr {config['dfa_wd']['lr']}.",
             f"Review-code sweep ({config['review_code_epochs']} epochs): the review's own settings (sigmoid units, "
             "weights and feedback N(0, 0.2^2), softmax cross-entropy, SGD on batches of 1000, its constant decay "
             "w - lr*g - decay) for rules "
             f"{', '.join(config['review_code']['rule'])}: decay {config['review_code']['weight_decay']} x lr "
             f"{config['review_code']['lr']}, run long enough for a collapse to show.",
             "Outcomes (trained / refused / collapsed) are the training engine's labels from the per-epoch validation "
             "accuracy; with few epochs a collapse has little room to show."]
        if config["size"] == "full":
            d.insert(1, "Scaled to about 12 minutes on 2 shared cores: each run trains on 10000 MNIST examples (50000 "
                        "held out as validation: the sweep engine has no training-subset setting) for "
                        f"{b['epochs']} epochs; the review trained on all of MNIST (examples/sweeps/ use 10-20 epochs).")
        else:
            d.insert(1, "Quick size: MNIST-1D (40 inputs, generated locally) instead of MNIST, a tiny grid, 3 epochs.")
        return d
