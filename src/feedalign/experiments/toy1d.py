"""Lillicrap et al. 2016, Fig. 3: the two-weight linear network y = W W0 x learning y = x.

A real ``nn.Sequential(Linear(1, 1), Linear(1, 1))`` (no biases) converted with
``feedalign.convert(..., "fa")``, its output layer's feedback buffer written to
B = 1, trained by plain gradient descent with autograd; BP is the same network
converted with ``"bp"``. The vector fields are the same updates evaluated on a grid.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from feedalign.data.synthetic import toy1d

from ..convert import convert, feedback_matrices
from .base import Claim, SeededExperiment, register
from .plotting import pyplot, save_figure


def inputs(n: int, seed: int) -> torch.Tensor:
    """``n`` inputs of the toy task (``feedalign.data`` 'toy1d'), rescaled to E[x^2] = 1 so that the
    solutions are exactly W0 W = 1; shape (n, 1)."""
    x = toy1d(n_train=n, n_test=0, seed=seed)[0]
    return x / x.pow(2).mean().sqrt()


def make_net(rule: str, w0: float, w: float, feedback: float = 1.0) -> nn.Module:
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    model = convert(net, rule, seed=0)
    with torch.no_grad():
        model[0].weight.fill_(w0)
        model[1].weight.fill_(w)
        for b in feedback_matrices(model)[1:]:  # the output layer's B = 1: the hidden unit gets e * B
            b.fill_(feedback)
    return model


def update(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The rule's descent direction (-dW0, -dW) on the batch x, target y = x, loss mean 0.5 (y - x)^2."""
    for p in model.parameters():
        p.grad = None
    loss = 0.5 * ((model(x) - x) ** 2).mean()
    loss.backward()
    return -float(model[0].weight.grad), -float(model[1].weight.grad)


def trajectory(rule: str, start: tuple[float, float], x: torch.Tensor, lr: float, steps: int) -> np.ndarray:
    model = make_net(rule, *start)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    points = [start]
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model(x) - x) ** 2).mean()).backward()
        opt.step()
        points.append((model[0].weight.item(), model[1].weight.item()))
    return np.asarray(points)


