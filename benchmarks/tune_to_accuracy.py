"""Search the setting of each rule that reaches a test accuracy soonest (``feedalign bench --to-accuracy``'s
TUNED table): every rule x optimizer x learning rate on MNIST 784-800-800-10 tanh, batch 128, seed 0.

    python benchmarks/tune_to_accuracy.py [--target 0.97] [--rules bp fa dfa ifa] [--threads 1]

Prints each run's training time to the target (or "not reached" with the best accuracy) and the fastest
setting per rule. Slow: 5 settings x 4 rules x up to --max-epochs epochs each.
"""
from __future__ import annotations

import argparse

import torch

from feedalign.bench import time_to_accuracy

GRID = [{"optimizer": "sgd", "lr": lr, "momentum": 0.9} for lr in (0.03, 0.1)] + \
       [{"optimizer": "adam", "lr": lr, "momentum": 0.9} for lr in (3e-4, 1e-3, 3e-3)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "dfa", "ifa"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for rule in args.rules:
        results = []
        for setting in GRID:
            (row,) = time_to_accuracy(args.target, [rule], settings={rule: setting}, max_epochs=args.max_epochs,
                                      log=lambda *a: None)["rows"]
            results.append(row)
            reached = "not reached" if row["seconds"] is None else f"{row['seconds']:.1f} s"
            print(f"{rule} {row['setting']}: {reached}, best {100 * row['best_accuracy']:.2f}%", flush=True)
        done = [r for r in results if r["seconds"] is not None]
        best = min(done, key=lambda r: r["seconds"]) if done else None
        print(f"{rule}: fastest {best['setting']} ({best['seconds']:.1f} s)" if best else f"{rule}: none reached",
              flush=True)


if __name__ == "__main__":
    main()
