"""The review's figure of hidden activations, BP (upper) vs DFA (lower), on review-dfa's trained networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from feedalign.diagnostics.plots import hidden_activations
from feedalign.training.checkpoint import load_run

from .base import Claim, SeededExperiment, read_results, register
from .plotting import pyplot, save_figure


def hidden_outputs(model, x) -> list[torch.Tensor]:
    """Every hidden layer's output h_k (the input of the next linear layer) on ``x``."""
    n_hidden = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1
    return [hidden_activations(model, x, layer=k + 1) for k in range(n_hidden)]


def statistics(h: torch.Tensor) -> dict:
    h = h.double()
    saturated = float(((h < 0.05) | (h > 0.95)).double().mean())
    active = h.std(0) > 1e-3
    c = torch.corrcoef(h[:, active].T) if int(active.sum()) > 1 else torch.zeros(1, 1)
    off = c[~torch.eye(len(c), dtype=torch.bool)]
    return {"saturated": saturated, "dead_units": float((~active).double().mean()),
            "mean_abs_corr": float(off.abs().mean()) if off.numel() else 0.0}


@register
class HiddenActivations(SeededExperiment):
    name = "hidden-activations"
    title = "Hidden activations of the BP and the DFA network (review-dfa's 784-200-100-10)"
    paper = "FA/DFA review slides, 'Experiments: Upper: hidden activation of BP network. Lower: DFA network' (from Nøkland 2016)"
    order = 90
    full_runtime = "seconds (after review-dfa)"
    default_seeds = {"quick": 1, "full": 1}
    needs = ("review-dfa",)

    def config(self, quick):
        return {"source": "review-dfa", "source_size": "quick" if quick else "full", "per_class": 10}

    def deviations(self, config):
        return ["Networks of review-dfa (seed 0), sigmoid units, not Nøkland's own tanh network; "
                "the review shows the figure without a number, so the statistics here are descriptive."]

    def run_seed(self, config, seed, out):
        source = read_results(Path(out).parent / config["source"])
        if source is None:
            raise RuntimeError(f"{config['source']} has no results in {Path(out).parent}; run it first")
        result = {}
        for label in ("BP", "DFA"):
            _, model, data = load_run(source["runs"][0][label]["run_dir"], checkpoint="latest")
            if "labels" not in result:
                x, y = data.test_x, data.test_y
                idx = torch.cat([torch.nonzero(y == c).flatten()[:config["per_class"]] for c in range(data.num_classes)])
                result["labels"] = y[idx].tolist()
            hs = hidden_outputs(model, x[idx])
            result[label] = {"activations": [h.tolist() for h in hs],
                             "stats": [statistics(h) for h in hidden_outputs(model, x[:2000])]}
        return result

    def summarize(self, config, runs, out):
        r = runs[0]
        claims = []
        for k in range(len(r["BP"]["stats"])):
            for stat, text in (("saturated", "fraction of saturated activations (<0.05 or >0.95)"),
                               ("mean_abs_corr", "mean |correlation| between units")):
                for label in ("BP", "DFA"):
                    claims.append(Claim(f"{label}_{k}_{stat}", f"{label}, hidden layer {k + 1}: {text}", "figure only",
                                        [run[label]["stats"][k][stat] for run in runs]))
        plt = pyplot()
        n_layers = len(r["BP"]["activations"])
        fig, axes = plt.subplots(2, n_layers, figsize=(6 * n_layers, 6.5), squeeze=False)
        for row, label in enumerate(("BP", "DFA")):
            for k in range(n_layers):
                h = np.asarray(r[label]["activations"][k])
                order = np.argsort(-h.mean(0))
                ax = axes[row][k]
                ax.imshow(h[:, order].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
                ax.set(title=f"{label}: hidden layer {k + 1}", xlabel=f"test examples, {config['per_class']} per class 0-9",
                       ylabel="units (sorted by mean)")
        fig.suptitle("Hidden activations, BP (upper) vs DFA (lower)")
        return claims, [save_figure(fig, out, "hidden-activations.png")]
