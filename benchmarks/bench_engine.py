"""The training engine's overhead: one epoch through ``feedalign.train`` against a minimal hand-written loop.

    python benchmarks/bench_engine.py                      # 784-256-256-10, MNIST, batch 64, 1 thread, bp
    python benchmarks/bench_engine.py --rule dfa --architecture 784-100-10 --rounds 5
    python benchmarks/bench_engine.py --device cuda        # on a GPU: wall clock (CPU time misses the GPU's work)

Both sides train the SAME model (``build_model``/``make_optimizer`` of the config), on the
same in-memory data, batch size and threads. Per round (rounds interleaved in one process,
so a slow spell of a shared machine hits both):

- engine: ``feedalign.train`` for 2 epochs; its epoch time is the time between the two
  ``on_epoch_end`` calls: epoch 1's metrics, step log and checkpoints written, then epoch
  2 trained and evaluated (val and test) with alignment probes at their default interval;
- minimal: one shuffled pass of ``zero_grad; cross_entropy(model(x), y).backward(); step``
  plus one evaluation of the test set, as a user's own script would do.

The ratio is the median over rounds of (engine epoch / minimal epoch in the same round).
CPU-time clock by default (robust on a shared machine with one thread); ``--clock wall``
for wall time, which ``--device cuda`` always uses. On a GPU both sides read their numbers back
(the engine its loss and accuracy at every step, the minimal loop its accuracy at the end), so
each clock reading follows finished work.

Set-up is what a run costs besides its epochs, timed (wall clock) in fresh interpreters as
a user's ``feedalign train`` pays it, since a warm process has its imports already done:
importing feedalign, loading the cached dataset, and inside ``train`` everything before the
first step (model, run directory, the epoch-0 evaluation and probe) and after the last epoch
(summary, plots, matplotlib's import). Left out, and printed apart: ``import torch`` and
torch's first optimizer, which imports ``torch._dynamo`` and which any training script pays.
Each part is the least of ``--setup-runs`` interpreters (the least disturbed by a shared machine).
"""
from __future__ import annotations

import argparse
import json
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
    """A callback that records when the engine ends each epoch."""

    def __init__(self, clock):
        self.clock, self.epochs = clock, []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(self.clock())


def engine_round(config: Config, data, clock) -> float:
    """Seconds of the second epoch of a 2-epoch ``train`` run (from the first epoch's end to the second's)."""
    stamps = _Stamps(clock)
    with tempfile.TemporaryDirectory() as out:
        train(config.replace(out_dir=out, epochs=2), [stamps], progress="none", data=data)
    first, second = stamps.epochs
    return second - first


def minimal_round(config: Config, data, clock, generator: torch.Generator) -> tuple[float, float]:
    """Seconds of one hand-written epoch (train + test evaluation) on the engine's model, and
    of evaluating the validation set besides."""
    device = torch.device(config.device)
    model = build_model(config, device)
    optimizer = make_optimizer(config, model)
    x, y = data.train_x.to(device), data.train_y.to(device)  # as the engine holds them: on the device
    test, val = (data.test_x.to(device), data.test_y.to(device)), (data.val_x.to(device), data.val_y.to(device))
    start = clock()
    order = torch.randperm(len(x), generator=generator).to(device)
    for i in range(0, len(x), config.batch_size):
        idx = order[i:i + config.batch_size]
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    _accuracy(model, *test)
    tested = clock()
    _accuracy(model, *val)
    return tested - start, clock() - tested


