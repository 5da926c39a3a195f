"""Node perturbation beside BP and FA on Lillicrap et al.'s linear task (their comparison of FA with a
reinforcement-style rule), weight perturbation as an extra row.

The task of :mod:`.linear`: a 30-20-10 linear network learns y = T x (T 10x30, entries U[-1, 1]) from
x ~ N(0, I); forward weights start U[-0.01, 0.01], FA's feedback is U[-0.5, 0.5]. Four learners, each the
library's rule on the same network: ``bp``, ``fa``, ``np`` (Gaussian noise on every unit's pre-activation,
one perturbation per example and step, forward differences of the exact squared-error loss) and ``wp``
(noise on every weight at once, the same for the batch). Every learner's learning rate (and np's and wp's
sigma) is chosen on a validation set of a separate search teacher; the test error is then read on each
seed's own teacher.

What the papers say: Lillicrap et al. 2016 (Nat. Commun. 7:13276), introduction, read here: rules that
"adjust synapses deep within a network based on the correlations between a scalar error signal and the
neuronal activity" slow down significantly as the network grows (their refs. 10, 11). That their figure of
the linear task plots a node-perturbation curve that learns far more slowly than BP and FA is how this
issue quotes it; the figure itself could not be read here (unverified). Werfel, Xie & Seung 2005 (Neural
Comput. 17; abstract read here): for a linear perceptron with the update size chosen for the fastest
learning, node perturbation is slower than gradient descent by a factor equal to the number of output units,
weight perturbation slower still by a factor equal to the number of input units. Here np perturbs 30 units
per example (20 hidden, 10 output), wp all 800 weights.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from feedalign.data.synthetic import linear_teacher
from feedalign.rules import _perturbation

from .base import Claim, SeededExperiment, register
from .linear import linear_net, min_max_band, normalised_error
from .plotting import pyplot, save_figure
from .verdicts import Compare

LEARNERS = ("bp", "fa", "np", "wp")
LABELS = {"bp": "backprop", "fa": "feedback alignment", "np": "node perturbation", "wp": "weight perturbation"}
SEARCH_SEED = 1000  # the teacher, data and noise of the search: none of the reported seeds'
THRESHOLD = 0.1  # normalised error for "examples to learn"
LOWER = (1e-3, 1e-6)  # further thresholds, described beside the check


def train_curve(learner: str, setting: dict, seed: int, config: dict, T: torch.Tensor, eval_x: torch.Tensor,
                points: list[int]) -> list[float]:
    """Normalised error on ``eval_x`` at each step count in ``points`` (0 included) of one learner's run."""
    model = linear_net(learner, seed, config["init_scale"], config["feedback_scale"]).double()
    if learner in ("np", "wp"):
        _perturbation.configure(model, sigma=setting["sigma"])
    opt = torch.optim.SGD(model.parameters(), lr=setting["lr"])
    data = torch.Generator().manual_seed(100 + seed)
    target = eval_x @ T.T
    errors, wanted = [], set(points)
    for step in range(points[-1] + 1):
        if step in wanted:
            errors.append(normalised_error(model, eval_x, target))
            if not math.isfinite(errors[-1]) or errors[-1] > 1e6:  # diverged: the rest is that too
                errors += [math.inf] * (len(points) - len(errors))
                break
        if step == points[-1]:
            break
        x = torch.randn(config["batch_size"], 30, generator=data).double()
        y = x @ T.T
        opt.zero_grad()
        with (_perturbation.target(model, y) if learner in ("np", "wp") else _nothing()):
            out = model(x)
        F.mse_loss(out, y).backward()  # np/wp measure its exact change (the target is given)
        opt.step()
    return errors


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def examples_to(errors: list[float], examples: list[int], threshold: float) -> float:
    """Examples seen when the error first falls below ``threshold`` (inf if never)."""
    return next((float(n) for e, n in zip(errors, examples) if e < threshold), math.inf)


