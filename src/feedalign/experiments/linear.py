"""Lillicrap et al. 2016, Fig. 2a-b and Fig. 4, and the convergence theorem, on a linear network.

A 30-20-10 linear network learns y = T x (T of shape 10x30, entries U[-1, 1]) from
x ~ N(0, I); forward weights start U[-0.01, 0.01], the FA feedback B is U[-0.5, 0.5].
Three learners: shallow (BP on the output layer, hidden layer fixed), BP, FA. Along
FA's training we measure the angle between its hidden-layer weight update and the
one BP would make on the same weights (``feedalign.exact_gradients``), and the one
pseudo-backprop would make (the output error sent back through W^+, the
Moore-Penrose pseudoinverse of the output weights). Finally FA from an all-zero
init on a whitened training set, the setting of the paper's theorem.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from feedalign.data.synthetic import linear_teacher
from feedalign.diagnostics.angles import angle

from ..convert import convert
from ..rules import exact_gradients
from .plotting import mean_std_band, pyplot, save_figure


def min_max_band(ax, x, curves, label):
    """Geometric mean over seeds with the min-max range: for log axes, where mean - std may be negative."""
    curves = np.asarray(curves, dtype=float)
    line, = ax.plot(x, np.exp(np.log(curves).mean(0)), label=label)
    if len(curves) > 1:
        ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    return line
from .base import Claim, SeededExperiment, register


def linear_net(rule: str, seed: int, init_scale: float, feedback_scale: float) -> nn.Module:
    g = torch.Generator().manual_seed(1000 + seed)
    net = nn.Sequential(nn.Linear(30, 20, bias=False), nn.Linear(20, 10, bias=False))
    with torch.no_grad():
        for layer in net:
            layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-1, 1, generator=g) * init_scale)
    return convert(net, rule, seed=seed, feedback_scale=feedback_scale)


def loss_fn(output, target):
    return 0.5 * ((output - target) ** 2).sum(1).mean()


def normalised_error(model, x, target) -> float:
    with torch.no_grad():
        return float(((model(x) - target) ** 2).sum() / (target ** 2).sum())


def hidden_updates(model, x, target) -> dict[str, torch.Tensor]:
    """Hidden-layer weight gradients of FA, BP and pseudo-backprop on the same weights and batch."""
    hidden = model[0]
    out = {}
    model.zero_grad()
    y = model(x)
    y.retain_grad()
    loss_fn(y, target).backward()
    out["fa"] = hidden.weight.grad.clone()
    e = y.grad.detach()  # dL/dy
    with exact_gradients(model):
        model.zero_grad()
        loss_fn(model(x), target).backward()
        out["bp"] = hidden.weight.grad.clone()
    w = model[1].weight.detach()
    delta_h = e @ torch.linalg.pinv(w).T  # W^+ e, as row vectors
    out["pbp"] = delta_h.T @ x
    model.zero_grad()
    return out


@register
class Linear(SeededExperiment):
    name = "linear"
    title = "Linear 30-20-10 network: shallow vs BP vs FA, update angles, zero-init convergence"
    paper = "Lillicrap et al. 2016, Fig. 2a-b, Fig. 4 and the convergence theorem (Supplementary Note 2)"
    order = 20
    full_runtime = "about 1 min"

    def config(self, quick):
        return {"batch_size": 10, "lr": 0.005, "examples": 20_000 if quick else 100_000, "points": 40,
                "probe_batch": 500, "test_size": 2000, "init_scale": 0.01, "feedback_scale": 0.5,
                "theorem": {"n": 300, "lr": 0.02, "steps": 1500 if quick else 6000}}

    def deviations(self, config):
        d = [f"Minibatches of {config['batch_size']} with learning rate {config['lr']} (the paper trains online); "
             "the error axis counts examples seen.",
             "Angles are between whole hidden-layer weight updates (dW0 over a probe batch of "
             f"{config['probe_batch']}), the paper's Fig. 2b compares hidden-unit update signals.",
             "The theorem's run uses full-batch gradient descent on a finite whitened training set (sample "
             "covariance exactly I), the discrete version of the theorem's continuous-time flow."]
        if config["size"] == "quick":
            d.append(f"Quick size: {config['examples']} examples (full: 100000).")
        return d

    def run_seed(self, config, seed, out):
        g = torch.Generator().manual_seed(seed)
        # float64 throughout: the errors fall to 1e-12 and below, where float32 rounding would set the angles
        T = linear_teacher(g).double()
        test_x = torch.randn(config["test_size"], 30, generator=g).double()
        probe_x = torch.randn(config["probe_batch"], 30, generator=g).double()
        steps = config["examples"] // config["batch_size"]
        every = max(1, steps // config["points"])
        result = {"examples": [], "T_norm": float(T.norm())}
        for learner in ("shallow", "bp", "fa"):
            model = linear_net("fa" if learner == "fa" else "bp", seed, config["init_scale"],
                               config["feedback_scale"]).double()
            params = model[1].parameters() if learner == "shallow" else model.parameters()
            opt = torch.optim.SGD(params, lr=config["lr"])
            data = torch.Generator().manual_seed(100 + seed)
            errors, a_bp, a_pbp = [], [], []
            for step in range(steps + 1):
                if step % every == 0 or step == steps:
                    errors.append(normalised_error(model, test_x, test_x @ T.T))
                    if learner == "shallow":
                        result["examples"].append(step * config["batch_size"])
                    if learner == "fa":
                        u = hidden_updates(model, probe_x, probe_x @ T.T)
                        a_bp.append(angle(u["fa"], u["bp"])[0])
                        a_pbp.append(angle(u["fa"], u["pbp"])[0])
                if step == steps:
                    break
                x = torch.randn(config["batch_size"], 30, generator=data).double()
                opt.zero_grad()
                loss_fn(model(x), x @ T.T).backward()
                opt.step()
            result[f"{learner}_error"] = errors
            if learner == "fa":
                result["angle_fa_bp"], result["angle_fa_pbp"] = a_bp, a_pbp
        result["theorem"] = self.theorem(config["theorem"], T, seed)
        return result

    @staticmethod
    def theorem(cfg, T, seed):
        """FA from W0 = W = 0 on whitened inputs, full-batch gradient descent: training error -> 0."""
        g = torch.Generator().manual_seed(500 + seed)
        x = torch.randn(cfg["n"], 30, generator=g, dtype=torch.float64)
        x = x - x.mean(0)
        evals, evecs = torch.linalg.eigh(x.T @ x / cfg["n"])
        x = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # sample covariance exactly I
        target = x @ T.double().T
        model = linear_net("fa", seed, 0.0, 0.5).double()
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
        errors = []
        for step in range(cfg["steps"] + 1):
            if step % max(1, cfg["steps"] // 60) == 0 or step == cfg["steps"]:
                errors.append((step, normalised_error(model, x, target)))
            if step == cfg["steps"]:
                break
            opt.zero_grad()
            loss_fn(model(x), target).backward()
            opt.step()
        return {"steps": [s for s, _ in errors], "error": [e for _, e in errors], "final": errors[-1][1]}

    def summarize(self, config, runs, out):
        def final(key):
            return [r[key][-1] for r in runs]
        fa_start = [r["fa_error"][0] for r in runs]
        fa_end, bp_end, sh_end = final("fa_error"), final("bp_error"), final("shallow_error")
        ang_start = [r["angle_fa_bp"][0] for r in runs]
        ang_end, pbp_end = final("angle_fa_bp"), final("angle_fa_pbp")
        theorem = [r["theorem"]["final"] for r in runs]
        claims = [
            Claim("fa_error", "FA: final normalised squared error (test)", "≈ 0, as BP (Fig. 2a)", fa_end,
                  reproduced=max(fa_end) < 0.01 * min(fa_start), criterion="< 1% of its start"),
            Claim("bp_error", "BP: final normalised squared error (test)", "≈ 0 (Fig. 2a)", bp_end,
                  reproduced=max(bp_end) < 0.01, criterion="< 0.01"),
            Claim("shallow_error", "Shallow (output layer only): final normalised squared error",
                  "stays high (Fig. 2a)", sh_end, reproduced=min(sh_end) > 10 * max(max(fa_end), 1e-6),
                  criterion="> 10x FA's"),
            Claim("angle_start", "Angle between FA and BP hidden updates at the start", "≈ 90° (Fig. 2b)",
                  ang_start, unit="°", reproduced=min(ang_start) > 75, criterion="> 75°"),
            Claim("angle_end", "Angle between FA and BP hidden updates at the end", "well below 90° (Fig. 2b)",
                  ang_end, unit="°", reproduced=max(ang_end) < 60, criterion="< 60°"),
            Claim("angle_pbp", "Angle between FA and pseudo-backprop (W⁺e) hidden updates at the end",
                  "smaller than the FA-BP angle (Fig. 4)", pbp_end, unit="°",
                  reproduced=all(p < a for p, a in zip(pbp_end, ang_end)), criterion="< FA-BP angle, every seed"),
            Claim("theorem", "FA from zero init, whitened input: final normalised training error",
                  "→ 0 (theorem)", theorem, reproduced=max(theorem) < 1e-3, criterion="< 1e-3"),
        ]
        return claims, [self.figure(config, runs, out)]

    def figure(self, config, runs, out):
        plt = pyplot()
        x = np.asarray(runs[0]["examples"])
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
        ax = axes[0]
        for key, label in (("shallow_error", "shallow"), ("bp_error", "backprop"), ("fa_error", "feedback alignment")):
            min_max_band(ax, x, [r[key] for r in runs], label)
        ax.set(yscale="log", xlabel="examples seen", ylabel="normalised squared error (seeds: geometric mean, min-max)",
               title="30-20-10 linear: y = T x")
        ax.legend()
        ax = axes[1]
        mean_std_band(ax, x, [r["angle_fa_bp"] for r in runs], "FA vs BP")
        mean_std_band(ax, x, [r["angle_fa_pbp"] for r in runs], "FA vs pseudo-BP (W⁺e)")
        ax.axhline(90, color="0.6", ls=":")
        ax.set(ylim=(0, 100), xlabel="examples seen", ylabel="angle between hidden updates (°)",
               title="FA's hidden update aligns")
        ax.legend()
        ax = axes[2]
        steps = runs[0]["theorem"]["steps"]
        min_max_band(ax, steps, [r["theorem"]["error"] for r in runs], "FA, W0 = W = 0, whitened x")
        ax.set(yscale="log", xlabel="full-batch steps", ylabel="normalised training error", title="Theorem: error → 0")
        ax.legend()
        return save_figure(fig, out, "linear-error-angles.png")
