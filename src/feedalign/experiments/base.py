"""What every experiment shares: the registry, claims, result folders, resuming.

An experiment is a subclass of :class:`Experiment` registered by name with
:func:`register` (one module per experiment, like the learning rules). It says
which paper and figure it reproduces, its config for the quick and full sizes,
how to run one seed, and how to turn the seeds' metrics into :class:`Claim`s and
figures. :func:`run_experiment` does the rest: seeds, timing, ``report.md``,
``results.json`` and skipping a result that is current for the code and config.
"""
from __future__ import annotations

import abc
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..files import atomic_write

_REGISTRY: dict[str, type["Experiment"]] = {}


def register(cls: type["Experiment"]) -> type["Experiment"]:
    """Class decorator: make an experiment available to ``feedalign reproduce NAME``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"experiment name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def experiments() -> list[str]:
    """Registered experiment names, in the order ``all`` runs them."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def get_experiment(name: str) -> "Experiment":
    if name not in _REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(experiments())}, all")
    return _REGISTRY[name]()


@dataclass
class Claim:
    """One claim of a paper: its number (or qualitative statement) beside ours over seeds."""

    key: str
    text: str
    paper: str                      # the paper's number or statement, as printed there
    values: list[float]             # ours, one per seed
    unit: str = ""
    reproduced: bool | None = None  # None: descriptive, nothing to check
    criterion: str = ""             # how `reproduced` was decided
    paper_value: float | None = None
    evidence: str = ""              # when set, what "ours" shows (a finding in words rather than a number)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.values)) if len(self.values) > 1 else 0.0

    def ours(self) -> str:
        return self.evidence or format_mean_std(self.values, self.unit)

    def verdict(self) -> str:
        """The stored qualitative outcome in the page's vocabulary (numbers are judged by verdicts.judged)."""
        return {True: "reproduced", False: "contradicted", None: "-"}[self.reproduced]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=self.mean, std=self.std, ours=self.ours())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Claim":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


def format_number(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.2e}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def format_mean_std(values: list[float], unit: str = "") -> str:
    if not values:
        return "n/a"
    u = f" {unit}" if unit and unit != "%" else unit
    if len(values) == 1:
        return f"{format_number(values[0])}{u} (1 seed)"
    return f"{format_number(float(np.mean(values)))} ± {format_number(float(np.std(values)))}{u} ({len(values)} seeds)"


class Experiment(abc.ABC):
    """One reproduction. Subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""           # citation and figure/table
    order: ClassVar[int] = 100          # position in `all`
    full_runtime: ClassVar[str] = ""    # measured full-size run time on 2 shared CPU cores
    default_seeds: ClassVar[dict] = {"quick": 2, "full": 3}
    needs: ClassVar[tuple[str, ...]] = ()  # experiments whose results this one reads
    threads: ClassVar[int] = 1  # torch CPU threads: small nets on a shared 2-core machine run fastest on one

    @abc.abstractmethod
    def config(self, quick: bool) -> dict:
        """Every setting of the run (json-serialisable); part of the result's key."""

    @abc.abstractmethod
    def summarize(self, config: dict, runs: list[dict], out: Path) -> tuple[list[Claim], list[str]]:
        """Claims over the seeds' metrics, and the figures written into ``out`` (file names)."""

    def deviations(self, config: dict) -> list[str]:
        """Where this size departs from the paper's setting, and why."""
        return []

    @abc.abstractmethod
    def execute(self, config: dict, folder: Path, *, key: str, workers: int, log) -> list[dict]:
        """Run every seed into ``folder``; return one metrics dict per seed (json-serialisable).
        ``key`` is the result key, ``workers`` how many processes may train at once."""

    def run_seconds(self, runs: list[dict]) -> float | None:
        """Seconds the runs took in all, over every call that worked on them (None: this call's wall time says it)."""
        return None

    # How the claims are judged (feedalign.experiments.verdicts): recomputed from the stored per-run values
    # each time a report or the page is written, against the registry of paper numbers (papers.py).
    retired: ClassVar[dict[str, str]] = {}  # claim-key pattern -> why its criterion was withdrawn (never shown)
    searched: ClassVar[tuple[str, ...]] = ()  # settings this experiment chooses by a validation search
    # whether results made before the validation search (config without "selection") chose those settings by
    # test error: such stored rows are marked on the page until they are rerun
    searched_on_test_before: ClassVar[bool] = False

    def comparisons(self, config: dict) -> dict:
        """claim key -> :class:`~feedalign.experiments.verdicts.Compare` for a result made with ``config``.
        Claims without one keep their stored qualitative outcome (reproduced / contradicted / -)."""
        return {}

    def incomparable(self, config: dict) -> str | None:
        """Why a result made with ``config`` cannot be set against the paper's numbers (its verdicts are then
        ``-``), or None."""
        return None

    def selection_note(self, config: dict) -> str | None:
        """For an experiment that searches settings: a mark for results whose search read test error."""
        if self.searched_on_test_before and config.get("selection") != "validation":
            return (f"settings ({', '.join(self.searched)}) of this stored result were chosen on test error "
                    "(before the validation-only search); rerun it")
        return None


