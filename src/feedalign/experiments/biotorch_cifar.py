"""BioTorch's CIFAR-10 benchmark (Sanfiz & Akrout 2021, arXiv 2108.13446; github.com/jsalbert/biotorch,
``Benchmarks.md``): ResNet-20 top-1 test error with BP, FA, DFA, uSF, brSF and frSF (kp, wm and drtp as
extra rows without a published value).

BioTorch's settings (``benchmark_configs/cifar10/resnet_20/sgd/*.yaml``, ``biotorch/datasets/cifar.py``
``CIFAR10Benchmark``, ``biotorch/models/small_resnet.py``), all of which we keep:

- ResNet-20 of He et al. 2016 with BatchNorm and option-A shortcuts (:class:`feedalign.models.CifarResNet`);
  Xavier-uniform forward weights, zero biases;
- 45000 training / 5000 validation images, test error of the epoch with the best validation accuracy on the
  10000 test images;
- per-channel normalisation, random 32x32 crop of the image padded by 4 and horizontal flip (training only);
- SGD, momentum 0.9, weight decay 1e-4, batch 128, cross-entropy, 250 epochs, learning rate 0.1 (DFA 0.001)
  divided by 10 after epochs 100, 150 and 200; one seed (2021 there).

Where we differ: the feedback matrices are drawn with feedalign's default U[-1/sqrt(fan_in), 1/sqrt(fan_in)]
where BioTorch draws them Xavier-uniform like the forward weights (U[-sqrt(6/(fan_in+fan_out)), ...]); the
sign-symmetry rules do not depend on that scale's value, FA and DFA only through it. Normalisation uses the
statistics of the 45000 training images (BioTorch's constants are those of all 50000). The extra rules take
the learning rate of their family (kp, wm: 0.1; drtp: DFA's 0.001).

Full size is meant for a GPU (``device = auto``): 9 runs x 250 epochs of ResNet-20. On this project's
2-core CPU one ResNet-20 step at batch 128 takes about 1 s (``benchmarks/resnet_step.py``), so one epoch is
about 6-7 min and the full table months; ``--quick`` trains two steps per rule on a small slice, to check
the pipeline, and its numbers say nothing about the paper's.
"""
from __future__ import annotations

import numpy as np

from ..data import DatasetError, load
from ..data.store import data_root
from ._training import TrainingExperiment
from .base import Claim, DataUnavailable, register
from .plotting import pyplot, save_figure

# Benchmarks.md, CIFAR 10 table, column "ResNet-20" (SGD): top-1 test error %.
PAPER = {"bp": 8.63, "fa": 32.16, "dfa": 45.94, "usf": 10.05, "brsf": 11.02, "frsf": 11.2}
EXTRA = ("kp", "wm", "drtp")
LEARNING_RATE = {"bp": 0.1, "fa": 0.1, "dfa": 0.001, "usf": 0.1, "brsf": 0.1, "frsf": 0.1, "kp": 0.1, "wm": 0.1,
                 "drtp": 0.001}
# BioTorch's Config fields, but the rule, its learning rate and the epochs.
BIOTORCH = {"architecture": "resnet20", "init": "xavier", "normalize": "channel", "augment": "crop-flip",
            "loss": "cross_entropy", "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
            "schedule": "multistep", "gamma": 0.1}


