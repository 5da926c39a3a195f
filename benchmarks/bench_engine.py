"""The training engine's overhead: one epoch through ``feedalign.train`` against a minimal hand-written loop.

    python benchmarks/bench_engine.py                      # 784-256-256-10, MNIST, batch 64, 1 thread, bp
    python benchmarks/bench_engine.py --rule dfa --architecture 784-100-10 --rounds 5

Both sides train the SAME model (``build_model``/``make_optimizer`` of the config), on the
same in-memory data, batch size and threads. Per round (rounds interleaved in one process,
so a slow spell of a shared machine hits both):

- engine: ``feedalign.train`` for 2 epochs; its epoch time is the time between the two
  ``on_epoch_end`` calls: epoch 1's metrics, step log and checkpoints written, then epoch
  2 trained and evaluated (val and test) with alignment probes at their default interval;
- minimal: one shuffled pass of ``zero_grad; cross_entropy(model(x), y).backward(); step``
  plus one evaluation of the test set, as a user's own script would do.

The ratio is the median over rounds of (engine epoch / minimal epoch in the same round).
Set-up is what a run costs besides its epochs: importing feedalign (a fresh interpreter,
``python -c 'import feedalign.training'`` less ``python -c 'import torch'``), loading the cached
dataset, and inside ``train``
everything before the first epoch (data, model, run directory, the epoch-0 evaluation and
probe) and after the last (summary, plots). CPU-time clock by default (robust on a
shared machine with one thread); ``--clock wall`` for wall time.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from feedalign.training import Config, train
from feedalign.training.build import build_model, load_data, make_optimizer
from feedalign.training.engine import EVAL_BATCH

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class _Stamps:
    """A callback that records when the engine reaches each stage."""

    def __init__(self, clock):
        self.clock, self.begin, self.epochs = clock, None, []

    def on_train_begin(self, run):
        self.begin = self.clock()

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(self.clock())


def engine_round(config: Config, data, clock) -> tuple[float, float]:
    """``(epoch seconds, set-up seconds)`` of one 2-epoch ``train`` run."""
    stamps = _Stamps(clock)
    with tempfile.TemporaryDirectory() as out:
        start = clock()
        train(config.replace(out_dir=out, epochs=2), [stamps], progress="none", data=data)
        end = clock()
    first, second = stamps.epochs
    epoch = second - first
    return epoch, (stamps.begin - start) + (end - second)


def minimal_round(config: Config, data, clock, generator: torch.Generator) -> tuple[float, float]:
    """Seconds of one hand-written epoch (train + test evaluation) on the engine's model, and
    of evaluating the validation set besides."""
    device = torch.device(config.device)
    model = build_model(config, device)
    optimizer = make_optimizer(config, model)
    x, y = data.train_x, data.train_y
    start = clock()
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), config.batch_size):
        idx = order[i:i + config.batch_size]
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    test = _accuracy(model, data.test_x, data.test_y)
    tested = clock()
    _accuracy(model, data.val_x, data.val_y)
    return tested - start, clock() - tested


def _accuracy(model, x, y) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), EVAL_BATCH):
            correct += int((model(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum())
    return correct / max(len(x), 1)


def import_seconds(repeats: int = 5) -> float:
    """Wall time (best of ``repeats``) of ``import feedalign.training`` in a fresh interpreter, less ``import torch``
    (which any PyTorch script pays)."""
    def timed(code):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        return min(times)  # the least disturbed start on a shared machine
    return timed("import feedalign.training") - timed("import torch")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="784-256-256-10")
    parser.add_argument("--rule", default="bp")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    args = parser.parse_args(argv)
    clock = CLOCKS[args.clock]
    config = Config(dataset=args.dataset, architecture=args.architecture, rule=args.rule,
                    batch_size=args.batch_size, threads=args.threads)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_data(config)
    load_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    minimal_round(config, data, clock, generator)  # warm-up: allocator, first-call costs
    engine, minimal, setup, ratios, ratios_val = [], [], [], [], []
    for r in range(args.rounds):
        pair = {}
        for side in (("engine", "minimal") if r % 2 == 0 else ("minimal", "engine")):
            if side == "engine":
                pair["engine"], s = engine_round(config, data, clock)
                setup.append(s)
            else:
                pair["minimal"], pair["val"] = minimal_round(config, data, clock, generator)
        engine.append(pair["engine"])
        minimal.append(pair["minimal"])
        ratios.append(pair["engine"] / pair["minimal"])
        ratios_val.append(pair["engine"] / (pair["minimal"] + pair["val"]))
        print(f"round {r + 1}: engine epoch {pair['engine']:.3f} s, minimal epoch {pair['minimal']:.3f} s "
              f"(+ {pair['val']:.3f} s to evaluate the validation set too), ratio {ratios[-1]:.3f}", flush=True)
    imports = import_seconds()
    med = statistics.median
    print(f"\n{args.rule} {args.architecture} on {args.dataset}, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.clock} clock, {args.rounds} interleaved rounds (medians)")
    print(f"engine epoch (train + val/test evaluation + alignment probes + checkpoints): {med(engine):.3f} s")
    print(f"minimal loop epoch (train + test evaluation): {med(minimal):.3f} s")
    print(f"ratio engine / minimal: {med(ratios):.3f}")
    print(f"ratio engine / minimal that also evaluates the validation set (as the engine does, for model "
          f"selection): {med(ratios_val):.3f}")
    print(f"set-up: import beyond torch {imports:.2f} s (wall) + data from the cache {load_s:.2f} s (wall) + in train() "
          f"{med(setup):.2f} s (model, run dir, epoch-0 evaluation, summary, plots) = "
          f"{imports + load_s + med(setup):.2f} s")
    return 0 if all(math.isfinite(v) for v in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
