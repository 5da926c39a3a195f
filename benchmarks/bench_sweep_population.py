"""Wall time of one sweep with ``population = "auto"`` against the same sweep with ``"off"``.

    python benchmarks/bench_sweep_population.py                      # 8 runs: dfa, 784-100-10 on MNIST, 1 epoch
    python benchmarks/bench_sweep_population.py --rule fa --seeds 4 --lrs 0.01,0.05 --rounds 2

The sweep is seeds x lrs of one rule, run by ``feedalign.sweeps.run_sweep`` as a user runs it
(local backend, its default worker count, worker start-up, data loading, evaluation,
checkpoints and per-run plots included; no sweep figures), into a fresh directory each time.
Rounds alternate the order (auto, off; then off, auto; ...). Printed per sweep: wall seconds
and the CPU seconds of its worker processes; at the end the median wall-time factor
(off / auto) and the largest difference in best validation accuracy between the two.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    from feedalign.sweeps import spec_from_dict
    from feedalign.sweeps.runner import run_sweep

    parser = argparse.ArgumentParser(prog="bench_sweep_population", description=__doc__.split("\n")[0])
    parser.add_argument("--rule", default="dfa")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--architecture", default="784-100-10")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--lrs", default="0.01,0.05")
    parser.add_argument("--workers", type=int, default=None, help="default: the sweep's (CPUs // threads_per_run)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    lrs = [float(v) for v in args.lrs.split(",")]
    walls: dict[str, list[float]] = {"auto": [], "off": []}
    accuracies: dict[str, dict] = {}
    for r in range(args.rounds):
        for mode in (("auto", "off") if r % 2 == 0 else ("off", "auto")):
            with tempfile.TemporaryDirectory() as out:
                spec = spec_from_dict({
                    "name": f"{mode}-{r}", "out_dir": out, "population": mode,
                    "base": {"dataset": args.dataset, "architecture": args.architecture, "rule": args.rule,
                             "epochs": args.epochs},
                    "grid": {"seed": list(range(args.seeds)), "lr": lrs}}, source="bench")
                cpu0, t0 = _children_cpu(), time.perf_counter()
                result = run_sweep(spec, workers=args.workers, plot=False, log=lambda message: None)
                wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
            if result.failed:
                print(f"{mode}: {len(result.failed)} run(s) failed", file=sys.stderr)
                return 1
            walls[mode].append(wall)
            accuracies[mode] = {row["key"]: row["best_val_accuracy"] for row in result.rows}
            populations = sorted({row["population"] for row in result.rows if row["population"]})
            print(f"round {r + 1} population={mode}: {len(result.rows)} runs in {wall:.1f} s wall, "
                  f"workers' CPU {cpu:.1f} s ({len(populations)} population job(s))", flush=True)
    factors = [off / auto for auto, off in zip(walls["auto"], walls["off"])]
    gap = max(abs(accuracies["auto"][k] - accuracies["off"][k]) for k in accuracies["off"])
    print(f"median wall: auto {statistics.median(walls['auto']):.1f} s, off {statistics.median(walls['off']):.1f} s; "
          f"runs per hour, factor (off / auto): {statistics.median(factors):.2f}x; "
          f"largest |best val acc auto - off|: {gap:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
