"""Runs per hour: N seeds of one config as one population (feedalign.training.population) against N separate runs.

    python benchmarks/bench_population.py --architecture 784-100-10 --members 8 --rounds 3
    python benchmarks/bench_population.py --architecture 784-240x7-10 --rule dfa --device cuda

Whole runs, as a user pays for them: ``feedalign.train`` (one epoch by default, engine
defaults: validation and test evaluation, alignment probes, checkpoints, plots) for
one seed, against ``train_population`` of ``--members`` seeds, in interleaved rounds in
one process; the data is loaded once per seed beforehand, for both sides. A separate
run's cost does not depend on its seed, so the sequential time of N runs is N times the
one timed. The factor is the median over rounds of ``N * separate / population``.
CPU-time clock on the CPU with one thread (robust on a shared machine), wall clock otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from feedalign.training import Config, train
from feedalign.training.build import load_data
from feedalign.training.population import train_population


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_population", description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="784-100-10")
    parser.add_argument("--rule", default="fa")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # CPU time is robust on a shared machine but counts every thread: the wall clock for more than one
    clock = time.perf_counter if args.device.startswith("cuda") or args.threads != 1 else time.process_time
    base = Config(dataset=args.dataset, architecture=args.architecture, rule=args.rule, batch_size=args.batch_size,
                  epochs=args.epochs, threads=args.threads, device=args.device)
    configs = [base.replace(seed=s, name=f"seed{s}") for s in range(args.members)]
    datasets = [load_data(c) for c in configs]
    factors, separate, together = [], [], []
    for r in range(args.rounds):
        times = {}
        for side in (("separate", "population") if r % 2 == 0 else ("population", "separate")):
            with tempfile.TemporaryDirectory() as out:
                start = clock()
                if side == "separate":
                    train(configs[0].replace(out_dir=out), progress="none", data=datasets[0])
                else:
                    train_population([c.replace(out_dir=out) for c in configs], datasets, progress="none")
                times[side] = clock() - start
        separate.append(times["separate"])
        together.append(times["population"])
        factors.append(args.members * times["separate"] / times["population"])
        print(f"round {r + 1}: one separate run {times['separate']:.2f} s, population of {args.members} "
              f"{times['population']:.2f} s, factor {factors[-1]:.2f}", flush=True)
    med = statistics.median
    print(f"\n{args.rule} {args.architecture}:{args.batch_size} on {args.dataset}, {args.epochs} epoch(s), "
          f"{args.device}, {args.threads} thread(s), {'wall' if clock is time.perf_counter else 'CPU-time'} clock, "
          f"{args.rounds} interleaved rounds (medians)")
    print(f"one separate run: {med(separate):.2f} s; {args.members} runs as one population: {med(together):.2f} s")
    print(f"runs per hour: separate {3600 / med(separate):.0f}, population {3600 * args.members / med(together):.0f}; "
          f"factor {med(factors):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
