"""Every model of the command line under every rule that converts it, trained with its recipe for a short budget:
the table of ``docs/models.md`` (``feedalign models --table``).

Each run is what ``feedalign train --model NAME --rule RULE --dataset DATA`` resolves to (the model's recipe and
the rule's adjustment, :mod:`feedalign.training.recipes`), with a budget a 2-core CPU allows in place of the
recipe's data size and epochs (:data:`BUDGETS`); a recipe's warm-up is cut to a tenth of the budget's steps
when it is longer, so that the rate reaches the recipe's within the run. Models fed images train on an MNIST
subset, the LSTM on MNIST-1D, which is generated locally; the CIFAR ResNets on a CIFAR-10 subset when the user
has CIFAR-10 on disk (``feedalign data fetch cifar10``, or ``FEEDALIGN_DATA``), and are listed as not run
otherwise: a table never starts a download.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch

from ..data import DatasetError, load
from ..errors import ConfigError
from ..files import atomic_write, write_json
from ..rules import rules
from .build import build_model
from .engine import train
from .recipes import resolve


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one model trains on in the table: dataset, the first ``train_size`` training examples (None: all),
    ``validation_size`` held out, the first ``test_size`` test examples (None: all), ``epochs``."""

    dataset: str
    train_size: int | None
    validation_size: int
    test_size: int | None
    epochs: int

    def describe(self) -> str:
        train = "all" if self.train_size is None else f"{self.train_size:,}"
        test = "all" if self.test_size is None else f"{self.test_size:,}"
        return (f"{self.dataset}: {train} training, {self.validation_size:,} validation, {test} test examples, "
                f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}")


# One row group per model the CLI offers (an MLP by its default size string), sized so that the whole table
# trains in about a quarter of an hour of one CPU core.
BUDGETS: dict[str, Budget] = {
    "784-256-256-10": Budget("mnist", 10000, 1000, 2000, 2),
    "lenet5": Budget("mnist", 5000, 1000, 2000, 1),
    "nokland-conv": Budget("mnist", 1000, 500, 1000, 1),
    "resnet20": Budget("cifar10", 5000, 1000, 1000, 1),
    "resnet32": Budget("cifar10", 5000, 1000, 1000, 1),
    "resnet56": Budget("cifar10", 5000, 1000, 1000, 1),
    "vit-tiny": Budget("mnist", 10000, 1000, 2000, 2),
    "lstm": Budget("mnist1d", None, 1000, None, 12),
}

START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"
COMMAND = "feedalign models --table"


def budget_config(model: str, rule: str, budget: Budget, out_dir: Path):
    """The Config of one run of the table and where each setting came from."""
    config, sources = resolve([("table", {"architecture": model, "rule": rule, "dataset": budget.dataset})])
    steps = budget.epochs * math.ceil((budget.train_size or _train_rows(budget)) / config.batch_size)
    changes = dict(train_size=budget.train_size, validation_size=budget.validation_size, test_size=budget.test_size,
                   epochs=budget.epochs, out_dir=str(out_dir), name=f"{model}-{rule}", alignment_every=0, threads=1)
    if config.warmup_steps > steps // 10:
        changes["warmup_steps"] = steps // 10
    return config.replace(**changes), sources


def _train_rows(budget: Budget) -> int:
    """Training examples of ``budget``'s dataset once its validation set is held out."""
    return len(load(budget.dataset, validation_size=budget.validation_size).train_y)


def _missing(budget: Budget) -> str | None:
    """Why ``budget``'s dataset cannot be read without a download, or None when it can."""
    try:
        load(budget.dataset, validation_size=budget.validation_size, download=False)
    except DatasetError as err:
        return str(err).strip().splitlines()[0]
    return None


def run_table(out_dir: str | Path, *, models: list[str] | None = None, rule_names: list[str] | None = None,
              log=print) -> list[dict]:
    """Train every (model, rule) pair; one row each (rules that refuse a model get a row saying why)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models or list(BUDGETS):
        budget = BUDGETS[model]
        missing = _missing(budget)
        if missing:
            rows.append({"model": model, "rule": None, "converts": None, "why": missing})
            continue
        for rule in rule_names or rules():
            config, sources = budget_config(model, rule, budget, out_dir)
            try:
                build_model(config, torch.device("cpu"))
            except ConfigError as err:
                rows.append({"model": model, "rule": rule, "converts": False, "why": str(err).split("\n")[0]})
                continue
            run_dir = out_dir / config.name
            if (run_dir / "summary.json").exists():  # a table interrupted earlier: its finished runs stand
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                t0 = time.perf_counter()
                summary = train(config, progress="none").summary
                log(f"{model} {rule}: {summary['outcome']}, test error {summary['test_error_at_best']}, "
                    f"{time.perf_counter() - t0:.0f} s")
            rows.append({"model": model, "rule": rule, "converts": True, "dataset": budget.dataset,
                         "budget": budget.describe(), "optimizer": config.optimizer, "lr": config.lr,
                         "lr_from": sources["lr"], "warmup_steps": config.warmup_steps,
                         "clip_grad_norm": config.clip_grad_norm, "batch_size": config.batch_size,
                         "test_error": summary["test_error_at_best"], "outcome": summary["outcome"],
                         "seconds_per_epoch": summary["seconds_per_epoch"]})
    write_json(out_dir / "models-table.json", rows)
    return rows


def markdown(rows: list[dict], command: str = COMMAND) -> str:
    """The table (and the rules each model refuses) as markdown, between the markers :func:`publish` replaces."""
    lines = [START, "", f"Made by `{command}` (each run: `feedalign train --model MODEL --rule RULE --dataset DATA` "
             "with the budget below in place of the recipe's size and epochs; one seed, one thread; test error at "
             "the epoch of best validation accuracy).", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        trained = [r for r in group if r["converts"]]
        if any(r["converts"] is None for r in group):
            lines += [f"**{model}**: not run: {group[0]['why']}", ""]
            continue
        if not trained:
            continue
        first = trained[0]
        clip = "none" if first["clip_grad_norm"] is None else f"{first['clip_grad_norm']:g}"
        lines += [f"**{model}** ({first['budget']}; {first['optimizer']}, batch {first['batch_size']}, "
                  f"warm-up {first['warmup_steps']} steps, clipping {clip})", "",
                  "| rule | lr | test error % | outcome | s/epoch |", "|---|---|---|---|---|"]
        for r in trained:
            error = "-" if r["test_error"] is None else f"{100 * r['test_error']:.1f}"
            speed = "-" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"
            adjusted = " (rule's adjustment)" if r["lr_from"].startswith("rule ") else ""
            lines.append(f"| {r['rule']} | {r['lr']:g}{adjusted} | {error} | {r['outcome']} | {speed} |")
        refused = [r for r in group if not r["converts"]]
        if refused:
            lines += ["", "Not converted: " + "; ".join(f"`{r['rule']}` ({_short(r['why'])})" for r in refused) + "."]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _short(why: str) -> str:
    """A rule's refusal without the repeated preamble."""
    marker = ": "
    text = why.split(marker, 1)[1] if why.startswith("rule ") and marker in why else why
    return text.rstrip(".")


def publish(rows: list[dict], doc: str | Path, command: str = COMMAND) -> None:
    """Put the table into ``doc`` between :data:`START` and :data:`END` (appended under a heading if absent)."""
    doc = Path(doc)
    text = doc.read_text() if doc.exists() else ""
    table = markdown(rows, command)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Every model under every rule\n\n" + table + "\n"
    atomic_write(doc, text)