class SeededExperiment(Experiment):
    """An experiment that runs its seeds one after another in this process, each by :meth:`run_seed`."""

    def execute(self, config: dict, folder: Path, *, key: str, workers: int, log) -> list[dict]:
        runs = []
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for seed in range(config["seeds"]):
                t = time.perf_counter()
                runs.append(self.run_seed(config, seed, folder))
                log(f"  seed {seed}: {time.perf_counter() - t:.1f} s")
        finally:
            torch.set_num_threads(threads)
        return runs

    @abc.abstractmethod
    def run_seed(self, config: dict, seed: int, out: Path) -> dict:
        """Run one seed; return its metrics (json-serialisable)."""


class DataUnavailable(DatasetError):
    """The dataset an experiment needs cannot be loaded here (not fetched, and no source reachable)."""


def package_hash(root: Path | None = None) -> str:
    """SHA-256 over every source file of the feedalign package (or the tree at ``root``), by path and content.

    Part of every result key: a result counts as current only for the code that made it,
    whichever module that code is in (no hand-kept list of the modules that matter).
    """
    if root is None:
        import feedalign
        root = Path(feedalign.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def result_key(experiment: Experiment, config: dict) -> str:
    """Hash of the resolved config (size and seeds included), the package version and its source."""
    import feedalign
    blob = json.dumps(config, sort_keys=True, default=str) + experiment.name + feedalign.__version__ + package_hash()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_results(folder: Path) -> dict | None:
    path = Path(folder) / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def experiment_config(name: str, quick: bool, seeds: int | None = None) -> dict:
    experiment = get_experiment(name)
    config = dict(experiment.config(quick))
    config["size"] = "quick" if quick else "full"
    config["seeds"] = int(seeds) if seeds else experiment.default_seeds["quick" if quick else "full"]
    return config


def run_experiment(name: str, *, quick: bool = False, out: str | Path = "runs/reproduce", seeds: int | None = None,
                   force: bool = False, workers: int | None = None, witness: bool | None = None, log=print) -> dict:
    """Run ``name`` (or reuse its current result) into ``out/NAME``; return the results dict.

    The result is current when ``results.json`` holds the same key: the hash of the
    config (size and seeds included), the package version and its source. ``force``
    reruns. ``workers``: training processes at once (default: one per CPU core); runs
    left unfinished by an interrupted call continue from their checkpoints. ``witness``
    (default: for the full size) stores what ``reproduce --verify`` replays to carry the
    result over to later code (:mod:`feedalign.experiments.witness`).
    """
    from ..sweeps.local import default_workers
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer; got {workers!r}")
    workers = workers or default_workers(1)
    experiment = get_experiment(name)
    config = experiment_config(name, quick, seeds)
    key = result_key(experiment, config)
    folder = Path(out) / name
    previous = read_results(folder)
    if previous is not None and previous.get("key") == key and not force:
        log(f"{name}: current result in {folder} (key {key}); skipped, --force reruns it")
        previous["skipped"] = True
        return previous
    folder.mkdir(parents=True, exist_ok=True)
    for dep in experiment.needs:  # e.g. hidden-activations reads review-dfa's trained networks
        run_experiment(dep, quick=quick, out=out, seeds=seeds, force=False, workers=workers, log=log)
    log(f"{name}: {experiment.title} ({config['size']}, {config['seeds']} seeds) -> {folder}")
    start = time.perf_counter()
    runs = experiment.execute(config, folder, key=key, workers=workers, log=log)
    claims, figures = experiment.summarize(config, runs, folder)
    seconds = time.perf_counter() - start
    if witness if witness is not None else not quick:
        from .witness import compute_witness
        witness = compute_witness(name, config, chosen=(getattr(experiment, "last_search", None) or {}).get("chosen"))
    else:
        witness = None
    command = f"feedalign reproduce {name}" + (" --quick" if quick else "") + (f" --seeds {seeds}" if seeds else "")
    results = {
        "experiment": name, "title": experiment.title, "paper": experiment.paper, "key": key,
        "package_hash": package_hash(), "config": config, "command": command, "workers": workers,
        "seconds": seconds, "run_seconds": experiment.run_seconds(runs), "full_runtime": experiment.full_runtime,
        "deviations": experiment.deviations(config), "figures": figures,
        "claims": [c.to_dict() for c in claims], "runs": runs, "search": getattr(experiment, "last_search", None),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if witness is not None:
        results["witness"] = witness
    atomic_write(folder / "results.json", json.dumps(results, indent=1, default=_jsonable))
    atomic_write(folder / "report.md", render_report(results))
    from .verdicts import judged
    for row in judged(name, results)[0]:
        log(f"  {row['verdict']:>12}  {row['claim']}: paper {row['paper']} | ours {row['ours']}")
    log(f"{name}: done in {seconds:.1f} s ({run_time(results)}); report {folder / 'report.md'}")
    results["skipped"] = False
    return results


def run_time(results: dict) -> str:
    """How long an experiment took: its training runs' own time (which an interrupted reproduction spreads
    over several calls) and the workers they shared, or the wall time of the call that made it."""
    if results.get("run_seconds"):
        workers = results.get("workers") or 1
        return (f"{results['run_seconds'] / 60:.1f} min of training runs on {workers} worker"
                f"{'s' if workers > 1 else ''}")
    return f"{results['seconds']:.0f} s"


def provenance(results: dict) -> list[str]:
    """Which code made a result and which later code was verified to compute the same (``reproduce --verify``)."""
    verified = results.get("verified") or []
    if not verified:
        return []
    last = verified[-1]
    return [f"Produced by the code with source hash {results.get('produced_by')}; the code with source hash "
            f"{last['package_hash']} was verified to compute the same witness ({last['witness']}) on {last['date']} "
            f"by `feedalign reproduce --verify` ({len(verified)} verification{'s' if len(verified) > 1 else ''} in all)."]


def _jsonable(x: Any):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict_table(rows: list[dict]) -> list[str]:
    """Markdown table of judged rows (:func:`feedalign.experiments.verdicts.judged`)."""
    lines = ["| claim | paper | ours (mean ± std, se, seeds) | verdict | ours - paper | criterion | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {cell(r['claim'])} | {cell(r['paper'])} | {cell(r['ours'])} | {r['verdict']} | "
                     f"{r['delta']} | {cell(r['criterion'])} | {cell(r['note'])} |")
    return lines


def search_section(search: dict | None) -> list[str]:
    """The settings search of a result: the grid and the validation errors that chose each setting."""
    if not search:
        return []
    lines = ["", "## Settings chosen on validation", "",
             f"{search['what']}. Only validation errors are read; the test set is read once, by the reported runs.",
             "", "| learner | candidate | validation error (per search seed; %, or MSE for regression) | mean | chosen |",
             "|---|---|---|---|---|"]
    for label, entry in search["learners"].items():
        for cand in entry["candidates"]:
            errs = ", ".join(format_number(e) for e in cand["val_errors"])
            chosen = "yes" if cand["fields"] == entry["chosen"] else ""
            lines.append(f"| {cell(label)} | `{cell(json.dumps(cand['fields'], sort_keys=True))}` | {errs} | "
                         f"{format_number(cand['mean'])} | {chosen} |")
    edge = [label for label, entry in search["learners"].items() if entry.get("at_edge")]
    if edge:
        lines += ["", f"Chosen at the edge of the grid (a wider grid might choose otherwise): {', '.join(edge)}."]
    return lines


def render_report(results: dict) -> str:
    from .verdicts import judged
    rows, retired = judged(results["experiment"], results)
    lines = [f"# {results['title']}", "", f"Reproduces: {results['paper']}", "",
             f"Command: `{results['command']}` ({results['config']['size']} size, {results['config']['seeds']} seeds); "
             f"ran in {run_time(results)} on {results['machine']}, finished {results['finished']}."]
    if results.get("full_runtime") and results["config"]["size"] == "quick":
        lines.append(f"Full size (estimate): {results['full_runtime']} on 2 CPU cores shared with other jobs.")
    lines += ["", "Verdicts are recomputed from the per-run values below and the registry of paper numbers "
              "(`feedalign/experiments/paper_numbers.toml`) whenever this report is written.", ""]
    lines += verdict_table(rows)
    if retired:
        lines += ["", "Rows withdrawn (their criterion could not fail at the numbers involved):", ""]
        lines += [f"- {r['claim']}: {r['reason']}" for r in retired]
    lines += search_section(results.get("search"))
    if results.get("deviations"):
        lines += ["", "## Where this run departs from the paper", ""] + [f"- {d}" for d in results["deviations"]]
    if results.get("figures"):
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in results["figures"]]
    lines += ["", "## Config", "", "```json", json.dumps(results["config"], indent=1, sort_keys=True), "```",
              "", f"Result key {results['key']} (config, package version and source hash {results.get('package_hash')}).",
              *provenance(results), ""]
    return "\n".join(lines)
