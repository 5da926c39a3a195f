"""The training step with and without ``torch.compile``: what compiling a converted model buys.

    python benchmarks/bench_compile.py --sizes 784-100-10:64 784-100-100-10:64 784-240x7-10:64 --rules bp fa dfa

Each rule's model is built twice (the same seed); one trains eagerly, the other through
``torch.compile(model)``, both with the engine's step (:class:`feedalign.training.step.Step`). Blocks of
steps are timed in interleaved rounds in one process; each cell is the median over rounds of its step
time over eager BP's in the same round. Compilation happens in the warm-up and is reported apart.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import feedalign
from feedalign.bench.steps import build, parse_size
from feedalign.training.step import Step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["784-100-10:64", "784-100-100-10:64", "784-240x7-10:64"])
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "dfa"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="process CPU time (steady on a shared machine, with one thread) or wall clock")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock; x eager BP: median over "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    print("| network:batch | rule | eager ms | compiled ms | eager x BP | compiled x BP | compile s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for spec in args.sizes:
        arch, batch = parse_size(spec)
        widths = feedalign.parse_sizes(arch)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(batch, widths[0], generator=g), torch.randint(0, widths[-1], (batch,), generator=g)
        steps, compile_s = {}, {}
        for rule in args.rules:
            eager = build(arch, rule, torch.device("cpu"))
            twin = build(arch, rule, torch.device("cpu"))
            steps[rule, "eager"] = eager
            steps[rule, "compiled"] = Step(torch.compile(twin.model), twin.optimizer, F.cross_entropy,
                                           generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            for _ in range(3):  # compiles forward and backward
                steps[rule, "compiled"](x, y, 1)
            compile_s[rule] = time.perf_counter() - start
            for _ in range(10):
                eager(x, y, 1)
        times = {key: [] for key in steps}
        keys = list(steps)
        for r in range(args.rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                start = clock()
                for _ in range(args.steps):
                    steps[key](x, y, 1)
                times[key].append((clock() - start) / args.steps)
        reference = times[args.rules[0], "eager"]
        for rule in args.rules:
            ratio = {mode: statistics.median(t / b for t, b in zip(times[rule, mode], reference))
                     for mode in ("eager", "compiled")}
            print(f"| {spec} | {rule} | {1e3 * statistics.median(times[rule, 'eager']):.3f} | "
                  f"{1e3 * statistics.median(times[rule, 'compiled']):.3f} | {ratio['eager']:.2f} | "
                  f"{ratio['compiled']:.2f} | {compile_s[rule]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
