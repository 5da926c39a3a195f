"""Figures from run directories: alignment angles over training, hidden activations, learning curves,
and test error beside signal alignment against steps over seeds (``feedalign compare``).

Every function takes run directories as ``feedalign train`` writes them
(``config.toml``, ``metrics.jsonl``, ``alignment.jsonl``, ``checkpoints/best.pt``),
draws with matplotlib's Agg backend, writes ``path`` and returns it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, RunDirError
from ..files import read_jsonl, read_mapping, save_figure
from ..rules import trainable_layers
from .callback import read_alignment

ANGLE_LABELS = {
    "signal_angle": "signal angle (deg)",
    "signal_angle_mean": "mean per-example signal angle (deg)",
    "update_angle": "update angle (deg)",
    "weight_angle": "weight angle (deg)",
    "norm_ratio": "|B| / |W|",
}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path; ValueError if it is not a run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} does not exist")
    if not (path / "config.toml").is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run directory (no config.toml; `feedalign train` makes them)")
    return path


def _title(run_dir: Path, config=None) -> str:
    rule = read_mapping(run_dir / "config.toml", what="config file").get("rule") if config is None else config.rule
    return f"{rule}: {run_dir.name}"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_alignment(run_dirs, path, metric: str = "signal_angle") -> Path:
    """One panel per run: ``metric`` against training step, one line per layer.

    Layers whose values are all NaN (e.g. the weight angle of a DFA output layer) and,
    for the signal and update angles, the output layer (0 by construction) are left out.
    """
    if metric not in ANGLE_LABELS:
        raise ConfigError(f"unknown alignment metric {metric!r}; expected one of {', '.join(ANGLE_LABELS)}")
    runs = [(check_run_dir(d), read_alignment(check_run_dir(d))) for d in run_dirs]
    if not runs:
        raise ConfigError("plot alignment needs at least one run directory")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), sharey=True, squeeze=False)
    for ax, (run_dir, rows) in zip(axes[0], runs):
        last = max(r["layer"] for r in rows)
        for layer in sorted({r["layer"] for r in rows}):
            if layer == last and metric in ("signal_angle", "signal_angle_mean", "update_angle"):
                continue
            points = [(r["step"], r[metric]) for r in rows if r["layer"] == layer and not math.isnan(r[metric])]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=2, label=f"layer {layer}")
        if metric != "norm_ratio":
            ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_title(_title(run_dir), fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ANGLE_LABELS[metric])
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(run_dirs, path, metric: str = "accuracy", split: str = "val") -> Path:
    """``split`` ``metric`` (accuracy or loss) per epoch from each run's metrics.jsonl, one line per run."""
    if metric not in ("accuracy", "loss") or split not in ("train", "val", "test"):
        raise ConfigError(f"curves: metric must be accuracy or loss and split train, val or test; got {metric}, {split}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run_dir in map(check_run_dir, run_dirs):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        if not rows:
            raise RunDirError(f"{str(run_dir)!r} has no metrics.jsonl rows yet")
        key = f"{split}_{metric}"
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*points) if points else ([], []), marker="o", markersize=3, label=_title(run_dir))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ {'val': 'validation'}.get(split, split)} {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -- test error and alignment against steps, over seeds ----------------------------------------------
def error_curve(run_dir: str | Path) -> list[tuple[int, float]]:
    """``(step, test error)`` of one run, step > 0: the evaluations a compare with ``evals_per_epoch`` logged
    to ``steps.jsonl``, else the end of each epoch from ``metrics.jsonl`` (steps from the summary)."""

    run_dir = check_run_dir(run_dir)
    points = {r["step"]: r["test_error"] for r in read_jsonl(run_dir / "steps.jsonl")
              if r.get("test_error") is not None and r["step"] > 0}
    if points:
        return sorted(points.items())
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("test_accuracy") is not None]
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    per_epoch = summary["steps"] // max(1, summary.get("epochs_completed") or 1)
    return [(r["epoch"] * per_epoch, 1 - r["test_accuracy"]) for r in rows if r["epoch"] > 0]


