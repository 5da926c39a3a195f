"""Matplotlib helpers the experiments' figures share (headless: the Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def mean_std_band(ax, x, curves, label, **kwargs):
    """Plot the mean of ``curves`` (seeds x points) against ``x`` with a ±std band."""
    curves = np.asarray(curves, dtype=float)
    mean, std = curves.mean(0), curves.std(0)
    line, = ax.plot(x, mean, label=label, **kwargs)
    if len(curves) > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def save_figure(fig, out, name: str) -> str:
    """Lay ``fig`` out, write it to ``out/name`` (110 dpi, the size every report's figures share), close it
    (pyplot keeps figures alive until closed) and return ``name`` for the report's list of figures."""
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    pyplot().close(fig)
    return name
