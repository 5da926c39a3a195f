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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .._version import __version__
from ..errors import DatasetError

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
        root = Path(__file__).resolve().parent.parent  # the feedalign package
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def result_key(experiment: Experiment, config: dict) -> str:
    """Hash of the resolved config (size and seeds included), the package version and its source."""
    blob = json.dumps(config, sort_keys=True, default=str) + experiment.name + __version__ + package_hash()
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


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