def hidden_signal_angle(run_dir: str | Path) -> list[tuple[int, float]]:
    """``(step, angle)``: the mean over hidden layers of the signal angle to the true gradient, per
    measurement in ``alignment.jsonl`` (the output layer, which gets the true error, left out), with
    those a compare with ``evals_per_epoch`` logged to ``steps.jsonl`` on the same probe batch."""
    run_dir = check_run_dir(run_dir)
    points = {r["step"]: r["hidden_signal_angle"] for r in read_jsonl(run_dir / "steps.jsonl")
              if r.get("hidden_signal_angle") is not None}
    try:
        rows = read_alignment(run_dir)
    except RunDirError:
        rows = []
    last = max((r["layer"] for r in rows), default=None)
    by_step: dict[int, list[float]] = {}
    for r in rows:
        if r["layer"] != last and not math.isnan(r.get("signal_angle", math.nan)):
            by_step.setdefault(r["step"], []).append(r["signal_angle"])
    points.update({step: sum(v) / len(v) for step, v in by_step.items()})
    return sorted(points.items())


def _over_seeds(curves: list[list[tuple[int, float]]]):
    """Steps every seed has, with the mean and std over seeds there (arrays), or None."""
    curves = [dict(c) for c in curves if c]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves], dtype=float)
    return np.array(steps), values.mean(0), values.std(0)


def plot_error_and_alignment(runs: dict[str, list[str | Path]], path: str | Path, title: str = "") -> Path:
    """The two claims of the papers for each rule (``{rule: [run directories of its seeds]}``) side by side.

    Left: test error against optimizer steps (log-log; every evaluation the runs logged). Right: the
    angle between the signal the rule delivers to the hidden layers and the true gradient (mean over
    hidden layers), against steps; below 90 degrees the signal points downhill. Lines are means over
    seeds, bands one standard deviation; step 0 is off a log axis and left out.
    """
    plt = _pyplot()
    fig, (err_ax, ang_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for rule, run_dirs in runs.items():
        color = None
        for ax, curves, scale in ((err_ax, [error_curve(d) for d in run_dirs], 100.0),
                                  (ang_ax, [hidden_signal_angle(d) for d in run_dirs], 1.0)):
            found = _over_seeds([[(s, v) for s, v in c if s > 0] for c in curves])
            if found is None:
                continue
            steps, mean, std = found
            (line,) = ax.plot(steps, scale * mean, marker="o", markersize=2, lw=1.2, color=color, label=rule)
            color = line.get_color()
            if len(run_dirs) > 1:
                ax.fill_between(steps, scale * (mean - std), scale * (mean + std), color=color, alpha=0.2, lw=0)
    import matplotlib.ticker
    err_ax.set_yscale("log")
    err_ax.set_ylabel("test error (%)")
    # 2, 3, 5, 10, 20, ...: plain numbers rather than 10^1, and not every minor tick (they would overlap)
    err_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    err_ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else ""))
    ang_ax.axhline(90, color="grey", lw=0.8, ls="--")
    ang_ax.set_ylabel("hidden signal angle to true gradient (deg)")
    ang_ax.set_ylim(bottom=0)
    for ax, what in ((err_ax, "test error"), (ang_ax, "signal alignment (90 = orthogonal)")):
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{title}: {what}" if title else what, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if err_ax.lines and ang_ax.lines:  # one step axis for both panels, so that they line up
        low, high = zip(err_ax.get_xlim(), ang_ax.get_xlim())
        for ax in (err_ax, ang_ax):
            ax.set_xlim(min(low), max(high))
    fig.tight_layout()
    return _save(fig, path)