@register
class LinearNodePerturbation(SeededExperiment):
    name = "linear-np"
    title = "Linear 30-20-10 network: node perturbation (and weight perturbation) beside BP and FA"
    paper = ("Lillicrap et al. 2016 (Nat. Commun. 7:13276), linear task, node perturbation as the reinforcement "
             "baseline; Werfel, Xie & Seung 2005 (Neural Comput. 17) on node and weight perturbation's speed")
    order = 21
    full_runtime = "about 20-25 min on 2 shared cores (search: 5 rates for bp and fa, 12 and 8 rate-sigma pairs for np and wp; then 3 seeds x 4 learners)"
    default_seeds = {"quick": 1, "full": 3}
    searched = ("learning rate", "sigma (np, wp)")

    def config(self, quick):
        lrs = (0.01, 0.1) if quick else (0.003, 0.01, 0.03, 0.1, 0.3)
        # np and wp (a first full search chose np's smallest sigma and wp's smallest rate: the grids reach below them)
        np_grid = ((0.003, 0.01), (1e-2,)) if quick else ((0.001, 0.003, 0.01, 0.03), (1e-4, 1e-3, 1e-1))
        wp_grid = ((0.003, 0.01), (1e-2,)) if quick else ((1e-4, 3e-4, 1e-3, 3e-3), (1e-4, 1e-3))
        grid = {"bp": [{"lr": lr} for lr in lrs], "fa": [{"lr": lr} for lr in lrs],
                **{learner: [{"lr": lr, "sigma": s} for lr in rates for s in sigmas]
                   for learner, (rates, sigmas) in (("np", np_grid), ("wp", wp_grid))}}
        return {"batch_size": 10, "examples": 10_000 if quick else 100_000, "points": 60, "val_size": 1000,
                "test_size": 2000, "init_scale": 0.01, "feedback_scale": 0.5, "threshold": THRESHOLD,
                "loss": "mse (mean over examples and outputs)", "selection": "validation",
                "search": {"grid": grid, "pick": "lowest final validation error", "seed": SEARCH_SEED}}

    def deviations(self, config):
        d = [f"Minibatches of {config['batch_size']}, plain SGD, the squared error averaged over examples and outputs "
             "(F.mse_loss) for every learner; each learner's learning rate, and np's and wp's sigma, chosen by the "
             "final validation error of one run on a search teacher (grid and errors below). The paper trains "
             "online at a learning rate of 1e-3 and does not give node perturbation's settings here.",
             "np: one perturbation per example per step (K = 1), forward differences L(a + xi) - L(a) of the exact "
             "loss, the update (dL / sigma^2) xi x^T; wp: one perturbation of all 800 weights per step, shared by "
             "the batch. The paper's node-perturbation variant is not described in what could be read.",
             f"Budget: {config['examples']} examples for every learner."]
        if config["size"] == "quick":
            d.append(f"Quick size: {config['examples']} examples, a small grid.")
        return d

    def comparisons(self, config):
        quick = config.get("size") == "quick"
        factor = 3.0 if quick else 10.0  # quick: a tenth of the budget and a two-point grid, a smoke check
        seeds = 1 if quick else 3
        return {"np_slower": Compare(
                    "check", min_seeds=seeds, holds=lambda v: min(v) >= factor,
                    criterion=f"np needs at least {factor:g}x the examples BP and FA need to bring the normalised test "
                              f"error below {config.get('threshold', THRESHOLD):g}, on every seed (never reaching it "
                              "counts as more)",
                    finding="np crossed the threshold within that factor of BP and FA; how far behind it falls "
                            "further down is in the descriptive rows (examples to lower errors, final errors)"),
                "wp_over_np": Compare(
                    "check", min_seeds=seeds, holds=lambda v: min(v) > 1.0,
                    criterion="wp's final test error above np's on every seed",
                    finding="weight perturbation learned as fast as node perturbation here")}

    def search(self, config) -> dict:
        """Each learner's setting with the lowest final validation error on the search teacher, in the form the
        report's search section reads (``last_search``)."""
        g = torch.Generator().manual_seed(SEARCH_SEED)
        T = linear_teacher(g).double()
        val_x = torch.randn(config["val_size"], 30, generator=g).double()
        steps = config["examples"] // config["batch_size"]
        learners, chosen = {}, {}
        for learner in LEARNERS:
            grid = config["search"]["grid"][learner]
            candidates = []
            for setting in grid:
                final = train_curve(learner, setting, SEARCH_SEED, config, T, val_x, [0, steps])[-1]
                candidates.append({"fields": setting, "val_errors": [final], "mean": final})
            best = min(candidates, key=lambda c: c["mean"] if math.isfinite(c["mean"]) else math.inf)["fields"]
            edge = any(best[k] in (min(s[k] for s in grid), max(s[k] for s in grid)) and len({s[k] for s in grid}) > 1
                       for k in best)
            learners[LABELS[learner]] = {"candidates": candidates, "chosen": best, "at_edge": edge}
            chosen[learner] = best
        return {"what": f"One run per candidate on a search teacher (seed {SEARCH_SEED}) for the full budget; the "
                        f"final normalised squared error on {config['val_size']} validation inputs chooses (not %)",
                "learners": learners, "chosen": chosen}

    def execute(self, config, folder, *, key, workers, log):
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self.last_search = self.search(config)
            chosen = self.last_search["chosen"]
            log(f"  chosen on validation: {chosen}")
            runs = []
            for seed in range(config["seeds"]):
                run = self.run_seed(config, seed, folder, chosen)
                run["chosen"] = chosen
                runs.append(run)
        finally:
            torch.set_num_threads(threads)
        return runs

    def run_seed(self, config, seed, out, chosen=None):
        g = torch.Generator().manual_seed(seed)
        T = linear_teacher(g).double()
        test_x = torch.randn(config["test_size"], 30, generator=g).double()
        steps = config["examples"] // config["batch_size"]
        # log-spaced, so that the examples each learner needs are resolved early in training as well as late
        points = sorted({0, steps} | {int(round(v)) for v in np.geomspace(1, steps, config["points"])})
        result = {"examples": [p * config["batch_size"] for p in points]}
        for learner in LEARNERS:
            result[f"{learner}_error"] = train_curve(learner, chosen[learner], seed, config, T, test_x, points)
        return result

    def summarize(self, config, runs, out):
        examples = runs[0]["examples"]
        threshold = config["threshold"]
        final = {k: [r[f"{k}_error"][-1] for r in runs] for k in LEARNERS}
        reach = {k: [examples_to(r[f"{k}_error"], examples, threshold) for r in runs] for k in LEARNERS}
        chosen = runs[0]["chosen"]
        claims = [Claim(f"{k}_error", f"{LABELS[k]}: final normalised squared error (test), lr {chosen[k]['lr']:g}"
                        + (f", sigma {chosen[k]['sigma']:g}" if "sigma" in chosen[k] else ""),
                        "curve (no number)", final[k]) for k in LEARNERS]
        claims += [Claim(f"{k}_examples", f"{LABELS[k]}: examples until the test error falls below {threshold:g}",
                         "-", reach[k]) for k in LEARNERS]
        ratio = [n / max(b, f) for n, b, f in zip(reach["np"], reach["bp"], reach["fa"])]
        claims.append(Claim("np_slower", "node perturbation: examples to the threshold / the slower of BP's and FA's",
                            "learns far more "
                            "slowly than BP and FA (Fig. of the linear task, as quoted by the issue: unverified; the "
                            "introduction's 'slows significantly as the size of a network grows': read)", ratio))
        for low in LOWER:  # descriptive: the same ratio further down the curve
            slow = [n / max(b, f) for n, b, f in zip(*([examples_to(r[f"{k}_error"], examples, low) for r in runs]
                                                       for k in ("np", "bp", "fa")))]
            claims.append(Claim(f"np_slower_{low:g}", f"node perturbation: examples to a normalised error of {low:g} / "
                                "the slower of BP's and FA's (inf: never within the budget)", "-", slow))
        claims.append(Claim("wp_over_np", "weight perturbation: final error / node perturbation's",
                            "slower than np (Werfel, Xie & Seung 2005, abstract, for a linear perceptron: by a factor "
                            "equal to the number of inputs; read)",
                            [w / n for w, n in zip(final["wp"], final["np"])]))
        return claims, [self.figure(config, runs, out)]

    def figure(self, config, runs, out):
        plt = pyplot()
        x = np.asarray(runs[0]["examples"])
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for k in LEARNERS:
            curves = np.asarray([r[f"{k}_error"] for r in runs], dtype=float)
            min_max_band(ax, x, np.clip(curves, 1e-35, 1e6), LABELS[k])  # BP/FA reach float64's floor
        ax.axhline(config["threshold"], color="0.6", ls=":")
        ax.set(yscale="log", xlabel="examples seen", ylabel="normalised squared error (test; geometric mean, min-max)",
               title="30-20-10 linear: y = T x")
        ax.legend()
        return save_figure(fig, out, "linear-np-error.png")
