"""The wider family on LeNet-5 / Fashion-MNIST, beside BioTorch's published errors.

``feedalign.lenet5()`` (tanh) converted with each rule, trained with the same SGD
loop (``loss.backward(); optimizer.step()``; the rule's own phase between steps,
:meth:`~feedalign.rules.LearningRule.after_step`, runs ``mirror_steps`` times every
``mirror_every`` batches: ``wm``'s mirror phase), test error after training, and the
alignment angle over training: the angle between each hidden layer's weight update
under the rule and the true gradient (``feedalign.exact_gradients``) on a fixed
validation probe, averaged over the hidden layers (BP is 0 by definition).

BioTorch's numbers (Sanfiz & Akrout 2021, jsalbert/biotorch ``Benchmarks.md``,
Fashion-MNIST LeNet, test error %) come from full training (100 epochs, 60k
examples); on a shared 2-core CPU this experiment trains on a subset for a few
epochs, so its errors are higher and only the ordering is comparable.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import feedalign
import feedalign.data
from feedalign.diagnostics.angles import angle
from feedalign.rules import trainable_layers

from ._common import mean_std_band, pyplot
from .base import Claim, Experiment, register

RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "wm", "drtp")
# Test error (%) of LeNet on Fashion-MNIST, BioTorch Benchmarks.md; kp, wm, drtp are not listed there.
BIOTORCH = {"bp": 9.2, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "brsf": 10.02, "frsf": 9.61}


def alignment_angle(model, x, y) -> float:
    """Mean over hidden layers of the angle (degrees) between the rule's and the true weight gradient."""
    layers = trainable_layers(model)[:-1]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    rule = [layer.weight.grad.clone() for layer in layers]
    model.zero_grad(set_to_none=True)
    with feedalign.exact_gradients(model):
        F.cross_entropy(model(x), y).backward()
    exact = [layer.weight.grad.clone() for layer in layers]
    model.zero_grad(set_to_none=True)
    values = [angle(a, b)[0] for a, b in zip(rule, exact)]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def run_family(rule: str, data, *, seed: int, epochs: int, n_train: int, batch_size: int = 64, lr: float = 0.05,
               momentum: float = 0.9, weight_decay: float = 5e-4, probe: int = 256, records_per_epoch: int = 4,
               mirror_every: int = 10, mirror_steps: int = 2) -> dict:
    """Train LeNet-5 with ``rule`` on ``data`` (a :class:`~feedalign.data.splits.DataSplits`, images not
    flattened); returns test error (%), run time and the alignment-angle curve."""
    torch.manual_seed(seed)
    model = feedalign.convert(feedalign.lenet5(in_channels=data.train_x.shape[1]), rule, seed=seed)
    learning_rule = feedalign.learning_rule(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = data.train_x[:n_train], data.train_y[:n_train]
    px, py = data.val_x[:probe], data.val_y[:probe]
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    record_every = max(1, steps_per_epoch // records_per_epoch)
    curve, step, start = [(0, alignment_angle(model, px, py))], 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            batch = x_train[index], y_train[index]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch[0]), batch[1]).backward()
            optimizer.step()
            step += 1
            if step % mirror_every == 0:  # wm: mirror_steps steps of noise_std 1, lr 0.1
                for _ in range(mirror_steps):
                    learning_rule.after_step(model, batch, step, generator=g)
            if step % record_every == 0:
                curve.append((step, alignment_angle(model, px, py)))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        wrong = sum(int((model(data.test_x[i:i + 1000]).argmax(1) != data.test_y[i:i + 1000]).sum())
                    for i in range(0, len(data.test_x), 1000))
    return {"rule": rule, "test_error": 100.0 * wrong / len(data.test_x), "seconds": seconds,
            "angle_steps": [s for s, _ in curve], "angles": [a for _, a in curve]}


@register
class Family(Experiment):
    name = "family"
    title = "LeNet-5 on Fashion-MNIST: bp, fa, dfa, usf, brsf, frsf, kp, wm, drtp"
    paper = ("Sanfiz & Akrout 2021 (BioTorch, Benchmarks.md, Fashion-MNIST LeNet); rules: Lillicrap et al. 2016, "
             "Nøkland 2016, Liao et al. 2016, Akrout et al. 2019, Frenkel et al. 2021")
    order = 90
    full_runtime = "about 14 min (3 seeds, 9 rules, 3 epochs of 40000 examples)"
    default_seeds = {"quick": 2, "full": 3}
    hashed_helpers = ()
    library_sources = Experiment.library_sources + ("diagnostics",)

    def config(self, quick):
        return {"dataset": "fashion-mnist", "rules": list(RULES), "n_train": 5000 if quick else 40000,
                "epochs": 1 if quick else 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                "mirror_every": 10, "mirror_steps": 2}

    def deviations(self, config):
        return [f"Scaled down for a shared 2-core CPU: {config['n_train']} training examples, {config['epochs']} "
                f"epoch(s), one SGD setting for every rule (lr {config['lr']}, momentum {config['momentum']}, "
                f"weight decay {config['weight_decay']}); BioTorch trains on 60k examples for 100 epochs with "
                "per-rule tuned settings, so our errors are higher; compare orderings, not values.",
                "LeNet-5 here: tanh, max-pooling, padding 2 on the first conv (feedalign.lenet5).",
                "Alignment angle: the rule's weight update against the true gradient, mean over hidden layers, "
                "on 256 validation images."]

    def run_seed(self, config, seed, out):
        data = feedalign.data.load(config["dataset"], flatten=False, seed=seed)
        return {rule: run_family(rule, data, seed=seed, epochs=config["epochs"], n_train=config["n_train"],
                                 batch_size=config["batch_size"], lr=config["lr"], momentum=config["momentum"],
                                 weight_decay=config["weight_decay"], mirror_every=config["mirror_every"],
                                 mirror_steps=config["mirror_steps"])
                for rule in config["rules"]}

    def summarize(self, config, runs, out):
        claims = []
        for rule in config["rules"]:
            errors = [r[rule]["test_error"] for r in runs]
            paper = BIOTORCH.get(rule)
            claims.append(Claim(f"{rule}_error", f"{rule}: LeNet-5 Fashion-MNIST test error",
                                f"{paper}" if paper is not None else "not in BioTorch's table", errors, unit="%",
                                paper_value=paper))
            claims.append(Claim(f"{rule}_angle", f"{rule}: final alignment angle to the true gradient",
                                "-", [r[rule]["angles"][-1] for r in runs], unit="deg"))
        return claims, [self.figure(config, runs, out)]

    def figure(self, config, runs, out):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 5))
        for rule in config["rules"]:
            steps = runs[0][rule]["angle_steps"]
            curves = [r[rule]["angles"] for r in runs]
            mean_std_band(ax, steps, curves, rule)
        ax.set(xlabel="training step", ylabel="angle to the true gradient (deg, hidden layers)",
               title="LeNet-5 / Fashion-MNIST: alignment over training", ylim=(0, 100))
        ax.legend(ncol=3, fontsize=8)
        fig.tight_layout()
        name = "family-alignment.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return name
