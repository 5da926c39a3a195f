"""The training loop: ``train(config) -> RunResult`` and ``resume(run_dir) -> RunResult``.

One run = one run directory (see :mod:`feedalign.training.records`). Each epoch
trains on shuffled minibatches, evaluates validation and test sets under
``torch.inference_mode`` (the rules' hooks fall back to the plain forward pass
without grad), writes the metrics, then a checkpoint. A NaN/Inf loss stops the
run at once, leaving the last good checkpoint.

The pass over the training set is an :class:`EpochTrainer`: the engine's own for one run, or one
that trains several runs at once (population training, :mod:`feedalign.training.population`,
through :func:`train_together`); everything else (run directories, evaluation, schedules,
callbacks, checkpoints, divergence, summaries) is this module's, the same for both.
"""
from __future__ import annotations

import abc
import contextlib
import datetime
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from ..data import batches
from ..data.augment import random_crop_flip
from ..diagnostics.callback import AlignmentCallback
from ..errors import ConfigError, RunDirError
from ..files import FolderLock, atomic_write, drop_torn_tail, jsonl_line, read_jsonl, write_json, write_jsonl
from . import records
from .build import (build_model, check_fit, derived_seeds, load_data, make_loss, make_optimizer, make_schedule,
                    resolve_device)
from . import integrity
from .checkpoint import read_checkpoint, save_checkpoint, set_rng_states
from .config import Config
from .outcome import label_outcome
from .step import Step

EVAL_BATCH = 2048  # evaluation batch size: memory only, results do not depend on it beyond float rounding


def _training_error_reached(metrics: list[dict], threshold: float | None) -> bool:
    """Nøkland's stopping rule (anokland/dfa-torch, Main.lua): ``m = 0.75 m + 0.25 err`` after every epoch,
    from ``m = 1``, with ``err`` the epoch's training error; stop once ``m <= threshold``."""
    if threshold is None:
        return False
    running = 1.0
    for row in metrics:
        if row.get("train_accuracy") is not None:
            running = 0.75 * running + 0.25 * (1.0 - row["train_accuracy"])
    return running <= threshold


class Callback:
    """Hooks into :func:`train`; subclass and override what you need (or pass any object
    with some of these methods: missing ones are skipped).

    ``on_train_begin(run)`` gets the :class:`Run` (``run.log(...)`` writes per-step values
    to RUN_DIR/steps.jsonl); ``on_step`` runs after every optimizer step, while the
    parameters' ``.grad`` still hold that step's gradients; ``on_epoch_end`` gets the
    epoch's row after evaluation and may add keys to it (they become columns of
    metrics.jsonl/csv). ``step`` counts optimizer steps from 1 over the whole run.
    """

    def on_train_begin(self, run: "Run") -> None: ...

    def on_step(self, step: int, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, summary: dict) -> None: ...


@dataclass
class RunResult:
    """What :func:`train` returns: where the run lives, its summary, per-epoch metrics and the final model."""

    run_dir: Path
    summary: dict
    metrics: list[dict]
    model: nn.Module
    config: Config


@dataclass
class Run:
    """A run in progress, as callbacks see it."""

    config: Config
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: object
    device: torch.device
    loss_fn: object
    schedule: object = None
    loss_name: str = ""
    epoch: int = 0
    step: int = 0
    _steps_file: object = field(default=None, repr=False)

    def log(self, values: dict, step: int | None = None) -> None:
        """Append ``{"epoch", "step", **values}`` to RUN_DIR/steps.jsonl (flushed at each epoch end)."""
        if self._steps_file is None:
            self._steps_file = open(self.run_dir / "steps.jsonl", "a")
        self._steps_file.write(jsonl_line({"epoch": self.epoch, "step": self.step if step is None else step, **values}))

    def _flush(self) -> None:
        if self._steps_file is not None:
            self._steps_file.flush()

    def _close(self) -> None:
        if self._steps_file is not None:
            self._steps_file.close()
            self._steps_file = None


# -- public API -----------------------------------------------------------------------------

