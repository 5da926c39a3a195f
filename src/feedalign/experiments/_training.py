"""Experiments whose every run is an ordinary training run of the one engine (:func:`feedalign.train`).

A :class:`TrainingExperiment` lists its learners (label -> :class:`~feedalign.training.Config`
fields); each (learner, seed) becomes one run directory under
``OUT/NAME/runs-KEY/``, trained by the sweep's local pool of worker processes
(``workers`` at once, one thread each, so a seed gives the same numbers however many
run in parallel). A reproduction that is interrupted continues each unfinished run
from its last checkpoint when it is started again (KEY is the result key: the same
code and config); finished runs are kept. Subclasses turn the runs' histories into
claims with :meth:`summarize`, usually plotting with :meth:`curves`.
"""
from __future__ import annotations

import abc
import json
import math
import shutil
import time
from pathlib import Path

from ..data import DatasetError, load
from ..errors import first_line
from ..files import read_jsonl
from ..sweeps.local import finished, run_local, training_job
from ..training import Config
from .base import DataUnavailable, Experiment
from .plotting import mean_std_band, pyplot, save_figure


class RunsFailed(RuntimeError):
    """Some runs of an experiment crashed on every attempt; their logs say why."""


def _percent(accuracy):
    return float("nan") if accuracy is None else 100.0 * (1.0 - accuracy)


def run_history(run_dir: Path) -> dict:
    """Per-epoch curves (errors in %) and the final numbers of one finished run directory.

    ``test_error`` is the test error at the epoch of best validation accuracy (model
    selection on validation data only); ``final_test_error`` the one after the last epoch.
    """
    rows = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    nan = float("nan")
    history = {
        "epochs": [r["epoch"] for r in rows],
        "train_loss": [nan if r.get("train_loss") is None else r["train_loss"] for r in rows],
        "train_error": [_percent(r.get("train_accuracy")) for r in rows],
        "val_loss": [nan if r.get("val_loss") is None else r["val_loss"] for r in rows],
        "val_error": [_percent(r.get("val_accuracy")) for r in rows],
        "test_error_curve": [_percent(r.get("test_accuracy")) for r in rows],
    }
    history["seconds"] = sum(r.get("seconds") or 0.0 for r in rows)  # training and evaluation, every epoch
    history.update(_alignment_curve(run_dir / "alignment.jsonl"))
    at_best = summary.get("test_error_at_best")
    history.update(test_error=nan if at_best is None else 100.0 * at_best, best_epoch=summary.get("best_epoch"),
                   final_test_error=nan if summary.get("final_test_error") is None
                   else 100.0 * summary["final_test_error"],
                   outcome=summary.get("outcome"), seconds_per_epoch=summary.get("seconds_per_epoch"),
                   run_dir=str(run_dir))
    return history


def _alignment_curve(path: Path) -> dict:
    """``update_angle`` (degrees) at each ``alignment_step``: the angle between the rule's weight update and the
    true gradient, mean over the hidden layers (the output layer gets its true gradient under every rule)."""
    rows = read_jsonl(path)
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append(row)
    steps, angles = [], []
    for step, layers in sorted(by_step.items()):
        output = max(r["layer"] for r in layers)
        values = [r["update_angle"] for r in layers if r["layer"] != output and r.get("update_angle") is not None]
        steps.append(step)
        angles.append(sum(values) / len(values) if values else float("nan"))
    return {"alignment_steps": steps, "update_angle": angles}