# -- hidden activations --------------------------------------------------------------------------
def hidden_activations(model, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(N, width) output of hidden layer ``layer`` (1-based; negative counts from the last hidden layer).

    Taken as the input of the next linear layer, i.e. ``h_k = f(a_k)`` after the activation.
    """
    linears = trainable_layers(model)
    index = hidden_layer_number(model, layer) - 1
    seen = []
    handle = linears[index + 1].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].reshape(len(x), -1)


def hidden_layer_number(model, layer: int) -> int:
    """``layer`` (1-based, or negative from the last hidden layer) as a 1-based number; ValueError if out of range."""
    hidden = len(trainable_layers(model)) - 1
    if hidden < 1:
        raise ConfigError("the model has no hidden layer")
    number = layer if layer > 0 else hidden + layer + 1
    if not 1 <= number <= hidden:
        raise ConfigError(f"hidden layer {layer} does not exist; the model has {hidden} (1..{hidden} or -1..-{hidden})")
    return number


def plot_hidden(runs, path, layer: int = -1, per_class: int = 20, sort_units: bool = True) -> Path:
    """Hidden activations of each run's model on the same test examples, one panel per run.

    ``runs``: ``(run_dir, config, model, data)`` of each run, as
    ``(run_dir, *feedalign.training.checkpoint.load_run(run_dir))`` gives them (its best model).

    Image of units x examples; the first ``per_class`` test examples of every class,
    grouped by class, with the class boundaries marked. ``sort_units`` orders units
    by the class that drives them most (mean activation), so class-selective units,
    as DFA tends to grow, show up as blocks.
    """
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1; got {per_class}")
    loaded = [(Path(run_dir), config, model, data) for run_dir, config, model, data in runs]
    if not loaded:
        raise ConfigError("plot hidden needs at least one run directory")
    datasets = {config.dataset for _, config, _, _ in loaded}
    if len(datasets) > 1:
        raise ConfigError("plot hidden compares runs on the same examples; "
                          f"these runs use {', '.join(sorted(datasets))}")
    data = loaded[0][3]
    if data.num_classes is None:
        raise ConfigError(f"plot hidden groups examples by class; {data.name} is a regression task")
    order = torch.cat([torch.nonzero(data.test_y == c).flatten()[:per_class] for c in range(data.num_classes)])
    x, y = data.test_x[order], data.test_y[order]
    bounds = [i for i in range(1, len(y)) if y[i] != y[i - 1]]
    panels = []
    for run_dir, config, model, _ in loaded:
        h = hidden_activations(model, x.to(next(model.parameters()).dtype), layer)  # (N, units)
        if sort_units:
            means = torch.stack([h[y == c].mean(0) for c in range(data.num_classes) if (y == c).any()])  # (C, units)
            by_strength = torch.argsort(means.max(0).values, descending=True)
            h = h[:, by_strength[torch.argsort(means.argmax(0)[by_strength], stable=True)]]
        panels.append(h)
    # one colour scale for all panels, so that the runs compare
    limit = max(h.abs().max().item() for h in panels) or 1.0
    signed = min(h.min().item() for h in panels) < 0  # tanh: a diverging map around 0; relu/sigmoid: sequential
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(loaded), figsize=(4.5 * len(loaded), 4.0), squeeze=False)
    for ax, (run_dir, config, model, _), h in zip(axes[0], loaded, panels):
        image = ax.imshow(h.T.numpy(), aspect="auto", interpolation="nearest", cmap="RdBu_r" if signed else "viridis",
                          vmin=-limit if signed else 0.0, vmax=limit)
        for b in bounds:
            ax.axvline(b - 0.5, color="black", lw=0.7)
        edges = [0, *bounds, len(y)]
        ax.set_xticks([(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])])
        ax.set_xticklabels([str(int(y[a])) for a in edges[:-1]], fontsize=7)
        ax.set_xlabel("test examples, grouped by class")
        ax.set_ylabel(f"hidden layer {hidden_layer_number(model, layer)} units"
                      + (" (sorted by preferred class)" if sort_units else ""))
        ax.set_title(f"{_title(run_dir, config)} ({config.architecture} {config.activation})", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _save(fig, path)
