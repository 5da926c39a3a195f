"""Same as ``feedalign bench`` without going through the CLI package (no other subcommand imported).

    python benchmarks/bench_step.py --sizes 784-240x100-10:64 --rules bp fa dfa --rounds 5
"""
import argparse
import sys

from feedalign.cli import bench_cmd

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_step")
    bench_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["bench", *sys.argv[1:]])
    sys.exit(args.func(args))