class TrainingExperiment(Experiment):
    """Learners x seeds, each an ordinary run directory of the training engine."""

    @abc.abstractmethod
    def learners(self, config: dict) -> dict[str, dict]:
        """label -> Config fields of that learner (everything but data, seed and where it is written)."""

    def data_fields(self, config: dict) -> dict:
        """The Config fields of ``config["data"]``: dataset and the sizes of the three splits."""
        d = config["data"]
        return {"dataset": d["name"], "train_size": d.get("n_train"), "validation_size": d.get("n_val"),
                "test_size": d.get("n_test")}

    def seeds_for(self, label: str, config: dict) -> int:
        """How many of the experiment's seeds ``label`` runs (all by default; fewer for costly extras)."""
        return config["seeds"]

    def check_data(self, config: dict) -> None:
        """Fetch (or find) the dataset once, with this experiment's validation size, before any worker starts
        (so that workers never race to download it); DataUnavailable (one line) if it cannot be had."""
        _check_data(config["data"]["name"], config["data"].get("n_val"))

    def run_configs(self, config: dict, folder: Path, chosen: dict | None = None) -> list[tuple[str, int, Config]]:
        """Every run of this experiment: ``(label, seed, Config)``, its run directory named by the Config.
        ``chosen``: label -> the fields a settings search chose for it (:meth:`run_search`)."""
        runs_dir = Path(folder)
        out = []
        for seed in range(config["seeds"]):
            for i, (label, fields) in enumerate(self.learners(config).items()):
                if seed >= self.seeds_for(label, config):
                    continue
                fields = {**fields, **(chosen or {}).get(label, {})}
                values = {**self.data_fields(config), "alignment_every": 0, "device": config.get("device", "cpu"),
                          **fields, "seed": seed, "threads": 1, "out_dir": str(runs_dir),
                          "name": f"{i:02d}-{_slug(label)}-seed{seed}"}
                out.append((label, seed, Config.from_dict(values, source=f"{self.name} learner {label!r}")))
        return out

    def search_configs(self, config: dict, folder: Path, grid: dict | None = None) -> list[tuple[str, int, int, Config]]:
        """The runs of the settings search ``config["search"]``: ``(label, candidate index, seed, Config)``.

        ``config["search"]``: ``learners`` (label -> list of candidate field dicts), ``seeds`` (default 1),
        ``epochs`` (default: the learner's), ``n_train`` and ``n_val`` (the split the search trains and validates
        on; ``n_val`` must be positive), ``pick`` (``final``: validation error after the last epoch, for
        experiments that report the final network; ``best``: the lowest over epochs), ``extend`` (default 0: up to
        this many candidates added per learner past a winning edge, see :func:`extension`). A search run evaluates
        a single test example (the engine evaluates every split each epoch); nothing of it is read. ``grid``: the
        candidates as extended so far (default: ``search["learners"]``).
        """
        search = config["search"]
        if not search.get("n_val"):
            raise ValueError(f"{self.name}: a settings search needs a validation split (search.n_val > 0)")
        learners = self.learners(config)
        out = []
        for seed in range(search.get("seeds", 1)):
            for i, (label, candidates) in enumerate((grid or search["learners"]).items()):
                for j, candidate in enumerate(candidates):
                    values = {**self.data_fields(config), "alignment_every": 0, "device": config.get("device", "cpu"),
                              **learners[label], **candidate, "seed": seed, "threads": 1, "out_dir": str(folder),
                              "train_size": search.get("n_train", config["data"].get("n_train")),
                              "validation_size": search["n_val"], "test_size": 1,
                              "name": f"{i:02d}-{_slug(label)}-c{j}-seed{seed}"}
                    if search.get("epochs"):
                        values["epochs"] = search["epochs"]
                    out.append((label, j, seed, Config.from_dict(values, source=f"{self.name} search {label!r}")))
        return out

    def run_search(self, config: dict, folder: Path, *, workers: int, log) -> dict | None:
        """Train the search's runs (resumable, as every run) and choose each searched learner's setting by its
        validation error alone; returns the record that results.json keeps (grid, errors, choice)."""
        if not config.get("search"):
            return None
        search = config["search"]
        folder = Path(folder) / "search"
        if search.get("n_val") != config["data"].get("n_val"):
            _check_data(config["data"]["name"], search["n_val"])
        grid = {label: list(candidates) for label, candidates in search["learners"].items()}
        for extended in range(search.get("extend", 0) + 1):
            errors = self._search_round(config, search, folder, grid, workers=workers, log=log)
            # a setting that wins at the grid's edge may be beaten past it: try the next one out, as often as allowed
            added = {label: extension(grid[label], errors[label]) for label in grid}
            added = {label: candidate for label, candidate in added.items() if candidate is not None}
            if not added or extended == search.get("extend", 0):
                break
            for label, candidate in added.items():
                grid[label].append(candidate)
                log(f"  settings search: {label} won at the edge of its grid; adding {json.dumps(candidate)}")
        return choose({**search, "learners": grid}, errors)

    def _search_round(self, config, search, folder, grid, *, workers, log) -> dict[str, dict[int, list[float]]]:
        """Train the search runs of ``grid`` not yet finished; label -> candidate index -> validation errors."""
        planned = self.search_configs(config, folder, grid)
        jobs = [training_job(c, folder / c.name, label=label, seed=seed, candidate=j) for label, j, seed, c in planned]
        todo = [j for j in jobs if not finished(j)]
        failed = []

        def on_done(job, summary, status, seconds, attempts, error):
            if status != "done":
                failed.append(f"{job['label']} candidate {job['candidate']}: {status} ({error})")

        if todo:
            log(f"  settings search: {len(todo)} of {len(jobs)} runs on {min(workers, len(todo))} worker process(es)")
            run_local(todo, workers=workers, threads=1, retries=1, sweep_dir=folder, on_done=on_done, log=log)
        if failed:
            raise RunsFailed(f"{self.name}: {len(failed)} search run(s) failed: {'; '.join(failed)}")
        errors: dict[str, dict[int, list[float]]] = {}
        for job in jobs:
            curve = validation_curve(Path(job["run_dir"]))
            error = curve[-1] if search.get("pick", "final") == "final" else min(curve)
            errors.setdefault(job["label"], {}).setdefault(job["candidate"], []).append(error)
        return errors

    def execute(self, config: dict, folder: Path, *, key: str, workers: int, log) -> list[dict]:
        runs_dir = Path(folder) / f"runs-{key}"
        for old in Path(folder).glob("runs-*"):  # runs of other code or settings: never reused
            if old != runs_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        self.check_data(config)
        self.last_search = self.run_search(config, runs_dir, workers=workers, log=log)
        chosen = (self.last_search or {}).get("chosen")
        # the longest runs (most epochs) first, so that no long run starts last and leaves one worker busy alone
        planned = sorted(self.run_configs(config, runs_dir, chosen), key=lambda run: -run[2].epochs)
        jobs, failed = [], []
        for label, seed, run_config in planned:
            run_dir = runs_dir / run_config.name
            jobs.append(training_job(run_config, run_dir, label=label, seed=seed))
        todo = [j for j in jobs if not finished(j)]
        started = sum((Path(j["run_dir"]) / "config.toml").is_file() for j in todo)
        if len(todo) < len(jobs) or started:
            log(f"  {len(jobs) - len(todo)} of {len(jobs)} runs already finished in {runs_dir}; "
                f"{started} continue from checkpoints")
        t0 = time.perf_counter()

        def on_done(job, summary, status, seconds, attempts, error):
            if status != "done":
                failed.append(f"{job['label']} seed {job['seed']}: {status} ({error})")
                log(f"  {job['label']} seed {job['seed']}: {status}: {error}")
                return
            log(f"  {job['label']} seed {job['seed']}: test error {100 * summary['test_error_at_best']:.2f}% "
                f"(best epoch {summary['best_epoch']}), final {100 * summary['final_test_error']:.2f}%, "
                f"{summary['epochs_completed']} epochs, {seconds:.0f} s [{time.perf_counter() - t0:.0f} s]")

        if todo:
            log(f"  {len(todo)} runs on {min(workers, len(todo))} worker process(es); logs in {runs_dir / 'logs'}")
            run_local(todo, workers=workers, threads=1, retries=1, sweep_dir=runs_dir, on_done=on_done, log=log)
        if failed:
            raise RunsFailed(f"{self.name}: {len(failed)} run(s) failed: {'; '.join(failed)}")
        self.last_carried = _carried(runs_dir)
        results = [dict() for _ in range(config["seeds"])]
        for job in jobs:
            results[job["seed"]][job["label"]] = run_history(Path(job["run_dir"]))
        return results

    def run_seconds(self, runs):
        return sum(history["seconds"] for seed in runs for history in seed.values())

    def curves(self, config, runs, out, labels=None, key="val_error", title="", name=None, ylabel=None,
               log=False, panels=None):
        """One panel per group in ``panels`` (lists of labels): curves against epochs, mean ± std over seeds."""
        plt = pyplot()
        labels = labels or list(runs[0])
        panels = panels or [labels]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
        for ax, group in zip(axes[0], panels):
            for label in group:
                epochs = runs[0][label]["epochs"]
                mean_std_band(ax, epochs, [r[label][key] for r in runs if label in r], label)
            ax.set(xlabel="epochs", ylabel=ylabel or key.replace("_", " ") + (" (%)" if "error" in key else ""))
            if log:
                ax.set_yscale("log")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        return save_figure(fig, out, name or f"{self.name}-{key.replace('_', '-')}.png")

    @staticmethod
    def final(runs, label, key="test_error"):
        """One number per seed that ran ``label``: its ``key`` (the last point of a curve)."""
        values = [r[label][key] for r in runs if label in r]
        return [v[-1] if isinstance(v, list) else v for v in values]

    def data_deviation(self, config) -> str:
        d = config["data"]
        if d.get("n_val") == 0:  # the paper's protocol: every training image trains, the final network is tested
            return (f"Data: {d['name']}, {d.get('n_train') or 'all 60000'} training examples, no validation split, "
                    f"{d.get('n_test') or 10000} test. Test error is that of the network after the last epoch.")
        return (f"Data: {d['name']}, {d.get('n_train') or 'all 50000'} training examples, "
                f"{d.get('n_val') or 10000} validation, {d.get('n_test') or 10000} test "
                "(validation examples are held out of MNIST's 60000 training images, chosen by the seed). "
                "Test error is read at the epoch of best validation accuracy.")


