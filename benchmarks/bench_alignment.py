"""Training-time overhead of logging alignment (``--alignment-every``) at the default interval.

Trains the same run (default: MNIST, 784-256-256-10 tanh, batch 64, one epoch) with
and without :class:`feedalign.diagnostics.AlignmentCallback` (every 200 steps, the default, probe
of 256 validation examples), interleaved over a few rounds, per rule. Prints

- the overhead from wall time: epoch training time with the callback over the time
  without, minus 1, from the medians and from the fastest rounds (noisy on a shared machine);
- the overhead from the callback's own clock: seconds spent measuring over the
  training time of the same epoch (what the callback adds, free of the noise).

Target: under 10%.

    python benchmarks/bench_alignment.py [--rules dfa fa] [--rounds 3] [--every 200] [--dataset mnist]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from feedalign.diagnostics import AlignmentCallback
from feedalign.training import Config, train
from feedalign.training.build import load_data


def epoch_seconds(config: Config, data, callbacks) -> float:
    result = train(config, callbacks, progress="none", data=data)
    return sum(row["train_seconds"] for row in result.metrics[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["dfa", "fa"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--architecture", default="784-256-256-10")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)

    out = tempfile.mkdtemp(prefix="bench_alignment_")
    # alignment_every=0: the runs "without" get no callback from the config either
    base = Config(dataset=args.dataset, architecture=args.architecture, epochs=args.epochs, out_dir=out,
                  alignment_every=0)
    data = load_data(base)
    print(f"{args.dataset}, {args.architecture} tanh, batch {base.batch_size}, {args.epochs} epoch(s) "
          f"({len(data.train_x) // base.batch_size * args.epochs} steps), alignment every {args.every} steps on "
          f"{args.probe_size} validation examples, torch threads {base.threads or torch.get_num_threads()}", flush=True)
    worst = 0.0
    for rule in args.rules:
        config = base.replace(rule=rule)
        epoch_seconds(config.replace(epochs=1, name=f"{rule}-warmup"), data, [])
        plain, probed, shares = [], [], []
        for r in range(args.rounds):
            plain.append(epoch_seconds(config.replace(name=f"{rule}-plain-{r}"), data, []))
            callback = AlignmentCallback(every=args.every, probe_size=args.probe_size)
            probed.append(epoch_seconds(config.replace(name=f"{rule}-probed-{r}"), data, [callback]))
            shares.append(callback.seconds / probed[-1])
            print(f"  {rule} round {r + 1}: without {plain[-1]:.2f} s, with {probed[-1]:.2f} s "
                  f"({callback.measurements} measurements, {callback.seconds:.3f} s in the callback)", flush=True)
        wall = statistics.median(probed) / statistics.median(plain) - 1.0
        fastest = min(probed) / min(plain) - 1.0  # least disturbed by other processes
        share = statistics.median(shares)
        worst = max(worst, share)
        print(f"{rule}: alignment overhead {100 * wall:+.1f}% of training time (wall, medians of {args.rounds}), "
              f"{100 * fastest:+.1f}% (wall, fastest of each), {100 * share:.1f}% by the callback's own clock",
              flush=True)
    print(f"overhead by the callback's clock, worst rule: {100 * worst:.1f}% (target < 10%): "
          f"{'OK' if worst < 0.10 else 'OVER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
