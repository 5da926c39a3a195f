"""``feedalign bench``: training-step speed of each rule relative to backprop and to the GEMM ceiling."""
from __future__ import annotations

import sys
import time

from ..files import check_writable, write_json
from . import UsageError


def register(subparsers) -> None:
    from feedalign.bench import RULES, SIZES

    parser = subparsers.add_parser(
        "bench", help="time each rule's training step against backprop and the machine's GEMM ceiling",
        description="Times forward+backward+SGD step of each rule, interleaved with BP in one process, "
                    "and reports ratios to BP, achieved FLOP/s against a large float32 matmul, the memory "
                    "autograd saves, and one MNIST epoch per rule when the data is on disk.")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), metavar="ARCH[:BATCH]",
                        help="networks, e.g. 784-240x7-10:64 (default: %(default)s)")
    parser.add_argument("--rules", nargs="+", default=list(RULES), help="rules to time; bp is always timed")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--round-seconds", type=float, default=0.3,
                        help="time of one rule's block of steps in a round (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall clock, or process CPU time (robust on a shared machine with --threads 1)")
    parser.add_argument("--no-epoch", action="store_true", help="skip the MNIST epoch column")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, a few seconds: checks the bench runs")
    parser.add_argument("--to-accuracy", type=float, metavar="A",
                        help="instead of step times: the training time each rule (tuned setting) needs to reach "
                             "test accuracy A on MNIST 784-800-800-10, e.g. 0.97")
    parser.add_argument("--max-epochs", type=int, default=10,
                        help="with --to-accuracy: give up on a rule after this many epochs (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.set_defaults(func=main)


def main(args) -> int:
    from feedalign.bench import SMOKE_SIZES, run

    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    if not 0 < args.round_seconds < float("inf"):  # NaN fails too
        raise UsageError(f"--round-seconds must be a positive number of seconds; got {args.round_seconds}")
    sizes, rounds, round_s, epoch, gemm = args.sizes, args.rounds, args.round_seconds, not args.no_epoch, 2048
    if args.smoke:
        sizes, rounds, round_s, epoch, gemm = list(SMOKE_SIZES), min(rounds, 2), 0.01, False, 256
    if args.json:
        check_writable(args.json)  # now, not after the bench has run
    start = time.perf_counter()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731  progress off stdout
    if args.to_accuracy is not None:
        result = _to_accuracy(args, log)
    else:
        result = run(sizes, args.rules, device=args.device, rounds=rounds, min_round_s=round_s, epoch=epoch,
                     gemm_size=gemm, threads=args.threads, clock_name=args.clock, log=log)
    result["command_seconds"] = time.perf_counter() - start
    print(result["table"])
    print(f"\n(bench ran {result['command_seconds']:.0f} s)")
    if args.json:
        write_json(args.json, result)
    return 0


def _to_accuracy(args, log) -> dict:
    import torch

    from feedalign.bench import time_to_accuracy
    if args.device == "cuda":
        raise UsageError("--to-accuracy runs on the CPU only")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    from feedalign.rules import reference_rule
    rules = list(dict.fromkeys([reference_rule(), *args.rules]))  # BP first: the ratios are to it
    return time_to_accuracy(args.to_accuracy, rules, max_epochs=args.max_epochs, log=log)
