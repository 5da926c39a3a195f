"""Benchmarks behind ``feedalign bench``: the training step of every rule against backprop and the
machine's GEMM ceiling (:mod:`.steps`), and the training time to a test accuracy (:mod:`.accuracy`).
Both train with the engine's own step (:class:`feedalign.training.step.Step`)."""
from .accuracy import time_to_accuracy
from .steps import RULES, SIZES, SMOKE_SIZES, bench_size, run, step_flops

__all__ = ["RULES", "SIZES", "SMOKE_SIZES", "bench_size", "run", "step_flops", "time_to_accuracy"]