def train(config: Config, callbacks=(), *, progress: str = "auto", data=None) -> RunResult:
    """Train ``config`` in a new run directory and return its :class:`RunResult`.

    ``progress``: ``"bar"`` (tqdm on stderr), ``"lines"`` (one line per epoch on stderr),
    ``"none"``, or ``"auto"`` (bar when stderr is a terminal, else lines).
    Everything is validated (config, dataset, device, run directory) before the run
    directory is created; a run that fails before its first checkpoint removes it.
    ``data``: the :class:`feedalign.data.DataSplits` of these settings, if already loaded.
    """
    if not isinstance(config, Config):
        raise TypeError(f"train expects a feedalign.training.Config, got {type(config).__name__}")
    bar = _Progress(progress, config)
    run = _prepare(config, data)
    run.run_dir = _new_run_dir(config)
    with _create_run_dir(run.run_dir, config):  # held until the run ends: no second process writes into it
        return _run(run, start=None, callbacks=callbacks, bar=bar)


def resume(run_dir: str | Path, callbacks=(), *, progress: str = "auto") -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint (or from the start if it has none).

    With the same machine and thread count, the result is bitwise that of an uninterrupted run.
    A finished run is returned as it is. A run directory another process is training is
    refused (:class:`~feedalign.files.FolderLock`); torn last lines of its logs are cut off
    before they are appended to.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (run_dir / "config.toml").is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run directory (expected a directory with config.toml, "
                          "as `feedalign train` makes)")
    with FolderLock(run_dir, "run directory"):
        return _resume_locked(run_dir, callbacks, progress)


def _resume_locked(run_dir: Path, callbacks, progress: str) -> RunResult:
    """:func:`resume`, once this process holds ``run_dir``'s lock."""
    config = integrity.read_config(run_dir)  # refuses a config.toml edited since the run started
    # Both checkpoints are checked before anything is written: a damaged best.pt is evidence, not to be overwritten.
    for name in ("best.pt", "latest.pt"):
        if (run_dir / "checkpoints" / name).exists():
            integrity.verify(run_dir, f"checkpoints/{name}", fix=_DAMAGED_FIX)
    bar = _Progress(progress, config)
    run = _prepare(config)
    run.run_dir = run_dir
    latest = run_dir / "checkpoints" / "latest.pt"
    state = read_checkpoint(run_dir, "latest.pt", fix=_DAMAGED_FIX) if latest.exists() else None
    if integrity.load(run_dir) is None:
        integrity.adopt(run_dir, config.replace(name=None).to_dict())
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if (run_dir / "summary.json").exists():
        return _finished_result(run, state)
    for log in sorted(run_dir.glob("*.jsonl")):  # a kill mid-append: the next append must start a line of its own
        drop_torn_tail(log)
    return _run(run, start=state, callbacks=callbacks, bar=bar)


_DAMAGED_FIX = ("; it was left as it is: restore it from a copy, or move it out of checkpoints/ to resume without it "
                "(without latest.pt the run restarts from epoch 0)")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, classification: bool,
             batch_size: int = EVAL_BATCH) -> tuple[float | None, float | None]:
    """``(mean loss, accuracy)`` of ``model`` on ``x`` (N, features), ``y`` (N,) or (N, out).

    Accuracy is None for regression; both are None for an empty set. Runs in eval mode
    under ``torch.inference_mode``, where every rule's forward is the plain one.
    """
    if len(x) == 0:
        return None, None
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            out = model(xb)
            total += float(loss_fn(out, yb)) * len(xb)
            if classification:
                correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    return total / len(x), (correct / len(x) if classification else None)


# -- internals ------------------------------------------------------------------------------

def _prepare(config: Config, data=None) -> Run:
    """Validate against machine and dataset and build everything; creates no file."""
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_data(config) if data is None else data
    loss_name = check_fit(config, data)
    model = build_model(config, device)
    optimizer = make_optimizer(config, model)
    return Run(config=config, run_dir=Path(), model=model, optimizer=optimizer, data=data, device=device,
               loss_fn=make_loss(loss_name, data.num_classes), schedule=make_schedule(config, optimizer),
               loss_name=loss_name)


