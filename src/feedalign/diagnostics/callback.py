"""Log the alignment table during training: ``train(config, callbacks=[AlignmentCallback(every=100)])``.

Every ``every`` optimizer steps (and once before the first step) the table of
:func:`feedalign.diagnostics.alignment` on a fixed probe batch, the first
``probe_size`` validation examples (test examples when there is no validation
set), is appended to ``RUN_DIR/alignment.jsonl``, one JSON object per layer::

    {"step": 100, "epoch": 1, "layer": 1, "name": "0", "signal_angle": 81.2, ...}

NaN is written as null. The probe touches no training state (see ``alignment``),
so a run with the callback follows the same trajectory as one without.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from ..errors import ConfigError, ConfigTypeError, RunDirError
from ..files import jsonl_line, read_jsonl, write_jsonl
from .alignment import alignment

FILE_NAME = "alignment.jsonl"


class AlignmentCallback:
    """A :class:`feedalign.training.engine.Callback` (same methods; no import, so no import cycle).

    Args:
        every: steps between measurements; 0 disables the callback.
        probe_size: examples in the probe batch.
    """

    def __init__(self, every: int = 200, probe_size: int = 256):
        for value, what, low in ((every, "alignment interval must be a whole number of steps >= 0 (0 disables)", 0),
                                 (probe_size, "alignment probe size must be a positive integer", 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigTypeError(f"{what}; got {value!r}")
            if value < low:
                raise ConfigError(f"{what}; got {value!r}")
        self.every, self.probe_size = every, probe_size
        self.run = None
        self.seconds = 0.0  # time spent measuring, for overhead reports
        self.measurements = 0

    def on_train_begin(self, run) -> None:
        if not self.every:
            return
        self.run = run
        data = run.data
        x, y = (data.val_x, data.val_y) if len(data.val_x) else (data.test_x, data.test_y)
        self.probe = (x[:self.probe_size].to(run.device), y[:self.probe_size].to(run.device))
        self.path = Path(run.run_dir) / FILE_NAME
        rows = read_jsonl(self.path)
        kept = [r for r in rows if r["step"] <= run.step]  # a resume drops what came after its checkpoint
        if len(kept) != len(rows):
            write_jsonl(self.path, kept)
        if not any(r["step"] == run.step for r in kept):
            self._measure(run.step, run.model)

    def on_step(self, step: int, model, batch) -> None:
        if self.every and self.run is not None and step % self.every == 0:
            self._measure(step, model)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, summary: dict) -> None: ...

    def _measure(self, step: int, model) -> None:
        start = time.perf_counter()
        try:
            table = alignment(model, *self.probe, self.run.loss_fn)
        except (ValueError, RuntimeError) as err:  # a diagnostic must not end a long run: say so once, stop measuring
            warnings.warn(f"alignment logging stopped at step {step}: {err}", RuntimeWarning, stacklevel=2)
            self.every = 0
            return
        lines = [jsonl_line({"step": step, "epoch": self.run.epoch, "rule": table.rule, **row})
                 for row in table.to_dicts()]
        with open(self.path, "a") as f:
            f.writelines(lines)
        self.seconds += time.perf_counter() - start
        self.measurements += 1


def read_alignment(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN_DIR/alignment.jsonl`` (null angles back to NaN); RunDirError if the run has none."""
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} has no {FILE_NAME}; train it with alignment logging "
                          "(`feedalign train --alignment-every N`)")
    rows = read_jsonl(path)
    for row in rows:
        for key, value in row.items():
            if value is None and key != "reason":
                row[key] = math.nan
    return rows
