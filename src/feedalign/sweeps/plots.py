"""Sweep figures, from results.json alone (so they work for runs that trained on Ray nodes).

* ``figures/heatmap-<rule>-<x>-<y>.png``: for each rule and each pair of swept
  parameters, a heatmap of best validation accuracy (mean over the runs in a
  cell, i.e. over the other swept parameters) with the outcome letter in each
  cell: T trained, R refused, C collapsed, D diverged, X crashed, I invalid (several letters
  with counts when the runs in a cell disagree); the title names every letter the figure shows. Axes with many distinct values
  (random sampling) become a scatter plot instead.
* ``figures/best-curves.png``: the validation-accuracy curve of each rule's best run.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..files import save_figure
from .results import OUTCOME_LETTERS, read_results

MAX_CATEGORIES = 15
SKIP_AXES = ("rule", "seed")  # one figure per rule; seeds are averaged


def _rule(row: dict) -> str:
    return row.get("rule") or row.get("config", {}).get("rule", "?")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _order(values: list) -> list:
    unique = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
        return sorted(unique)
    return unique


def _acc(row: dict) -> float:
    v = row.get("best_val_accuracy")
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _letters(rows: list[dict]) -> str:
    counts = Counter(OUTCOME_LETTERS.get(r.get("outcome"), "?") for r in rows)
    if len(counts) == 1:
        return next(iter(counts))
    return "".join(f"{k}{n}" for k, n in counts.most_common())


def outcome_legend(rows: list[dict]) -> str:
    """The key to every outcome letter ``rows`` show, in a fixed order: ``"T trained  I invalid"``."""
    shown = {OUTCOME_LETTERS.get(r.get("outcome"), "?") for r in rows}
    names = [(letter, outcome) for outcome, letter in OUTCOME_LETTERS.items()] + [("?", "no outcome")]
    return "  ".join(f"{letter} {outcome}" for letter, outcome in names if letter in shown)


def default_pairs(swept: list[str], rows: list[dict]) -> list[tuple[str, str]]:
    """Every pair of swept parameters that vary (rule excluded: one figure per rule)."""
    axes = [k for k in swept if k not in SKIP_AXES and len({repr(r.get(k)) for r in rows}) > 1]
    if len(axes) == 1:
        return [(axes[0], None)]
    return list(itertools.combinations(axes, 2))


def plot_sweep(source, *, pairs=None) -> list[Path]:
    """Write the figures of a sweep directory (or results.json); return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, swept = read_results(source)
    sweep_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    out = sweep_dir / "figures"
    out.mkdir(exist_ok=True)
    if not rows:
        return []
    pairs = [tuple(p) for p in pairs] if pairs else default_pairs(swept, rows)
    rules = list(dict.fromkeys(_rule(r) for r in rows))
    written = []
    for rule in rules:
        rrows = [r for r in rows if _rule(r) == rule]
        for x, y in pairs:
            xs = _order([r.get(x) for r in rrows])
            ys = _order([r.get(y) for r in rrows]) if y else [None]
            fig, ax = plt.subplots(figsize=(1.2 + 0.75 * max(4, len(xs)), 1.2 + 0.55 * max(3, len(ys))))
            if len(xs) > MAX_CATEGORIES or len(ys) > MAX_CATEGORIES:
                _scatter(ax, rrows, x, y, plt)
            else:
                grid = np.full((len(ys), len(xs)), np.nan)
                for i, yv in enumerate(ys):
                    for j, xv in enumerate(xs):
                        cell = [r for r in rrows if r.get(x) == xv and (y is None or r.get(y) == yv)]
                        if not cell:
                            continue
                        accs = [_acc(r) for r in cell]
                        finite = [a for a in accs if math.isfinite(a)]
                        grid[i, j] = float(np.mean(finite)) if finite else np.nan
                        label = _letters(cell) + (f"\n{grid[i, j]:.2f}" if finite else "")
                        ax.text(j, i, label, ha="center", va="center", fontsize=7,
                                color="white" if (finite and grid[i, j] < 0.55) else "black")
                im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
                ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs], rotation=45 if len(xs) > 6 else 0)
                ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys] if y else [""])
                fig.colorbar(im, ax=ax, label="best val accuracy")
            ax.set_xlabel(x)
            if y:
                ax.set_ylabel(y)
            ax.set_title(f"{rule}: best validation accuracy\n{outcome_legend(rrows)}", fontsize=8)
            fig.tight_layout()
            path = out / f"heatmap-{rule}-{x}-{y or 'only'}.png"
            save_figure(fig, path, dpi=100)
            plt.close(fig)
            written.append(path)
    path = _best_curves(rows, swept, rules, out, plt)
    if path:
        written.append(path)
    return written


def _scatter(ax, rows, x, y, plt):
    xv = [r.get(x) for r in rows]
    yv = [r.get(y) for r in rows] if y else [0.0] * len(rows)
    sc = ax.scatter(xv, yv, c=[_acc(r) for r in rows], cmap="viridis", vmin=0, vmax=1, s=60)
    for r, a, b in zip(rows, xv, yv):
        ax.annotate(OUTCOME_LETTERS.get(r.get("outcome"), "?"), (a, b), fontsize=7, ha="center", va="center")
    for axis, vals in (("x", xv), ("y", yv)):
        nums = [v for v in vals if isinstance(v, (int, float)) and v > 0]
        if nums and len(nums) == len(vals) and max(nums) / min(nums) >= 100:
            (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    plt.colorbar(sc, ax=ax, label="best val accuracy")


def _best_curves(rows, swept, rules, out: Path, plt) -> Path | None:
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for rule in rules:
        done = [r for r in rows if _rule(r) == rule and r.get("status") == "done" and math.isfinite(_acc(r))]
        if not done:
            continue
        best = max(done, key=_acc)
        curve = [v for v in best.get("val_curve") or []]
        if not curve:
            continue
        params = ", ".join(f"{k}={_fmt(best.get(k))}" for k in swept if k != "rule")
        ax.plot(range(len(curve)), [float("nan") if v is None else v for v in curve], marker="o", markersize=3,
                label=f"{rule} ({params}) {best['outcome']}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("best run of each rule", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "best-curves.png"
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
