"""The sweep's results table: results.csv and results.json in the sweep directory.

One row per run: its key and run directory, every swept parameter, then
``best_val_accuracy``, ``best_epoch``, ``test_error`` (at the best validation
epoch), ``final_test_error``, ``outcome`` (trained, refused, collapsed, diverged;
or ``crashed``/``invalid`` when the run never finished), ``outcome_epoch``,
``seconds`` (wall time of the run; for a run trained in a population, its 1/N share of the
population's), ``attempts``, ``status`` and ``population`` (the population job that trained the
run, empty for a run trained alone; see :mod:`feedalign.sweeps.runner`). results.json
also keeps each run's full config and its validation curve (for the figures).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import RunDirError
from ..files import atomic_write, read_jsonl, write_json

OUTCOME_LETTERS = {"trained": "T", "refused": "R", "collapsed": "C", "diverged": "D", "crashed": "X", "invalid": "I"}
RESULT_COLUMNS = ("best_val_accuracy", "best_epoch", "test_error", "final_test_error", "outcome", "outcome_epoch",
                  "seconds", "attempts", "status", "population")


def val_curve(run_dir: Path) -> list:
    """Validation accuracy per epoch (epoch 0 first) from a run's metrics.jsonl, or [] if there is none."""
    out = []
    for row in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        value = row.get("val_accuracy")
        if value is None:
            value = row.get("test_accuracy")  # no validation split: the engine selects on test
        out.append(value)
    return out


def make_row(point, run_dir: Path, summary: dict | None, *, status: str, seconds: float | None, attempts: int,
             error: str | None = None, curve: list | None = None, population: str | None = None) -> dict:
    summary = summary or {}
    outcome = summary.get("outcome") if status == "done" else status
    row = {"key": point.key, "hash": point.hash, "run_dir": str(run_dir), **point.params,
           "best_val_accuracy": summary.get("best_val_accuracy"), "best_epoch": summary.get("best_epoch"),
           "test_error": summary.get("test_error_at_best"), "final_test_error": summary.get("final_test_error"),
           "outcome": outcome, "outcome_epoch": summary.get("outcome_epoch"),
           "seconds": seconds, "attempts": attempts, "status": status, "population": population}
    if error:
        row["error"] = error
    row["config"] = {k: v for k, v in point.config.to_dict().items() if k not in ("out_dir", "name", "threads")}
    row["val_curve"] = curve if curve is not None else val_curve(run_dir)
    return row


def write_results(sweep_dir: Path, rows: list[dict], swept: list[str]) -> None:
    """Rewrite results.json and results.csv atomically (a killed sweep leaves the last complete table)."""
    sweep_dir = Path(sweep_dir)
    write_json(sweep_dir / "results.json", {"swept": swept, "runs": rows}, indent=1)
    columns = ["key", "run_dir", *swept, *RESULT_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    atomic_write(sweep_dir / "results.csv", buffer.getvalue())


def read_results(source) -> tuple[list[dict], list[str]]:
    """``(rows, swept)`` from a sweep directory, a results.json path, or a list of rows (swept guessed)."""
    if isinstance(source, dict) and "runs" in source:
        return list(source["runs"]), list(source.get("swept", []))
    if isinstance(source, (list, tuple)):
        rows = list(source)
        fixed = {"key", "hash", "run_dir", "config", "val_curve", "error", *RESULT_COLUMNS}
        swept = []
        for row in rows:
            swept += [k for k in row if k not in fixed and k not in swept]
        return rows, swept
    path = Path(source)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise RunDirError(f"no sweep results at {str(path)!r}; run the sweep first")
    data = json.loads(path.read_text())
    return list(data["runs"]), list(data.get("swept", []))
