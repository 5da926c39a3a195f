"""``compare(config, rules, seeds)``: one config trained with several rules and seeds, side by side.

Output directory (``config.out_dir/config.name``, default ``runs/<timestamp>-compare-<dataset>``)::

    <rule>-seed<s>/     one run directory per (rule, seed)
    compare.json        the table's rows and every run's summary
    compare.md          the table in Markdown
    curves.png          validation accuracy per epoch per rule: mean over seeds, std band
    error-and-alignment.png  test error and the hidden layers' signal angle to the true gradient against
                        optimizer steps (log scale), mean over seeds and std band
    _workers/           job files and per-run logs, when the runs were trained in worker processes

``evals_per_epoch=N`` also evaluates the test error at steps 1, 2, 4, ... and N times per epoch
(:class:`TestErrorCurve`, into each run's ``steps.jsonl``), so that the figure shows learning from
the first steps on; without it the figure has the end of each epoch.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import math
import multiprocessing
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..diagnostics import alignment
from ..diagnostics.plots import plot_error_and_alignment
from ..errors import ConfigError, ConfigTypeError, RunDirError
from ..files import atomic_write, write_json
from ..training import records
from ..training.build import build_model, check_fit, load_data, resolve_device
from ..training.config import Config
from ..training.engine import RunResult, evaluate, resume, train
from ..training.population import train_population, unsupported
from .local import run_local, training_job

DEFAULT_RULES = ("bp", "fa", "dfa", "ifa")
FIGURE = "error-and-alignment.png"


class TestErrorCurve:
    """A :class:`~feedalign.training.engine.Callback`: the test error at steps 1, 2, 4, ... up to a
    ``1/per_epoch`` of an epoch, then every ``1/per_epoch`` of an epoch and at each epoch's end, appended
    to ``RUN_DIR/steps.jsonl`` as ``{"epoch", "step", "test_error", "hidden_signal_angle"}``.

    ``hidden_signal_angle`` is the mean over hidden layers of the signal angle to the true gradient
    (:func:`~feedalign.diagnostics.alignment`) on the probe batch ``alignment.jsonl`` uses, so the
    figure sees the first steps, where FA's signal turns from orthogonal towards the gradient.
    Neither measurement touches RNG, gradients or training state, so the run trains as it would
    without it. Classification only; a regression run gets no rows.
    """

    __test__ = False  # not a pytest class

    def __init__(self, per_epoch: int = 4):
        if isinstance(per_epoch, bool) or not isinstance(per_epoch, int) or per_epoch < 1:
            raise ConfigError(f"evaluations per epoch must be a positive integer; got {per_epoch!r}")
        self.per_epoch = per_epoch
        self.run = self.probe = None
        self.logged = -1

    def on_train_begin(self, run) -> None:
        if run.data.task != "classification" or not len(run.data.test_x):
            return
        self.run = run
        self.test = (run.data.test_x.to(run.device), run.data.test_y.to(run.device))
        x, y = (run.data.val_x, run.data.val_y) if len(run.data.val_x) else self.test  # AlignmentCallback's probe
        self.probe = (x[:256].to(run.device), y[:256].to(run.device))
        self.every = max(1, math.ceil(math.ceil(len(run.data.train_x) / run.config.batch_size) / self.per_epoch))

    def on_step(self, step: int, model, batch) -> None:
        if self.run is not None and (step % self.every == 0 or (step < self.every and step & (step - 1) == 0)):
            self._log(step)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if self.run is not None and self.logged != self.run.step and metrics.get("test_accuracy") is not None:
            self.run.log({"test_error": 1 - metrics["test_accuracy"]})  # the engine's own evaluation
            self.logged = self.run.step

    def _log(self, step: int) -> None:
        _, accuracy = evaluate(self.run.model, *self.test, self.run.loss_fn, classification=True)
        values = {"test_error": 1 - accuracy}
        if self.probe is not None:
            try:
                angles = [row["signal_angle"] for row in alignment(self.run.model, *self.probe,
                                                                  self.run.loss_fn).to_dicts()[:-1]]
            except (ValueError, RuntimeError):  # a model the diagnostic cannot measure: the error curve alone
                self.probe, angles = None, []
            angles = [a for a in angles if not math.isnan(a)]
            if angles:  # the output layer (left out) gets the true error under every rule
                values["hidden_signal_angle"] = sum(angles) / len(angles)
        self.run.log(values, step=step)
        self.logged = step


@dataclass
class CompareResult:
    """``rows``: one dict per rule (see :meth:`table`); ``runs[rule]``: its RunResults in seed order."""

    out_dir: Path
    rows: list[dict]
    runs: dict[str, list[RunResult]]

    def table(self, markdown: bool = False) -> str:
        """rule | test error mean ± std (%) over seeds (sample std; none from one seed) | best epoch | s/epoch | outcome(s)."""
        head = ["rule", "test error % (mean ± std)", "best epoch (mean)", "s/epoch", "outcome"]
        body = [[r["rule"], _pm(r["test_error_mean"], r["test_error_std"]),
                 "-" if r["best_epoch"] is None else f"{r['best_epoch']:.3g}",
                 "-" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}",
                 r["outcomes"]] for r in self.rows]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join(fmt.format(*row).rstrip() for row in [head, ["-" * w for w in widths]] + body) + "\n"


def compare(config: Config, rules=DEFAULT_RULES, seeds=(0,), *, progress: str = "auto", callbacks=(),
            workers: int = 1, population: bool = True, evals_per_epoch: int = 0) -> CompareResult:
    """Train ``config`` once per (rule, seed) and tabulate test error at the best validation epoch.

    Every (rule, seed) config, the dataset and the architecture are validated before
    anything is written. ``workers`` > 1 trains that many runs at once in worker
    processes (each with ``config.threads`` threads): the same numbers as one after
    another, since every run is seeded on its own; callbacks need ``workers=1``.
    ``population`` (with ``workers=1``, no callbacks, two seeds or more): the seeds of a rule
    that :mod:`~feedalign.training.population` supports train as one batched model, each
    with its ordinary run directory; the numbers equal separate runs' to float tolerance,
    not bitwise (``population=False`` for bitwise-reproducible separate runs).
    ``evals_per_epoch`` > 0 adds :class:`TestErrorCurve` to every run (the runs' numbers do not
    change); a population cannot run it, so the seeds then train as separate runs.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a positive integer; got {workers!r}")
    if not isinstance(population, bool):
        raise ConfigTypeError(f"population must be True or False; got {population!r}")
    if workers > 1 and callbacks:
        raise ConfigError("callbacks run in this process: use workers=1 with callbacks")
    if isinstance(evals_per_epoch, bool) or not isinstance(evals_per_epoch, int) or evals_per_epoch < 0:
        raise ConfigError(f"evals_per_epoch must be a whole number >= 0; got {evals_per_epoch!r}")
    rules, seeds = list(rules), list(seeds)
    if not rules or not seeds:
        raise ConfigError("compare needs at least one rule and one seed")
    if len(set(rules)) != len(rules) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare: rules and seeds must not repeat; got rules {rules} and seeds {seeds}")
    out_dir = _compare_dir(config)
    configs = {(r, s): config.replace(rule=r, seed=s, out_dir=str(out_dir), name=f"{r}-seed{s}")
               for r in rules for s in seeds}
    datasets = {}
    for s in seeds:  # the validation split depends on the seed: one load per seed, shared by all rules
        datasets[s] = load_data(configs[rules[0], s])
        check_fit(configs[rules[0], s], datasets[s])
    resolve_device(config.device)
    for r in rules:  # e.g. dfa needs a hidden layer: fail now, not after bp has trained
        build_model(configs[r, seeds[0]].replace(device="cpu"), resolve_device("cpu"))
    runs: dict[str, list[RunResult]] = {r: [] for r in rules}
    curve = (lambda: [TestErrorCurve(evals_per_epoch)]) if evals_per_epoch else list
    if workers > 1 and evals_per_epoch:
        _train_in_processes([configs[r, s] for s in seeds for r in rules], workers, evals_per_epoch)
    elif workers > 1:
        _train_in_workers([configs[r, s] for s in seeds for r in rules], out_dir, workers)
    batched = set()
    if population and workers == 1 and not callbacks and not evals_per_epoch and len(seeds) > 1:
        batched = {r for r in rules if unsupported(configs[r, seeds[0]]) is None}
        for r in rules:
            if r in batched:
                runs[r] = train_population([configs[r, s] for s in seeds], [datasets[s] for s in seeds],
                                           progress=progress)
    for s in seeds:
        for r in rules:
            if r in batched:
                continue
            if workers > 1:  # finished: resume() reads the run directory back, model included
                runs[r].append(resume(out_dir / configs[r, s].name, progress="none"))
            else:
                runs[r].append(train(configs[r, s], [*callbacks, *curve()], progress=progress, data=datasets[s]))
    rows = [_aggregate(r, runs[r]) for r in rules]
    result = CompareResult(out_dir, rows, runs)
    write_json(out_dir / "compare.json", {
        "config": config.to_dict(), "rules": rules, "seeds": seeds, "rows": rows,
        "runs": [{"rule": r, "seed": res.config.seed, "summary": res.summary} for r in rules for res in runs[r]]})
    atomic_write(out_dir / "compare.md", f"# {config.dataset}, {config.architecture} {config.activation}, "
                      f"{config.epochs} epochs, seeds {seeds}\n\n" + result.table(markdown=True))
    plot_compare(out_dir / "curves.png", runs, title=f"{config.dataset}, {config.architecture}")
    plot_error_and_alignment({r: [res.run_dir for res in runs[r]] for r in rules}, out_dir / FIGURE,
                             title=f"{config.dataset}, {config.architecture}")
    return result


