"""Time to accuracy: the training time each rule, with a tuned setting, needs to reach a test accuracy.

Step ratios say what a step costs; a user waits for accuracy. ``feedalign bench --to-accuracy 0.97``
trains each rule on MNIST's 784-800-800-10 tanh network with its setting from :data:`TUNED` (searched
by ``benchmarks/tune_to_accuracy.py``), measures test accuracy every ``eval_every`` steps, and reports the
training time until it first reaches the target. The clock (wall, ``time.perf_counter``) runs only
during training steps: evaluation, data loading and model building are left out. The test set is used
to decide when the target is reached, as time-to-accuracy benchmarks do (DAWNBench); no model is
selected on it.
"""
from __future__ import annotations

import math
import time

import torch

from ..data import batches
from ..errors import ConfigError
from ..training.build import build_model, load_data, make_loss, make_optimizer
from ..training.config import Config
from ..rules import reference_rule
from ..training.step import Step

NETWORK = "784-800-800-10"
# Per rule: the fastest setting to 97% of `python benchmarks/tune_to_accuracy.py --threads 1` (batch 128, tanh,
# MNIST with 10000 training images held out, seed 0; sgd lr 0.03/0.1 momentum 0.9, adam lr 3e-4/1e-3/3e-3; up to
# 10 epochs; 2026-11-29, machine shared with training runs). Seconds to 97%: bp adam 1e-3 25.9 (sgd 0.1 46.7);
# fa adam 1e-3 35.5 (3e-3 never reached it); dfa adam 3e-3 32.7 (1e-3 57.4); ifa adam 3e-3 36.7 (1e-3 39.3);
# no sgd setting brought fa, dfa or ifa to 97% in 10 epochs. Rules not listed train with DEFAULT, labelled untuned.
TUNED = {
    "bp": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9},
    "fa": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9},
    "dfa": {"optimizer": "adam", "lr": 3e-3, "momentum": 0.9},
    "ifa": {"optimizer": "adam", "lr": 3e-3, "momentum": 0.9},
}
DEFAULT = {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9}


def setting_text(fields: dict) -> str:
    momentum = f", momentum {fields['momentum']}" if fields["optimizer"] == "sgd" else ""
    return f"{fields['optimizer']} lr {fields['lr']:g}{momentum}"


def _test_accuracy(model, x, y) -> float:
    with torch.inference_mode():
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(1000), y.split(1000)))
    return correct / len(y)


def time_to_accuracy(target: float, rules, *, network: str = NETWORK, dataset: str = "mnist", batch_size: int = 128,
                     max_epochs: int = 10, eval_every: int = 50, seed: int = 0, settings: dict | None = None,
                     log=print) -> dict:
    """Train each of ``rules`` until its test accuracy reaches ``target`` (or ``max_epochs`` pass).

    ``settings`` (rule -> Config fields) overrides :data:`TUNED`. Returns ``{"rows": [...], "table": str}``;
    a row gives ``seconds`` (training time to the target, None if never reached), ``steps``, ``epochs``
    (fractional), ``best_accuracy`` and ``ratio`` (seconds / BP's, when both reached it).
    """
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise ConfigError(f"--to-accuracy must be a fraction between 0 and 1 (e.g. 0.97); got {target!r}")
    for name, value in (("max_epochs", max_epochs), ("eval_every", eval_every), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    settings = {**TUNED, **(settings or {})}
    configs = {}
    for rule in rules:  # every setting checked before anything trains
        fields = settings.get(rule, DEFAULT)
        configs[rule] = Config(rule=rule, architecture=network, dataset=dataset, activation="tanh", seed=seed,
                               batch_size=batch_size, epochs=max_epochs, alignment_every=0, threads=0,
                               validation_size=10000 if dataset == "mnist" else None, **fields)
    data = load_data(next(iter(configs.values())))
    rows = []
    for rule, config in configs.items():
        model = build_model(config, torch.device("cpu"))
        optimizer, loss_fn = make_optimizer(config, model), make_loss("cross_entropy", data.output_size)
        generator = torch.Generator().manual_seed(seed)
        step = Step(model, optimizer, loss_fn, generator=torch.Generator().manual_seed(seed + 1))
        seconds, steps, best, reached = 0.0, 0, 0.0, None
        for epoch in range(max_epochs):
            for xb, yb in batches(data.train_x, data.train_y, batch_size, generator=generator):
                start = time.perf_counter()
                step(xb, yb, steps + 1)
                seconds += time.perf_counter() - start
                steps += 1
                if steps % eval_every == 0:
                    best = max(best, _test_accuracy(model, data.test_x, data.test_y))
                    if best >= target:
                        reached = seconds
                        break
            if reached is not None:
                break
        epochs = steps * batch_size / len(data.train_x)
        rows.append({"rule": rule, "setting": setting_text(settings.get(rule, DEFAULT)) +
                     ("" if rule in settings else " (untuned)"), "seconds": reached, "steps": steps,
                     "epochs": epochs, "best_accuracy": best})
        log(f"  {rule}: " + (f"{100 * target:g}% after {reached:.1f} s of training ({steps} steps, {epochs:.2f} epochs)"
                             if reached is not None else f"did not reach {100 * target:g}% in {max_epochs} epochs "
                             f"(best {100 * best:.2f}%)"))
    reference = reference_rule()
    bp = next((r["seconds"] for r in rows if r["rule"] == reference), None)
    for row in rows:
        row["ratio"] = row["seconds"] / bp if row["seconds"] is not None and bp else None
    return {"target": target, "network": network, "dataset": dataset, "batch_size": batch_size,
            "threads": torch.get_num_threads(), "rows": rows, "table": table(rows, target, network, batch_size)}


def table(rows, target, network, batch_size) -> str:
    lines = [f"time to {100 * target:g}% test accuracy, {network} tanh, batch {batch_size}, "
             f"{torch.get_num_threads()} thread(s); training time only (evaluation excluded)", "",
             "| rule | setting | seconds | x BP | steps | epochs | best test acc |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        seconds = "not reached" if r["seconds"] is None else f"{r['seconds']:.1f}"
        ratio = "-" if r["ratio"] is None or math.isnan(r["ratio"]) else f"{r['ratio']:.2f}"
        lines.append(f"| {r['rule']} | {r['setting']} | {seconds} | {ratio} | {r['steps']} | {r['epochs']:.2f} | "
                     f"{100 * r['best_accuracy']:.2f}% |")
    return "\n".join(lines)