@register
class Toy1D(SeededExperiment):
    name = "toy1d"
    title = "Toy 1-D network: BP vs FA trajectories in the (W0, W) plane"
    paper = "Lillicrap, Cownden, Tweed & Akerman 2016 (Nat. Commun. 7:13276), Fig. 3"
    order = 10
    full_runtime = "about 10 s"

    def config(self, quick):
        return {"n_x": 1000, "lr": 0.05, "steps": 300 if quick else 1500, "starts": 12 if quick else 32,
                "radius": 1.6, "grid": 15 if quick else 25, "extent": 2.0, "feedback": 1.0}

    def deviations(self, config):
        d = ["Gradient descent on a fixed sample of x ~ N(0, 1) (rescaled to unit second moment), "
             "not the paper's continuous-time flow; the flow is the small-step limit of the same updates."]
        if config["size"] == "quick":
            d.append(f"Quick size: {config['steps']} steps from {config['starts']} starts.")
        return d

    def run_seed(self, config, seed, out):
        x = inputs(config["n_x"], seed)
        angles = np.linspace(0, 2 * np.pi, config["starts"], endpoint=False) + 0.1 * seed
        starts = [(config["radius"] * np.cos(a), config["radius"] * np.sin(a)) for a in angles]
        result = {}
        for rule in ("bp", "fa"):
            paths = [trajectory(rule, s, x, config["lr"], config["steps"]) for s in starts]
            zero = trajectory(rule, (0.0, 0.0), x, config["lr"], config["steps"])
            ends = np.array([p[-1] for p in paths])
            result[rule] = {
                "paths": [p[:: max(1, config["steps"] // 150)].tolist() for p in paths],
                "zero_path": zero[:: max(1, config["steps"] // 150)].tolist(),
                "zero_end": zero[-1].tolist(),
                "zero_moved": float(np.abs(zero[-1]).max()),
                "max_product_error": float(np.abs(ends[:, 0] * ends[:, 1] - 1).max()),
                "fraction_positive_w": float((ends[:, 1] > 0).mean()),
            }
        return result

    def summarize(self, config, runs, out):
        fa_zero_w = [r["fa"]["zero_end"][1] for r in runs]
        fa_zero_prod = [r["fa"]["zero_end"][0] * r["fa"]["zero_end"][1] for r in runs]
        bp_moved = [r["bp"]["zero_moved"] for r in runs]
        fa_err = [r["fa"]["max_product_error"] for r in runs]
        bp_err = [r["bp"]["max_product_error"] for r in runs]
        claims = [
            Claim("fa_solutions", "FA: every start ends on the solution curve W0·W = 1 (max |W0·W - 1| over starts)",
                  "on W0 W = 1", fa_err, reproduced=max(fa_err) < 0.01, criterion="< 0.01"),
            Claim("bp_solutions", "BP: every start ends on W0·W = 1 (max |W0·W - 1| over starts)",
                  "on W0 W = 1", bp_err, reproduced=max(bp_err) < 0.01, criterion="< 0.01"),
            Claim("fa_zero_branch", "FA from W0 = W = 0: final W (B = 1)", "W > 0 (sign of B)", fa_zero_w,
                  reproduced=min(fa_zero_w) > 0, criterion="W > 0 for every seed"),
            Claim("fa_zero_product", "FA from W0 = W = 0: final W0·W", "1", fa_zero_prod, paper_value=1.0,
                  reproduced=max(abs(p - 1) for p in fa_zero_prod) < 0.01, criterion="|W0·W - 1| < 0.01"),
            Claim("bp_zero_stuck", "BP from W0 = W = 0: largest |weight| after training", "0 (does not move)",
                  bp_moved, reproduced=max(bp_moved) == 0.0, criterion="exactly 0"),
            Claim("fa_positive_fraction", "FA: fraction of starts on the ring ending with W > 0", "most (Fig. 3b)",
                  [r["fa"]["fraction_positive_w"] for r in runs]),
            Claim("bp_positive_fraction", "BP: fraction of starts on the ring ending with W > 0", "half (symmetric)",
                  [r["bp"]["fraction_positive_w"] for r in runs]),
        ]
        return claims, [self.figure(config, runs[0], out)]

    def figure(self, config, run, out):
        plt = pyplot()
        e, n = config["extent"], config["grid"]
        x = inputs(config["n_x"], 0)
        w0s = np.linspace(-e, e, n)
        fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
        branch = np.linspace(0.45, e, 100)
        for ax, rule, label in zip(axes, ("bp", "fa"), ("Backprop", "Feedback alignment (B = 1)")):
            u, v = np.zeros((n, n)), np.zeros((n, n))
            for i, w in enumerate(w0s):       # rows: W (y axis)
                for j, w0 in enumerate(w0s):  # columns: W0 (x axis)
                    u[i, j], v[i, j] = update(make_net(rule, w0, w), x)
            ax.streamplot(w0s, w0s, u, v, color="0.75", density=1.1, linewidth=0.7, arrowsize=0.8)
            for sign in (1, -1):
                ax.plot(sign * branch, sign / branch, "k--", lw=1.2)
            for p in run[rule]["paths"]:
                p = np.asarray(p)
                ax.plot(p[:, 0], p[:, 1], color="tab:blue", lw=1.0)
                ax.plot(p[0, 0], p[0, 1], "o", color="tab:blue", ms=3)
            z = np.asarray(run[rule]["zero_path"])
            ax.plot(z[:, 0], z[:, 1], color="tab:red", lw=2.2, label="start at W0 = W = 0")
            ax.plot(0, 0, "o", color="tab:red", ms=6)
            ax.set(xlim=(-e, e), ylim=(-e, e), xlabel="W0 (hidden weight)", title=label)
            ax.legend(loc="lower right", fontsize=8)
        axes[0].set_ylabel("W (output weight)")
        fig.suptitle("y = W W0 x learning y = x; dashed: solutions W0 W = 1")
        return save_figure(fig, out, "toy1d-trajectories.png")
