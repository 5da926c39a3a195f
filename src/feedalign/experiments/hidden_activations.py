"""The review's figure of hidden activations, BP (upper) vs DFA (lower), on review-dfa's trained networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._common import build_model, linears, pyplot
from ._training import _cached_data
from .base import Claim, Experiment, experiment_config, register


def hidden_outputs(model, x) -> list[torch.Tensor]:
    """Every hidden layer's output h_k (the input of the next linear layer) on ``x``."""
    try:
        from feedalign.diagnostics.plots import hidden_activations  # the diagnostics engineer's helper
        return [hidden_activations(model, x, layer=k + 1) for k in range(len(linears(model)) - 1)]
    except ImportError:
        seen = []
        handles = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
                   for layer in linears(model)[1:]]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return seen


def statistics(h: torch.Tensor) -> dict:
    h = h.double()
    saturated = float(((h < 0.05) | (h > 0.95)).double().mean())
    active = h.std(0) > 1e-3
    c = torch.corrcoef(h[:, active].T) if int(active.sum()) > 1 else torch.zeros(1, 1)
    off = c[~torch.eye(len(c), dtype=torch.bool)]
    return {"saturated": saturated, "dead_units": float((~active).double().mean()),
            "mean_abs_corr": float(off.abs().mean()) if off.numel() else 0.0}


@register
class HiddenActivations(Experiment):
    name = "hidden-activations"
    title = "Hidden activations of the BP and the DFA network (review-dfa's 784-200-100-10)"
    paper = "FA/DFA review slides, 'Experiments: Upper: hidden activation of BP network. Lower: DFA network' (from Nøkland 2016)"
    order = 90
    full_runtime = "seconds (after review-dfa)"
    default_seeds = {"quick": 1, "full": 1}
    needs = ("review-dfa",)
    hashed_helpers = ("_common", "_training", "review")

    def config(self, quick):
        return {"source": "review-dfa", "source_size": "quick" if quick else "full", "per_class": 10}

    def deviations(self, config):
        return ["Networks of review-dfa (seed 0), sigmoid units, not Nøkland's own tanh network; "
                "the review shows the figure without a number, so the statistics here are descriptive."]

    def run_seed(self, config, seed, out):
        source = Path(out).parent / config["source"]
        src_config = experiment_config(config["source"], config["source_size"] == "quick")
        d = src_config["data"]
        data = _cached_data(d["name"], d.get("n_train"), d.get("n_val"), d.get("n_test"))
        x, y = data["test"]
        idx = torch.cat([torch.nonzero(y == c).flatten()[:config["per_class"]] for c in range(data["num_classes"])])
        result = {"labels": y[idx].tolist()}
        for label in ("BP", "DFA"):
            saved = torch.load(source / f"model-{label}.pt", weights_only=False)
            kw = saved["kwargs"]
            model = build_model(kw["architecture"], kw["activation"], kw["rule"], seed=0, init=kw.get("init", "default"),
                                init_scale=kw.get("init_scale"), feedback_scale=kw.get("feedback_scale"),
                                feedback_init=kw.get("feedback_init", "uniform"))
            model.load_state_dict(saved["state_dict"])
            model.eval()
            hs = hidden_outputs(model, x[idx])
            result[label] = {"activations": [h.tolist() for h in hs],
                             "stats": [statistics(hidden_outputs(model, x[:2000])[k]) for k in range(len(hs))]}
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
        fig.tight_layout()
        name = "hidden-activations.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return claims, [name]