def _new_run_dir(config: Config) -> Path:
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out_dir {str(out)!r} exists and is not a directory")
    if config.name is not None:
        run_dir = out / config.name
        if run_dir.exists():
            raise RunDirError(f"run directory {str(run_dir)!r} already exists; continue it with "
                              f"`feedalign train --resume {run_dir}` or choose another name")
        return run_dir
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return records.fresh_path(out, f"{stamp}-{config.rule}-{config.dataset}")


def _create_run_dir(run_dir: Path, config: Config) -> FolderLock:
    """The run directory with its config.toml, locked by the returned :class:`FolderLock` (released when it is
    released or dropped); nothing is left behind if that fails."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:  # another process made it since _new_run_dir looked: it is theirs, not ours to remove
        raise RunDirError(f"run directory {str(run_dir)!r} was just made by another process; choose another name, "
                          f"or continue that run with `feedalign train --resume {run_dir}`") from None
    try:
        lock = FolderLock(run_dir, "run directory", wait=True)  # a resume that came in between leaves at once
        (run_dir / "checkpoints").mkdir()
        # Without its name: `feedalign train --config RUN_DIR/config.toml` then repeats the run in a new directory.
        settings = config.replace(name=None)
        text = settings.to_toml()
        atomic_write(run_dir / "config.toml", text)
        integrity.start(run_dir, text, settings.to_dict())
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return lock


def _finished_result(run: Run, state: dict | None) -> RunResult:
    """A finished run as it is on disk, with the model of its last checkpoint."""
    if state is not None:
        run.model.load_state_dict(state["model"])
    summary = json.loads((run.run_dir / "summary.json").read_text())
    return RunResult(run.run_dir, summary, read_jsonl(run.run_dir / "metrics.jsonl"), run.model, run.config)


def _seed_globals(seed: int) -> None:
    """Seed the global generators so a run does not depend on what the process did before it."""
    s = derived_seeds(seed)["data"]
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def epoch_generator(config: Config, epoch: int, stream: int = 0) -> torch.Generator:
    """The random stream ``stream`` of ``epoch``: 0 the data order, 1 the rule's after-step noise, 2 the
    augmentation. A function of (seed, epoch, stream) only, so a resumed epoch replays exactly, and a run
    trained in a population draws what its separate run draws."""
    entropy = [derived_seeds(config.seed)["data"], epoch] + ([stream] if stream else [])
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def _run(run: Run, *, start: dict | None, callbacks, bar: "_Progress") -> RunResult:
    """Train from checkpoint ``start`` (None: from scratch) to the last epoch or divergence; write the summary."""
    loop = _Loop(run, _with_config_callbacks(run.config, callbacks), bar)
    try:
        metrics, first_epoch = loop.begin(start)
        (diverged_at,) = _train_epochs([loop], _OneRun(loop), [metrics], [first_epoch])
    except BaseException as err:
        loop.abort(err)
        raise
    finally:
        run._close()
    loop.bar.close()
    return loop.finish(metrics, diverged_at)


def train_together(configs: list[Config], make_trainer: Callable[[list["_Loop"]], "EpochTrainer"], *,
                   datasets: list | None = None, progress: str = "auto",
                   check: Callable[[Run], str | None] | None = None) -> list[RunResult]:
    """Train ``configs`` from scratch as ordinary runs, each in its own run directory, whose passes over
    the training set one :class:`EpochTrainer` takes together: ``make_trainer(loops)``, called once the
    runs are built and seeded (``loops[i].run`` is config i's :class:`Run`, ``loops[i].train_set`` its
    training tensors on the device). ``check(run)``: why a built run cannot train this way (a
    ValueError before any directory is made), or None. Returns one :class:`RunResult` per config."""
    if not configs:
        raise ValueError("train_together needs at least one config")
    datasets = list(datasets) if datasets is not None else [None] * len(configs)
    bar = _Progress(progress, configs[0])
    runs, loops = [], []
    with contextlib.ExitStack() as locks:  # every run directory held until the runs end
        try:
            runs = [_prepare(config, data) for config, data in zip(configs, datasets)]
            reason = next((r for r in map(check, runs) if r is not None), None) if check else None
            if reason is not None:
                raise ValueError(reason)
            for run in runs:
                run.run_dir = _new_run_dir(run.config)
                locks.enter_context(_create_run_dir(run.run_dir, run.config))
                loops.append(_Loop(run, _with_config_callbacks(run.config, ()), bar))
            metrics = [loop.begin(None)[0] for loop in loops]
            diverged = _train_epochs(loops, make_trainer(loops), metrics, [1] * len(loops))
        except BaseException as err:
            for loop in loops:
                loop.abort(err)
            bar.close()
            raise
        finally:
            for run in runs:
                run._close()
        bar.close()
        return [loop.finish(rows, at) for loop, rows, at in zip(loops, metrics, diverged)]


class EpochTrainer(abc.ABC):
    """One pass over the training set of each of the engine's runs (one run, or several taken together).

    The engine calls :meth:`train_epoch` once per epoch with the runs still training, then ends each
    run's epoch itself (schedule, evaluation, callbacks, checkpoint: ``_Loop.conclude``).
    """

    @abc.abstractmethod
    def train_epoch(self, epoch: int, members: list[int]) -> list[Trained | None]:
        """Train runs ``members`` (indices into the engine's loops) for ``epoch``: per member what its pass
        measured, or None if its loss went NaN/Inf (that run stops, the others go on). A run's
        ``optimizer`` lr is its schedule's for this epoch; its ``step`` counts the steps taken."""

    def stop(self, member: int) -> None:
        """Run ``member`` stopped after an epoch (its evaluation diverged): it trains no more."""


class _OneRun(EpochTrainer):
    """The engine's own pass for a single run: :func:`_train_epoch`."""

    def __init__(self, loop: "_Loop"):
        self.loop = loop

    def train_epoch(self, epoch, members):
        loop = self.loop
        return [_train_epoch(loop.run, epoch, *loop.train_set, loop.classification, loop.callbacks, loop.bar)]


def _train_epochs(loops: list["_Loop"], trainer: EpochTrainer, metrics: list[list[dict]],
                  first_epochs: list[int]) -> list[int | None]:
    """Train every loop from its first epoch to ``config.epochs`` (or its ``stop_train_error``), appending to its
    ``metrics``; per loop the epoch it diverged at, or None."""
    diverged: list[int | None] = [None] * len(loops)
    done = [False] * len(loops)
    for epoch in range(min(first_epochs), max(loop.run.config.epochs for loop in loops) + 1):
        members = []
        for i, loop in enumerate(loops):
            config = loop.run.config
            if done[i] or diverged[i] is not None or epoch < first_epochs[i] or epoch > config.epochs:
                continue
            if _training_error_reached(metrics[i], config.stop_train_error):
                loop.bar.line(f"epoch {epoch - 1}: running mean training error at or below "
                              f"{config.stop_train_error}; stopping")
                done[i] = True
                continue
            loop.run.epoch = epoch
            members.append(i)
        if not members:
            if all(done[i] or diverged[i] is not None or loops[i].run.config.epochs < epoch for i in range(len(loops))):
                break
            continue
        for i, trained in zip(members, trainer.train_epoch(epoch, members)):
            row = None if trained is None else loops[i].conclude(epoch, trained)
            if row is None:
                diverged[i] = epoch
                trainer.stop(i)
                continue
            metrics[i].append(row)
            loops[i].save(metrics[i], epoch)
    return diverged


def _with_config_callbacks(config: Config, callbacks) -> list:
    """The caller's callbacks, plus alignment logging when ``config.alignment_every`` asks and none is given."""
    callbacks = list(callbacks)
    if config.alignment_every and not any(isinstance(cb, AlignmentCallback) for cb in callbacks):
        callbacks.append(AlignmentCallback(every=config.alignment_every))
    return callbacks


class _Loop:
    """One training session of a run: its tensors on the device, callbacks and progress output."""

    def __init__(self, run: Run, callbacks: list, bar: "_Progress"):
        data, to = run.data, run.device
        self.run, self.callbacks, self.bar = run, callbacks, bar
        self.classification = data.task == "classification"
        self.train_set = (data.train_x.to(to), data.train_y.to(to))
        self.eval_sets = {"val": (data.val_x.to(to), data.val_y.to(to)), "test": (data.test_x.to(to), data.test_y.to(to))}
        self.selection_split = "val" if len(data.val_x) else "test"  # no validation set: select on test, and say so

    def begin(self, start: dict | None) -> tuple[list[dict], int]:
        """Metrics so far and the first epoch to train, from scratch or from checkpoint ``start``."""
        run = self.run
        if start is None:
            _seed_globals(run.config.seed)
            metrics = [self.evaluate(0, _UNTRAINED)]
            first_epoch = 1
        else:
            _restore(run, start)
            metrics, first_epoch = list(start["metrics"]), start["epoch"] + 1
            steps = read_jsonl(run.run_dir / "steps.jsonl")
            if steps:  # drop the steps logged after the checkpoint
                write_jsonl(run.run_dir / "steps.jsonl", [r for r in steps if r["epoch"] <= start["epoch"]])
        records.write_metrics(run.run_dir, metrics)  # on resume: drops the rows written after the checkpoint
        self.bar.line(f"{'resuming' if start else 'training'} {run.config.rule} on {run.config.dataset} in {run.run_dir}")
        _call(self.callbacks, "on_train_begin", run)
        run.model.train()
        return metrics, first_epoch

    def conclude(self, epoch: int, trained: Trained) -> dict | None:
        """What follows an epoch's training pass (the run's own, or its share of several runs' pass): the
        schedule's step, the evaluation, the callbacks; the metrics row, or None if the evaluation diverged."""
        run = self.run
        run.schedule.step()
        row = self.evaluate(epoch, trained)
        _call(self.callbacks, "on_epoch_end", epoch, row)
        if not all(math.isfinite(row[k]) for k in ("val_loss", "test_loss") if row.get(k) is not None):
            self.bar.line(f"epoch {epoch}: evaluation loss is NaN/Inf; stopping (diverged)")
            return None
        self.bar.line(_epoch_line(row, run.config))
        return row

    def evaluate(self, epoch: int, trained: Trained) -> dict:
        """The epoch's metrics row; its columns keep this order in metrics.jsonl and metrics.csv."""
        t0 = time.perf_counter()
        row = {"epoch": epoch, "train_loss": trained.loss, "train_accuracy": trained.accuracy}
        for split, (x, y) in self.eval_sets.items():
            loss, acc = evaluate(self.run.model, x, y, self.run.loss_fn, classification=self.classification)
            row[f"{split}_loss"], row[f"{split}_accuracy"] = loss, acc
        row.update(lr=trained.lr, train_seconds=trained.seconds,
                   seconds=trained.seconds + time.perf_counter() - t0)
        return row

    def save(self, metrics: list[dict], epoch: int) -> None:
        """Write what the epoch left: step log, metrics, checkpoints (best.pt when it is the best so far)."""
        run = self.run
        run._flush()
        records.write_metrics(run.run_dir, metrics)
        checkpoints = [run.run_dir / "checkpoints" / "latest.pt"]
        if _is_best(metrics, self.selection_split, self.classification):
            checkpoints.insert(0, run.run_dir / "checkpoints" / "best.pt")
        for path in checkpoints:
            save_checkpoint(path, epoch=epoch, step=run.step, model=run.model, optimizer=run.optimizer,
                            schedule=run.schedule, metrics=metrics)

    def abort(self, err: BaseException) -> None:
        """After an exception: keep a run that can be resumed, remove one that has nothing to resume from."""
        self.bar.close()
        run_dir = self.run.run_dir
        if isinstance(err, KeyboardInterrupt):
            print(f"feedalign: interrupted; continue with `feedalign train --resume {run_dir}`", file=sys.stderr)
        elif isinstance(err, OSError) and (run_dir / "checkpoints" / "latest.pt").exists():  # a full disk, say
            print(f"feedalign: the run so far is kept; once the problem below is fixed, continue with "
                  f"`feedalign train --resume {run_dir}`", file=sys.stderr)
        elif not (run_dir / "checkpoints" / "latest.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # leave no half-written run

    def finish(self, metrics: list[dict], diverged_at: int | None) -> RunResult:
        """Write summary.json and the learning curves; tell the callbacks."""
        run, config = self.run, self.run.config
        summary = _summarize(run, metrics, self.selection_split, diverged_at)
        write_json(run.run_dir / "summary.json", summary)
        records.plot_curves(run.run_dir, metrics,
                            f"{config.rule} on {config.dataset}, {config.architecture}, seed {config.seed}")
        _call(self.callbacks, "on_train_end", summary)
        return RunResult(run.run_dir, summary, metrics, run.model, config)


def _restore(run: Run, state: dict) -> None:
    """Model, optimizer, schedule, step count and every random state as checkpoint ``state`` saved them."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    set_rng_states(state["rng"])
    run.step = state["step"]


class Trained(NamedTuple):
    """What one pass over the training set measured (accuracy is None for regression)."""

    loss: float | None
    accuracy: float | None
    lr: float
    seconds: float


_UNTRAINED = Trained(loss=None, accuracy=None, lr=0.0, seconds=0.0)  # epoch 0: the model before any step


def _call(callbacks, hook: str, *args) -> None:
    """Callbacks are duck-typed: any object with some of :class:`Callback`'s methods."""
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is not None:
            method(*args)


def _train_epoch(run: Run, epoch: int, x, y, classification: bool, callbacks, bar) -> Trained | None:
    """One pass over the training set; what it measured, or None if the loss went NaN/Inf."""
    config, model, optimizer = run.config, run.model, run.optimizer
    lr = optimizer.param_groups[0]["lr"]
    total, correct, seen = 0.0, 0, 0
    n_batches = math.ceil(len(x) / config.batch_size)
    bar.start_epoch(epoch, n_batches)
    step = Step(model, optimizer, run.loss_fn, generator=epoch_generator(config, epoch, stream=1),
                clip=config.clip_grad_norm)
    # Bound once per epoch, not looked up per step: on small networks a step is well under a millisecond.
    on_step = [m for m in (getattr(cb, "on_step", None) for cb in callbacks) if m is not None]
    bar_update = bar.update if bar.mode == "bar" else None
    augment = _augmentation(run, epoch)
    t0 = time.perf_counter()
    for xb, yb in batches(x, y, config.batch_size, shuffle=True, generator=epoch_generator(config, epoch)):
        if augment is not None:
            xb = augment(xb)
        out, loss = step.forward(xb, yb)
        value = float(loss.detach())
        if not math.isfinite(value):
            bar.line(f"epoch {epoch} step {run.step + 1}: loss is {value}; stopping (diverged), "
                     "the last good checkpoint stays")
            return None
        step.update(loss, (xb, yb), run.step + 1)
        run.step += 1
        n = len(xb)
        total += value * n
        seen += n
        if classification:
            correct += int((out.detach().argmax(1) == yb).sum())
        for method in on_step:
            method(run.step, model, (xb, yb))
        if bar_update is not None:
            bar_update()
    return Trained(loss=total / seen, accuracy=correct / seen if classification else None, lr=lr,
                    seconds=time.perf_counter() - t0)


def _augmentation(run: Run, epoch: int):
    """``config.augment`` as a function of a training batch (None: no augmentation); its randomness is stream 2 of
    the epoch's seed, so a resumed epoch sees the same crops and flips."""
    if run.config.augment == "none":
        return None
    generator = epoch_generator(run.config, epoch, stream=2)
    pad_value = getattr(run.data, "pad_value", None)
    return lambda xb: random_crop_flip(xb, padding=4, generator=generator, pad_value=pad_value)


def _score(row: dict, split: str, classification: bool) -> float:
    """Higher is better: accuracy, or minus the loss for regression."""
    return row[f"{split}_accuracy"] if classification else -row[f"{split}_loss"]


def _is_best(metrics: list[dict], split: str, classification: bool) -> bool:
    scores = [_score(r, split, classification) for r in metrics[1:]]
    return scores.index(max(scores)) == len(scores) - 1


def _summarize(run: Run, metrics: list[dict], split: str, diverged_at: int | None) -> dict:
    """The run's summary.json. ``*_error`` is 1 - accuracy, or the loss (MSE) for regression."""
    config, data = run.config, run.data
    classification = data.task == "classification"
    trained = metrics[1:]

    def error(row):
        return 1.0 - row["test_accuracy"] if classification else row["test_loss"]

    summary = {
        "run_dir": str(run.run_dir), "rule": config.rule, "dataset": config.dataset, "architecture": config.architecture,
        "seed": config.seed, "task": data.task, "loss": run.loss_name, "error_is": "1 - accuracy" if classification else "mse",
        "selection_split": split, "epochs": config.epochs, "epochs_completed": len(trained), "steps": run.step,
        "best_epoch": None, "best_val_accuracy": None, "best_val_loss": None,
        "test_error_at_best": None, "final_test_error": None, "final_test_loss": None,
        "seconds_per_epoch": (sum(r["train_seconds"] for r in trained) / len(trained)) if trained else None,
        "outcome": None, "outcome_epoch": None,
    }
    if trained:
        scores = [_score(r, split, classification) for r in trained]
        best = trained[scores.index(max(scores))]
        summary.update(best_epoch=best["epoch"], best_val_accuracy=best[f"{split}_accuracy"],
                       best_val_loss=best[f"{split}_loss"], test_error_at_best=error(best),
                       final_test_error=error(trained[-1]), final_test_loss=trained[-1]["test_loss"])
    if diverged_at is not None or not trained:
        outcome, at = label_outcome([], diverged_at=diverged_at or 1)
    else:
        key = f"{split}_accuracy" if classification else f"{split}_loss"
        outcome, at = label_outcome([r[key] for r in trained], task=data.task, num_classes=data.num_classes,
                                    initial=metrics[0][f"{split}_loss"], refuse_margin=config.refuse_margin,
                                    collapse_drop=config.collapse_drop)
    summary.update(outcome=outcome, outcome_epoch=at)
    return summary


def _epoch_line(row: dict, config: Config) -> str:
    def f(v, fmt=".4f"):
        return "-" if v is None else format(v, fmt)
    acc = row.get("train_accuracy") is not None
    parts = [f"{config.rule} seed {config.seed} epoch {row['epoch']}/{config.epochs}", f"train loss {f(row['train_loss'])}"]
    if acc:
        parts += [f"acc {f(row['train_accuracy'])}", f"val acc {f(row['val_accuracy'])}",
                  f"test loss {f(row['test_loss'])} acc {f(row['test_accuracy'])}"]
    else:
        parts += [f"val loss {f(row['val_loss'])}", f"test loss {f(row['test_loss'])}"]
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


class _Progress:
    """tqdm bar on a terminal, one plain line per epoch otherwise (both on stderr), or silence."""

    def __init__(self, mode: str, config: Config):
        if mode not in ("auto", "bar", "lines", "none"):
            raise ConfigError(f"progress must be auto, bar, lines or none; got {mode!r}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.config, self._bar = mode, config, None

    def start_epoch(self, epoch: int, total: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.close()
            self._bar = tqdm(total=total, desc=f"{self.config.rule} epoch {epoch}/{self.config.epochs}",
                             leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def line(self, text: str) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm
            tqdm.write(text, file=sys.stderr)
        elif self.mode == "lines":
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