def _train_one(config: dict, evals_per_epoch: int) -> None:
    """Runs in a worker process of :func:`_train_in_processes`."""
    train(Config.from_dict(config), [TestErrorCurve(evals_per_epoch)], progress="none")


def _train_in_processes(configs: list[Config], workers: int, evals_per_epoch: int) -> None:
    """Train ``configs`` with :class:`TestErrorCurve`, ``workers`` at a time in fresh (spawned) processes.

    The sweep's worker pool (:func:`_train_in_workers`) takes no callbacks, so the test-error curve
    needs processes of its own; each run is seeded on its own, so the numbers are the same.
    """
    threads = str(configs[0].threads or 1)
    saved = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({v: threads for v in saved})  # the children's OpenMP pools, sized before torch loads
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_one, c.to_dict(), evals_per_epoch): c.name for c in configs}
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    failed = [f"{name}: {type(f.exception()).__name__}: {f.exception()}" for f, name in futures.items()
              if f.exception() is not None]
    if failed:
        raise RuntimeError(f"compare: {len(failed)} run(s) failed: {'; '.join(failed)}")


def _train_in_workers(configs: list[Config], out_dir: Path, workers: int) -> None:
    """Train ``configs`` in the sweep's local pool of worker processes; a failed run is an error naming its log."""
    jobs = [training_job(c, out_dir / c.name) for c in configs]
    failed = []

    def on_done(job, summary, status, seconds, attempts, error):
        if status != "done":
            failed.append(f"{job['key']}: {error}")

    run_local(jobs, workers=workers, threads=configs[0].threads or 1, retries=0, sweep_dir=out_dir / "_workers",
              on_done=on_done, log=lambda message: None)
    if failed:
        raise RuntimeError(f"compare: {len(failed)} run(s) failed: {'; '.join(failed)}")