def _accuracy(model, x, y) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), EVAL_BATCH):
            correct += int((model(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum())
    return correct / max(len(x), 1)


# Run in a fresh interpreter by setup_seconds: the stages of one 1-epoch run, wall clock, as JSON.
_SETUP_PROBE = """
import json, sys, tempfile, time
start = time.perf_counter()
import torch
torch_imported = time.perf_counter()
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the first optimizer imports torch._dynamo
torch_ready = time.perf_counter()
from feedalign.training import Config, train
from feedalign.training.build import load_data
imported = time.perf_counter()
config = Config(**json.loads(sys.argv[1]))
data = load_data(config)
loaded = time.perf_counter()

class Stamps:
    def on_step(self, step, model, batch):
        if not hasattr(self, "first_step"):
            self.first_step = time.perf_counter()

    def on_epoch_end(self, epoch, metrics):
        self.epoch_end = time.perf_counter()

stamps = Stamps()
with tempfile.TemporaryDirectory() as out:
    begin = time.perf_counter()
    train(config.replace(out_dir=out, epochs=1), [stamps], progress="none", data=data)
    end = time.perf_counter()
print(json.dumps({"torch": torch_ready - start, "torch_optimizer": torch_ready - torch_imported,
                  "import": imported - torch_ready, "data": loaded - imported,
                  "before_first_step": stamps.first_step - begin, "after_last_epoch": end - stamps.epoch_end}))
"""

SETUP_PARTS = ("import", "data", "before_first_step", "after_last_epoch")


def setup_seconds(config: Config, runs: int) -> dict[str, float]:
    """Each stage of :data:`_SETUP_PROBE` (seconds), the least over ``runs`` fresh interpreters."""
    fields = {k: getattr(config, k) for k in ("dataset", "architecture", "rule", "batch_size", "threads", "seed",
                                              "device")}
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _SETUP_PROBE, json.dumps(fields)], check=True,
                              capture_output=True, text=True)
        for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
            times.setdefault(key, []).append(value)
    return {key: min(values) for key, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="784-256-256-10")
    parser.add_argument("--rule", default="bp")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (the default) or wall; "
                        "a GPU device always uses wall")
    parser.add_argument("--device", default="cpu", help="cpu (the default), cuda or cuda:N")
    parser.add_argument("--setup-runs", type=int, default=3, help="fresh interpreters that time the set-up")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: this torch sees no CUDA device")
        args.clock = "wall"
    clock = CLOCKS[args.clock]
    config = Config(dataset=args.dataset, architecture=args.architecture, rule=args.rule,
                    batch_size=args.batch_size, threads=args.threads, device=args.device)
    torch.set_num_threads(args.threads)
    data = load_data(config)
    generator = torch.Generator().manual_seed(0)
    minimal_round(config, data, clock, generator)  # warm-up: allocator, first-call costs
    engine, minimal, ratios, ratios_val = [], [], [], []
    for r in range(args.rounds):
        pair = {}
        for side in (("engine", "minimal") if r % 2 == 0 else ("minimal", "engine")):
            if side == "engine":
                pair["engine"] = engine_round(config, data, clock)
            else:
                pair["minimal"], pair["val"] = minimal_round(config, data, clock, generator)
        engine.append(pair["engine"])
        minimal.append(pair["minimal"])
        ratios.append(pair["engine"] / pair["minimal"])
        ratios_val.append(pair["engine"] / (pair["minimal"] + pair["val"]))
        print(f"round {r + 1}: engine epoch {pair['engine']:.3f} s, minimal epoch {pair['minimal']:.3f} s "
              f"(+ {pair['val']:.3f} s to evaluate the validation set too), ratio {ratios[-1]:.3f}", flush=True)
    setup = setup_seconds(config, args.setup_runs)
    med = statistics.median
    print(f"\n{args.rule} {args.architecture} on {args.dataset}, {args.device}, batch {args.batch_size}, "
          f"{args.threads} thread(s), "
          f"{args.clock} clock, {args.rounds} interleaved rounds (medians)")
    print(f"engine epoch (train + val/test evaluation + alignment probes + checkpoints): {med(engine):.3f} s")
    print(f"minimal loop epoch (train + test evaluation): {med(minimal):.3f} s")
    print(f"ratio engine / minimal: {med(ratios):.3f}")
    print(f"ratio engine / minimal that also evaluates the validation set (as the engine does, for model "
          f"selection): {med(ratios_val):.3f}")
    print(f"set-up in a fresh interpreter (wall, least of {args.setup_runs}): "
          f"import feedalign {setup['import']:.2f} s + data from the cache {setup['data']:.2f} s + "
          f"before the first step {setup['before_first_step']:.2f} s (model, run dir, epoch-0 evaluation and probe) + "
          f"after the last epoch {setup['after_last_epoch']:.2f} s (summary, plots) = "
          f"{sum(setup[k] for k in SETUP_PARTS):.2f} s; besides, import torch and its first optimizer "
          f"{setup['torch']:.2f} s (of which the optimizer's import of torch._dynamo "
          f"{setup['torch_optimizer']:.2f} s), as any training script")
    return 0 if all(math.isfinite(v) for v in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