def _carried(runs_dir: Path) -> dict | None:
    """The runs under ``runs_dir`` that scripts/carry_runs.py copied in and the experiment kept (a carried run
    of other settings was trained again, losing its CARRIED file): their names and sources."""
    marks = sorted(runs_dir.glob("**/CARRIED"))
    if not marks:
        return None
    sources = [Path(m.read_text().strip()) for m in marks]
    # the source's run folder by name (runs-KEY names the code and settings that trained it), not a machine's path
    return {"runs": [str(m.parent.relative_to(runs_dir)) for m in marks],
            "from": sorted({(s.parent.parent if s.parent.name == "search" else s.parent).name for s in sources})}


def validation_curve(run_dir: Path) -> list[float]:
    """Validation error after each trained epoch of a run (%, or the loss for regression): all that a settings
    search reads of it."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    curve = [_percent(r["val_accuracy"]) if r.get("val_accuracy") is not None else r.get("val_loss", float("nan"))
             for r in rows if r.get("epoch", 0) > 0]
    if not curve:
        raise RunsFailed(f"{run_dir}: no trained epoch in metrics.jsonl")
    return curve


def _axis(candidates: list[dict], best: int) -> tuple[str, list[float]] | None:
    """The one field that the candidates with the fields of ``candidates[best]`` vary, with its values among
    them, when it is a positive number (another kind of candidate, e.g. a paper's whole schedule beside a grid of
    rates, stands apart); else None."""
    same = [c for c in candidates if c.keys() == candidates[best].keys()]
    varying = [k for k in candidates[best] if len({json.dumps(c[k]) for c in same}) > 1]
    if len(same) < 2 or len(varying) != 1:
        return None
    values = [c[varying[0]] for c in same]
    if not all(isinstance(v, float) and v > 0 for v in values):
        return None
    return varying[0], values


def _mean_errors(errors: dict[int, list[float]], n: int) -> list[float]:
    means = [sum(errors[j]) / len(errors[j]) for j in range(n)]
    return [m if math.isfinite(m) else float("inf") for m in means]


def _at_edge(candidates: list[dict], best: int) -> bool:
    """Whether the chosen candidate lies at an end of its grid: by value when one number varies, by position
    when the candidates vary more (never for a candidate of its own kind)."""
    axis = _axis(candidates, best)
    if axis is not None:
        key, values = axis
        return len(values) > 2 and candidates[best][key] in (min(values), max(values))
    if any(c.keys() != candidates[best].keys() for c in candidates):
        return False
    return len(candidates) > 2 and best in (0, len(candidates) - 1)


def _round_nice(x: float) -> float:
    """``x`` rounded, in log scale, to the nearest of 1, 2, 3, 5 times a power of ten (3.3e-3 -> 3e-3)."""
    power = math.floor(math.log10(x))
    mantissas = (1.0, 2.0, 3.0, 5.0, 10.0)
    best = min(mantissas, key=lambda m: abs(math.log(x / (m * 10.0 ** power))))
    return float(f"{best * 10.0 ** power:.3g}")


def extension(candidates: list[dict], errors: dict[int, list[float]]) -> dict | None:
    """The next candidate past the grid's edge when the best (lowest mean validation error) lies there, else None.

    Only along one positive number (a learning rate, a scale) of at least three values: the new value is the
    edge's value times the ratio of the edge to its neighbour, rounded to 1, 2, 3 or 5 times a power of ten (lr
    3e-4, 1e-3 won: 3e-3). None when the winner is inside, or is a candidate of its own kind.
    """
    means = _mean_errors(errors, len(candidates))
    best = min(range(len(candidates)), key=lambda j: means[j])
    axis = _axis(candidates, best)
    if axis is None or len(axis[1]) <= 2:
        return None
    key, values = axis
    ordered = sorted(values)
    if candidates[best][key] == ordered[-1]:
        edge, neighbour = ordered[-1], ordered[-2]
    elif candidates[best][key] == ordered[0]:
        edge, neighbour = ordered[0], ordered[1]
    else:
        return None
    new = _round_nice(edge * edge / neighbour)
    if new in values:  # rounding fell back onto the grid
        return None
    return {**candidates[best], key: new}


def choose(search: dict, errors: dict[str, dict[int, list[float]]]) -> dict:
    """Each searched learner's candidate with the lowest mean validation error (the first on a tie)."""
    record = {"what": (f"Grid searched per learner, {search.get('seeds', 1)} seed(s), "
                       f"{search.get('epochs') or 'the reported runs’'} epochs, "
                       f"{search.get('n_train') or 'all the remaining'} training and {search['n_val']} validation "
                       f"images; chosen on the {'final' if search.get('pick', 'final') == 'final' else 'lowest'} "
                       "validation error" + (f"; a grid whose winner lay at its edge was extended past it, up to "
                                             f"{search['extend']} candidate(s)" if search.get("extend") else "")),
              "pick": search.get("pick", "final"), "learners": {}, "chosen": {}}
    for label, candidates in search["learners"].items():
        rows = []
        for j, fields in enumerate(candidates):
            values = errors[label][j]
            mean = sum(values) / len(values)
            rows.append({"fields": fields, "val_errors": values, "mean": mean if math.isfinite(mean) else float("inf")})
        best = min(range(len(rows)), key=lambda j: rows[j]["mean"])
        record["learners"][label] = {"candidates": rows, "chosen": rows[best]["fields"],
                                     "at_edge": _at_edge(candidates, best)}
        record["chosen"][label] = rows[best]["fields"]
    return record


def _check_data(name: str, validation_size: int | None = None) -> None:
    try:
        load(name, validation_size=validation_size)
    except DatasetError as err:
        raise DataUnavailable(f"cannot load {name!r}: {first_line(err)} (run `feedalign data fetch {name}`)") from None


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")