def _compare_dir(config: Config) -> Path:
    out = Path(config.out_dir)
    if config.name is not None:
        path = out / config.name
        if path.exists():
            raise RunDirError(f"compare directory {str(path)!r} already exists; choose another name")
        return path
    return records.fresh_path(out, f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-compare-{config.dataset}")


def _aggregate(rule: str, results: list[RunResult]) -> dict:
    errors = [r.summary["test_error_at_best"] for r in results if r.summary["test_error_at_best"] is not None]
    best = [r.summary["best_epoch"] for r in results if r.summary["best_epoch"] is not None]
    speed = [r.summary["seconds_per_epoch"] for r in results if r.summary["seconds_per_epoch"] is not None]
    counts = Counter(r.summary["outcome"] for r in results)
    outcomes = ", ".join(f"{n} {o}" if len(results) > 1 else o for o, n in counts.most_common())
    return {
        "rule": rule, "seeds": [r.config.seed for r in results],
        "test_error_mean": statistics.fmean(errors) if errors else None,
        "test_error_std": statistics.stdev(errors) if len(errors) > 1 else None,  # none from one seed
        "test_errors": errors, "best_epoch": statistics.fmean(best) if best else None,
        "seconds_per_epoch": statistics.fmean(speed) if speed else None,
        "outcomes": outcomes, "outcome_list": [r.summary["outcome"] for r in results],
    }


def _pm(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def plot_compare(path: Path, runs: dict[str, list[RunResult]], title: str) -> None:
    """Validation accuracy (or loss, for regression) per epoch: each rule's mean over seeds with a ±std band."""

    fig, ax = records.epoch_figure(6, 4)
    ylabel = "validation accuracy"
    for rule, results in runs.items():
        split = results[0].summary["selection_split"]
        key = f"{split}_accuracy" if results[0].summary["task"] == "classification" else f"{split}_loss"
        ylabel = key.replace("val_", "validation ").replace("_", " ")
        length = min(len(r.metrics) for r in results)
        values = np.array([[m[key] if m[key] is not None else math.nan for m in r.metrics[:length]] for r in results])
        epochs = np.arange(length)
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=rule)
        if len(results) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    records.finish_epoch_plot(fig, ax, path, ylabel, title)
