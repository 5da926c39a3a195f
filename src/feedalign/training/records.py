"""What a run leaves on disk besides checkpoints: metrics tables, summary, learning-curve plots.

Run directory layout::

    RUN_DIR/config.toml        the resolved Config (``feedalign train --config`` repeats the run)
    RUN_DIR/metrics.jsonl      one JSON object per epoch (epoch 0 = before training)
    RUN_DIR/metrics.csv        the same rows as a table
    RUN_DIR/steps.jsonl        per-step values logged by callbacks (if any)
    RUN_DIR/summary.json       best epoch, test errors, seconds per epoch, outcome
    RUN_DIR/accuracy.png, loss.png
    RUN_DIR/checkpoints/latest.pt, best.pt
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..files import atomic_write, save_figure, write_jsonl


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from ``rows`` (so a resume drops rows past its checkpoint)."""
    write_jsonl(run_dir / "metrics.jsonl", rows)
    columns: list[str] = []
    for row in rows:  # callbacks may add columns; keep first-seen order
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    atomic_write(run_dir / "metrics.csv", buffer.getvalue())


def fresh_path(out: Path, base: str) -> Path:
    """``out/base``, or ``out/base-2``, ``-3``, ... when that name is taken (timestamped run names)."""
    path, n = out / base, 1
    while path.exists():
        n += 1
        path = out / f"{base}-{n}"
    return path


# Margins of an epoch plot in inches: room for y tick labels of up to five characters, the axis labels and a
# title of one line. Fixed where they fit, because fig.tight_layout() draws the figure once more only to
# measure it (a third of a plot's time, and every run writes two).
_MARGINS = dict(left=0.75, right=0.15, bottom=0.5, top=0.35)
_MARGIN_TICK_CHARS = 5


def epoch_figure(width: float, height: float):
    """A ``(figure, axes)`` for a plot against epochs, without pyplot: no global figure state to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def finish_epoch_plot(fig, ax, path: Path, ylabel: str, title: str) -> None:
    """Label an axis drawn against epochs and save the figure to ``path``."""
    import matplotlib.ticker

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    labels = ax.yaxis.get_major_formatter().format_ticks(ax.get_yticks())
    if max(map(len, labels), default=0) > _MARGIN_TICK_CHARS:  # a diverging loss, say: measure the labels
        fig.tight_layout()
    else:
        width, height = fig.get_size_inches()
        fig.subplots_adjust(left=_MARGINS["left"] / width, right=1 - _MARGINS["right"] / width,
                            bottom=_MARGINS["bottom"] / height, top=1 - _MARGINS["top"] / height)
    save_figure(fig, path, dpi=100)


def plot_curves(run_dir: Path, rows: list[dict], title: str) -> list[Path]:
    """accuracy.png (classification) and loss.png: train/validation/test per epoch."""
    written = []
    for metric, ylabel in (("accuracy", "accuracy"), ("loss", "loss")):
        series = {split: [(r["epoch"], r.get(f"{split}_{metric}")) for r in rows] for split in ("train", "val", "test")}
        series = {s: [(e, v) for e, v in pts if v is not None and math.isfinite(v)] for s, pts in series.items()}
        if not any(series.values()):
            continue
        fig, ax = epoch_figure(5, 3.5)
        for split, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label={"val": "validation"}.get(split, split))
        path = run_dir / f"{metric}.png"
        finish_epoch_plot(fig, ax, path, ylabel, title)
        written.append(path)
    return written
