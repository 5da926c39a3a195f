"""Witnesses: a replay of seconds that shows a published result still belongs to the code as it is now.

A full-size reproduction takes up to hours; its result key hashes the package source, so any edit of any
module marks it stale. A *witness* is what the code computes cheaply from the same settings, stored with the
result when it is made:

- for a :class:`~feedalign.experiments.TrainingExperiment`: every run of the experiment (each learner and
  seed, exactly as the reproduction configures it: data order, init, feedback, optimizer, schedule, rule
  hooks) trained for its first ``STEPS`` optimizer steps, then summarised by the sum and sum of squares of
  every floating-point tensor of its ``state_dict`` (weights and fixed feedback) and its test loss and
  accuracy at that point;
- for other experiments: every number of their quick size (the same code at a size of seconds).

``feedalign reproduce --verify`` recomputes the witness of a published result whose key differs only by
the code (same config and package version) and compares it with the stored one, number by number within
a relative ``TOLERANCE`` (float rounding across CPUs; on the same machine they agree exactly). If all agree,
the result is re-keyed to the current code, and ``results.json`` records the code that produced it and
every verification; otherwise it stays stale and the first difference is named. A witness covers what a
code change can silently alter on the way to the numbers (models, rules, data, optimizer, schedule,
evaluation); it does not cover steps after the first ``STEPS`` of a run: a change that acts only later in
training (a schedule's tail, a rule's late phase) must change the config or be rerun with ``--force``.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..training import train
from ..training.engine import evaluate
from . import base
from ._training import TrainingExperiment

STEPS = 20
TOLERANCE = 1e-6
_TIMING = ("seconds", "run_dir")  # keys whose values are measurements of the machine, not of the code


class _Enough(Exception):
    """Raised by the probe to end a run after its first ``STEPS`` steps."""


class _Probe:
    """Training callback: after ``steps`` optimizer steps, fingerprint the model and stop the run."""

    def __init__(self, steps: int):
        self.steps, self.run, self.values = steps, None, None

    def on_train_begin(self, run):
        self.run = run

    def on_step(self, step, model, batch):
        if step == self.steps:
            self.values = fingerprint(self.run)
            raise _Enough

    def on_train_end(self, summary):  # a run shorter than ``steps``: its final state
        if self.values is None:
            self.values = fingerprint(self.run)


def fingerprint(run) -> dict:
    """Step count, ``[sum, sum of squares]`` of each floating-point tensor of the model's state, and the test
    loss and accuracy of ``run`` (a :class:`feedalign.training.engine.Run`) as it is now."""
    state = {name: [float(t.double().sum()), float(t.double().square().sum())]
             for name, t in run.model.state_dict().items() if t.is_floating_point()}
    test_x, test_y = run.data.test_x.to(run.device), run.data.test_y.to(run.device)
    loss, accuracy = evaluate(run.model, test_x, test_y, run.loss_fn, classification=run.data.task == "classification")
    return {"step": run.step, "state": state, "test_loss": loss, "test_accuracy": accuracy}


def compute_witness(name: str, config: dict, *, steps: int = STEPS, chosen: dict | None = None,
                    quick_results: Callable[[str], object] | None = None) -> dict:
    """The witness of experiment ``name`` at ``config`` (``experiment_config``'s) under the code as it is now;
    ``chosen``: the settings its validation search chose (results.json's ``search.chosen``), which the runs use.
    ``quick_results(name)``: every number of the quick size (:func:`feedalign.experiments.runner.run_experiment`
    gives it), needed for an experiment that is not a :class:`TrainingExperiment`."""
    experiment = base.get_experiment(name)
    threads = torch.get_num_threads()
    try:
        if isinstance(experiment, TrainingExperiment):
            kind, values = f"first {steps} steps of every run", _first_steps(experiment, config, steps, chosen)
        else:
            if quick_results is None:
                raise ValueError(f"the witness of {name!r} is its quick size's numbers: pass quick_results")
            kind, values = "every number of the quick size", quick_results(name)
    finally:
        torch.set_num_threads(threads)
    return {"kind": kind, "steps": steps, "package_hash": base.package_hash(), "values": values}


def _first_steps(experiment: TrainingExperiment, config: dict, steps: int, chosen: dict | None = None) -> list[dict]:
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, seed, run_config in experiment.run_configs(config, Path(tmp), chosen):
            probe = _Probe(steps)
            try:
                train(run_config, callbacks=[probe], progress="none")
            except _Enough:
                pass
            values.append({"label": label, "seed": seed, **probe.values})
    return values


def without_timing(obj):
    """``obj`` without the entries that measure the machine rather than the code (times, run folders)."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if not any(t in k for t in _TIMING)}
    if isinstance(obj, (list, tuple)):
        return [without_timing(v) for v in obj]
    return obj


def first_difference(stored, new, path: str = "") -> str | None:
    """Where two witnesses' values differ (beyond ``TOLERANCE`` for numbers), as ``path: stored -> new``; None if nowhere."""
    if isinstance(stored, dict) and isinstance(new, dict):
        for key in list(stored) + [k for k in new if k not in stored]:
            if key not in stored or key not in new:
                return f"{path}/{key}: {'missing' if key not in stored else stored[key]!r} -> " \
                       f"{'missing' if key not in new else new[key]!r}"
            found = first_difference(stored[key], new[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(new, list):
        if len(stored) != len(new):
            return f"{path}: {len(stored)} entries -> {len(new)}"
        for i, (a, b) in enumerate(zip(stored, new)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(stored, bool) or isinstance(new, bool):  # True == 1 in Python; not for a witness
        return None if type(stored) is type(new) and stored == new else f"{path}: {stored!r} -> {new!r}"
    if isinstance(stored, (int, float)) and isinstance(new, (int, float)):
        same = (math.isnan(stored) and math.isnan(new)) or math.isclose(stored, new, rel_tol=TOLERANCE, abs_tol=1e-12)
        return None if same else f"{path}: {stored!r} -> {new!r}"
    return None if stored == new else f"{path}: {stored!r} -> {new!r}"


def settings_changed(config: dict, stored: dict) -> list[str]:
    """The keys where an experiment's resolved ``config`` differs from the one a results.json ``stored``,
    compared as JSON holds them (a dict keyed by depth, ``{1: 25}``, comes back as ``{"1": 25}``)."""
    config = json.loads(json.dumps(config, default=str))
    return sorted(k for k in set(config) | set(stored) if config.get(k) != stored.get(k))