@register
class BiotorchCifar(TrainingExperiment):
    name = "biotorch-cifar"
    title = "BioTorch benchmark: ResNet-20 on CIFAR-10 with BP, FA, DFA, uSF, brSF, frSF (kp, wm, drtp extra)"
    paper = "Sanfiz & Akrout 2021 (BioTorch, arXiv 2108.13446), Benchmarks.md, CIFAR-10 ResNet-20 (SGD) top-1 error"
    order = 200
    full_runtime = ("meant for a GPU: 9 runs x 250 epochs of ResNet-20; on 2 CPU cores one epoch is about "
                    "6-7 min per run (benchmarks/resnet_step.py)")
    default_seeds = {"quick": 1, "full": 1}

    def config(self, quick):
        if quick:
            return {"data": {"name": "cifar10", "n_train": 64, "n_val": 32, "n_test": 64}, "epochs": 1,
                    "batch_size": 32, "milestones": "1", "device": "cpu"}
        return {"data": {"name": "cifar10", "n_train": None, "n_val": 5000, "n_test": None}, "epochs": 250,
                "batch_size": 128, "milestones": "100,150,200", "device": "auto"}

    def learners(self, config):
        return {rule: {**BIOTORCH, "rule": rule, "lr": LEARNING_RATE[rule], "epochs": config["epochs"],
                       "batch_size": config["batch_size"], "milestones": config["milestones"]}
                for rule in (*PAPER, *EXTRA)}

    def check_data(self, config):
        """CIFAR-10 must be on disk, never downloaded by a reproduction (see :func:`_require_cifar`)."""
        _require_cifar(config["data"]["name"], config["data"]["n_val"])

    def deviations(self, config):
        d = config["data"]
        out = [f"Data: CIFAR-10, {d['n_train'] or 'all 45000'} training images, {d['n_val']} validation (held out "
               f"of the 50000 training images, chosen by the seed), {d['n_test'] or 10000} test; test error at the "
               "epoch of best validation accuracy, as BioTorch.",
               "Feedback matrices U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (feedalign's default) where BioTorch draws "
               "them Xavier-uniform; normalisation by the 45000 training images' statistics.",
               "kp, wm and drtp are extra rows (BioTorch has none): learning rate 0.1 for kp and wm, 0.001 for drtp "
               "(DFA's)."]
        if config["size"] == "quick":
            out.append(f"Quick size: {config['epochs']} epoch(s) of batch {config['batch_size']} on a small "
                       "slice; checks the pipeline only, its errors are not comparable with the paper's.")
        return out

    def summarize(self, config, runs, out):
        quick = config["size"] == "quick"
        claims = []
        for rule in (*PAPER, *EXTRA):
            errs = self.final(runs, rule)
            paper = PAPER.get(rule)
            check = None if quick or paper is None else float(np.mean(errs)) <= paper + 2.0
            claims.append(Claim(f"resnet20_{rule}", f"ResNet-20, {rule}: CIFAR-10 test error",
                                f"{paper}%" if paper is not None else "-", errs, unit="%", paper_value=paper,
                                reproduced=check,
                                criterion="" if check is None else "within 2 points of BioTorch's, or lower"))
        sign = [float(np.mean(self.final(runs, r))) for r in ("usf", "brsf", "frsf")]
        random = [float(np.mean(self.final(runs, r))) for r in ("fa", "dfa")]
        gap = min(random) - max(sign)
        claims.append(Claim("sign_beats_random", "sign-symmetry (uSF, brSF, frSF) beats random feedback (FA, DFA): "
                            "best of FA/DFA minus worst of the sign rules (points)",
                            f"{min(PAPER['fa'], PAPER['dfa']) - max(PAPER[r] for r in ('usf', 'brsf', 'frsf')):.2f}",
                            [gap], reproduced=None if quick else gap > 10.0,
                            criterion="" if quick else "more than 10 points"))
        return claims, [self.bar_figure(runs, out)]

    def bar_figure(self, runs, out):
        plt = pyplot()
        rules = (*PAPER, *EXTRA)
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ours = [float(np.mean(self.final(runs, r))) for r in rules]
        ax.bar(np.arange(len(rules)), ours, 0.6, label="ours")
        ax.scatter(np.arange(len(PAPER)), list(PAPER.values()), marker="_", s=300, color="k", zorder=3,
                   label="BioTorch Benchmarks.md")
        ax.set(xticks=np.arange(len(rules)), xticklabels=rules, ylabel="test error (%)",
               title="ResNet-20 on CIFAR-10")
        ax.legend()
        return save_figure(fig, out, "biotorch-cifar-test-error.png")


def _require_cifar(name: str, validation_size: int) -> None:
    """CIFAR-10 must be on disk (user folder or cache), loadable with ``validation_size`` held out: a
    reproduction never starts a 163 MB download by itself."""
    try:
        load(name, validation_size=validation_size, download=False)
    except DatasetError as err:
        if data_root(None) is not None and any(data_root(None).glob("**/data_batch_1")):
            raise DataUnavailable(str(err).strip().splitlines()[0]) from None  # there, but unusable: say why
        raise DataUnavailable("CIFAR-10 is not on this machine. Supply it with `feedalign data fetch cifar10` "
                              "(163 MB from cs.toronto.edu), or put its python batches (the folder "
                              "cifar-10-batches-py/ from cifar-10-python.tar.gz) under a folder and set "
                              "FEEDALIGN_DATA to that folder") from None
