"""How much of a BP epoch the batch iterator costs: MNIST, mlp("784-800-10"), batch 64, SGD.

Times an epoch of only iterating ``batches()`` against an epoch of training (which
iterates the same batches), interleaved over a few rounds, and prints the median
iterator time as a percentage of the median training epoch. Target: under 5%.

    python benchmarks/bench_data.py [--rounds 3] [--batch-size 64] [--dataset mnist]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from feedalign.data import batches, load
from feedalign.models import mlp


def iterate_epoch(x, y, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    for xb, yb in batches(x, y, batch_size, generator=g):
        pass


def train_epoch(model, opt, x, y, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in batches(x, y, batch_size, generator=g):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args(argv)

    d = load(args.dataset)
    torch.manual_seed(0)
    model = mlp(f"{d.input_size}-800-{d.output_size}")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    iterate_epoch(d.train_x, d.train_y, args.batch_size, 0)  # warm-up: page in the tensors, start threads
    iter_times, train_times = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        iterate_epoch(d.train_x, d.train_y, args.batch_size, r)
        t1 = time.perf_counter()
        train_epoch(model, opt, d.train_x, d.train_y, args.batch_size, r)
        t2 = time.perf_counter()
        iter_times.append(t1 - t0)
        train_times.append(t2 - t1)
        print(f"round {r + 1}: iterate {iter_times[-1] * 1e3:.1f} ms, train epoch {train_times[-1]:.2f} s", flush=True)
    it, tr = statistics.median(iter_times), statistics.median(train_times)
    print(f"{args.dataset} ({len(d.train_x)} examples), batch {args.batch_size}, torch threads {torch.get_num_threads()}: "
          f"iterator {it * 1e3:.1f} ms / BP epoch {tr:.2f} s = {100 * it / tr:.2f}% overhead (target < 5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
