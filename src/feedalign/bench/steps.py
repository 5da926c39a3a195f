"""Training-step speed of every rule against backprop and against the machine's GEMM ceiling.

Timing on a shared machine is noisy, so every number here is relative and taken in
one process: rules are timed in INTERLEAVED rounds (each round times every rule once,
in a rotating order), and a rule's ratio to BP is the median over rounds of
``rule time / BP time in the same round``, so a slow spell hits both sides of a ratio.

``clock="cpu"`` times with the process's CPU time instead of the wall clock: on a
machine shared with other jobs, a single-threaded run timed that way is not
inflated by the time the scheduler gives to others (with several threads it still
counts the threads' spinning at barriers, so use it with ``threads=1``).

Memory is counted analytically, not sampled from the process: the bytes of the
tensors autograd keeps between forward and backward (``saved_tensors_hooks``, one count
per storage, parameters and buffers excluded). That is what a rule changes; RSS deltas
on CPU mostly show the allocator's caching. On CUDA the step's peak
``torch.cuda.max_memory_allocated`` above the model's own memory is reported as well.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from feedalign.data import batches, load
from feedalign.errors import ConfigError
from feedalign.models import check_memory
from feedalign.rules import reference_rule
from feedalign.rules.fused import uses_fused_path
from feedalign.training.step import Step

from ..convert import convert
from ..models import mlp, parse_sizes
from ..rules import get_rule
from ..rules import rules as registered_rules

SIZES = ("784-240x7-10:64", "784-1000-1000-1000-10:128", "784-240x100-10:64")
SMOKE_SIZES = ("20-16x3-5:8", "20-24-24-5:16")
RULES = ("bp", "fa", "dfa", "ifa")


def parse_size(spec: str) -> tuple[str, int]:
    """``"784-240x7-10:64"`` gives the architecture and the batch size (default 64)."""
    arch, _, batch = spec.partition(":")
    check_memory(arch)  # parses it, and refuses a network that cannot fit before anything is allocated
    if batch and not (batch.isdigit() and int(batch) > 0):
        raise ConfigError(f"batch size in {spec!r} must be a positive integer")
    return arch, int(batch or 64)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; expected cpu, cuda or auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set by run()


def gemm_ceiling(device: torch.device, size: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of a large float32 ``mm`` (median of ``repeats``): what this machine can do at best."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        torch.mm(a, b, out=out)
        synchronize(device)
        times.append(clock() - start)
    return 2.0 * size ** 3 / statistics.median(times)


def step_flops(widths: list[int], batch: int, rule: str) -> float:
    """Matmul FLOPs of one training step under ``rule`` (``"fa"`` or ``"fa:general"``), as the rule
    counts them (:meth:`feedalign.rules.LearningRule.step_flops`)."""
    return get_rule(rule.partition(":")[0]).step_flops(widths, batch)


def build(arch: str, rule: str, device: torch.device, seed: int = 0):
    """Model and SGD optimizer; ``"fa:general"`` (any rule) pins the general autograd path."""
    name, _, variant = rule.partition(":")
    torch.manual_seed(seed)
    model = convert(mlp(arch, activation="tanh"), name, seed=seed).to(device)
    if variant == "general":
        model.fused = False
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return Step(model, optimizer, F.cross_entropy, generator=torch.Generator().manual_seed(seed))


def train_step(step: Step, x, y):
    """One training step as the engine takes it (the rule's forward context and after-step phase included)."""
    step(x, y, 1)


def saved_bytes(model, x, y) -> int:
    """Bytes autograd holds from forward to backward for one step (one count per storage;
    parameters and buffers, which exist anyway, excluded)."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def cuda_peak_bytes(step: Step, x, y, device) -> int | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    train_step(step, x, y)
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


@dataclass
class Row:
    size: str
    rule: str
    step_ms: float = 0.0
    ratio: float = 1.0
    gflops: float = 0.0
    ceiling_fraction: float = 0.0
    saved_mib: float = 0.0
    cuda_peak_mib: float | None = None
    fused: bool = False  # the step ran on the fused path (feedalign.rules.fused)
    epoch_s: float | None = None
    epoch_ratio: float | None = None
    test_accuracy: float | None = None
    rounds: list = field(default_factory=list)


def bench_size(spec: str, rules, device, *, rounds: int, min_round_s: float, ceiling: float, log=print) -> list[Row]:
    """Time every rule's training step on one architecture, interleaved; BP is always timed as the reference."""
    arch, batch = parse_size(spec)
    widths = parse_sizes(arch)
    reference = reference_rule()
    timed = [reference] + [r for r in rules if r != reference]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (batch,), generator=g).to(device)
    steps_of = {rule: build(arch, rule, device) for rule in timed}
    rows = {rule: Row(size=spec, rule=rule) for rule in timed}
    for rule, step in steps_of.items():
        model = step.model
        rows[rule].saved_mib = saved_bytes(model, x, y) / 2 ** 20
        rows[rule].fused = uses_fused_path(model(x))
        model.zero_grad(set_to_none=True)
        peak = cuda_peak_bytes(step, x, y, device)
        rows[rule].cuda_peak_mib = None if peak is None else peak / 2 ** 20
    # steps per timed block: enough for min_round_s, from a short calibration of BP
    for _ in range(3):
        train_step(steps_of[reference], x, y)
    synchronize(device)
    start = clock()
    for _ in range(3):
        train_step(steps_of[reference], x, y)
    synchronize(device)
    steps = max(1, int(3 * min_round_s / max(clock() - start, 1e-6)))
    for rule in timed:  # warm-up: allocator, kernels, lazy init
        for _ in range(max(2, steps // 4)):
            train_step(steps_of[rule], x, y)
    times = {rule: [] for rule in timed}
    for r in range(rounds):
        order = timed[r % len(timed):] + timed[:r % len(timed)]
        for rule in order:
            step = steps_of[rule]
            synchronize(device)
            start = clock()
            done = 0
            while True:  # the calibrated count, then on until the block lasts min_round_s
                for _ in range(steps if done == 0 else 1):
                    train_step(step, x, y)
                done += steps if done == 0 else 1
                synchronize(device)
                if clock() - start >= min_round_s:
                    break
            times[rule].append((clock() - start) / done)
    for rule in timed:
        row = rows[rule]
        row.rounds = times[rule]
        row.step_ms = 1e3 * statistics.median(times[rule])
        row.ratio = statistics.median(t / b for t, b in zip(times[rule], times[reference]))
        row.gflops = step_flops(widths, batch, rule) / (row.step_ms / 1e3) / 1e9
        row.ceiling_fraction = row.gflops * 1e9 / ceiling
    log(f"  {spec}: at least {steps} steps ({min_round_s} s) a rule a round, {rounds} rounds")
    return [rows[rule] for rule in timed if rule in rules or rule == reference]


def epoch_times(rows: list[Row], device, *, dataset: str = "mnist", log=print) -> str | None:
    """One MNIST epoch (train split, batch of the size row) then test accuracy under
    ``torch.inference_mode``, per rule; returns a note instead when the data is unavailable."""
    try:
        data = load(dataset, download=False)
    except Exception as err:  # data layer missing or dataset not on disk: skip the column
        return f"epoch column skipped: {dataset} unavailable ({type(err).__name__}: {str(err).splitlines()[0][:100]})"
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    by_size: dict[str, list[Row]] = {}
    for row in rows:
        by_size.setdefault(row.size, []).append(row)
    for spec, group in by_size.items():
        arch, batch = parse_size(spec)
        widths = parse_sizes(arch)
        if widths[0] != train_x.shape[1] or widths[-1] != data.output_size:
            continue
        for row in group:
            step = build(arch, row.rule, device)
            model = step.model
            generator = torch.Generator(device=train_x.device).manual_seed(0)
            synchronize(device)
            start = clock()
            for xb, yb in batches(train_x, train_y, batch, generator=generator):
                train_step(step, xb, yb)
            with torch.inference_mode():
                correct = sum(int((model(xb).argmax(1) == yb).sum())
                              for xb, yb in batches(test_x, test_y, 1000, shuffle=False))
            synchronize(device)
            row.epoch_s = clock() - start
            row.test_accuracy = correct / len(test_x)
        bp = next(r for r in group if r.rule == reference_rule()).epoch_s
        for row in group:
            row.epoch_ratio = None if row.epoch_s is None or not bp else row.epoch_s / bp
        log(f"  {spec}: epoch done")
    return None


def table(rows: list[Row], ceiling: float, device: torch.device, notes: list[str], gemm_size: int) -> str:
    lines = [f"device: {describe(device)}; GEMM ceiling (float32 mm {gemm_size}^3): {ceiling / 1e9:.1f} GFLOP/s", "",
             "| network:batch | rule | step ms | x BP | GFLOP/s | % ceiling | saved MiB | fused | epoch s | epoch x BP | test acc |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        path = "yes" if r.fused else "no"
        epoch = "-" if r.epoch_s is None else f"{r.epoch_s:.1f}"
        epoch_ratio = "-" if r.epoch_ratio is None else f"{r.epoch_ratio:.2f}"
        acc = "-" if r.test_accuracy is None else f"{100 * r.test_accuracy:.1f}%"
        saved = f"{r.saved_mib:.1f}" + ("" if r.cuda_peak_mib is None else f" (peak {r.cuda_peak_mib:.1f})")
        lines.append(f"| {r.size} | {r.rule} | {r.step_ms:.2f} | {r.ratio:.2f} | {r.gflops:.1f} | "
                     f"{100 * r.ceiling_fraction:.0f}% | {saved} | {path} | "
                     f"{epoch} | {epoch_ratio} | {acc} |")
    lines += ["", "x BP: median over interleaved rounds of (rule step / BP step in the same round).",
              "saved MiB: tensors autograd keeps from forward to backward (parameters excluded)"
              + ("; peak: CUDA max_memory_allocated during a step above the model." if device.type == "cuda" else ".")]
    lines += notes
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads, {'CPU-time' if clock is time.process_time else 'wall'} clock"


def run(sizes, rules, *, device="auto", rounds=7, min_round_s=0.3, epoch=True, gemm_size=2048,
        threads: int | None = None, clock_name: str = "wall", log=print) -> dict:
    """Run the benchmark; returns ``{"rows": [...], "ceiling_flops": ..., "table": str, ...}``."""
    global clock
    device = resolve_device(device)
    if clock_name not in CLOCKS or (clock_name == "cpu" and device.type == "cuda"):
        raise ConfigError(f"clock must be 'wall' or (on the CPU) 'cpu'; got {clock_name!r}")
    clock = CLOCKS[clock_name]
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigError(f"rounds must be an integer of at least 1, got {rounds!r}")
    if not (isinstance(min_round_s, (int, float)) and math.isfinite(min_round_s) and min_round_s > 0):
        raise ConfigError(f"round seconds must be a positive number of seconds, got {min_round_s!r}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if device.type == "cuda" and gemm_size == 2048:
        gemm_size = 8192  # a GPU needs a larger product to reach its peak
    unknown = [r for r in rules if r.partition(":")[0] not in registered_rules() or r.partition(":")[2] not in ("", "general")]
    if unknown:
        raise ConfigError(f"unknown rule(s) {unknown}; known rules: {', '.join(registered_rules())}")
    for spec in sizes:
        parse_size(spec)
    ceiling = gemm_ceiling(device, gemm_size)
    log(f"GEMM ceiling {ceiling / 1e9:.1f} GFLOP/s on {describe(device)}")
    rows: list[Row] = []
    for spec in sizes:
        rows += bench_size(spec, rules, device, rounds=rounds, min_round_s=min_round_s, ceiling=ceiling, log=log)
    notes = []
    if epoch:
        note = epoch_times(rows, device, log=log)
        if note:
            notes.append(note)
    else:
        notes.append("epoch column skipped (--no-epoch).")
    ceiling_after = gemm_ceiling(device, gemm_size)
    # Other jobs can only slow a measurement down: the faster of the two is the machine's.
    best = max(ceiling, ceiling_after)
    for row in rows:
        row.ceiling_fraction = row.gflops * 1e9 / best
    notes.append(f"GEMM ceiling measured {ceiling / 1e9:.1f} GFLOP/s at the start and {ceiling_after / 1e9:.1f} "
                 "at the end; % ceiling uses the higher.")
    ceiling = best
    text = table(rows, ceiling, device, notes, gemm_size)
    return {"device": describe(device), "ceiling_flops": ceiling, "ceiling_flops_end": ceiling_after,
            "torch": torch.__version__, "rows": [asdict(r) for r in rows], "notes": notes, "table": text}
