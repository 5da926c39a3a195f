"""Seconds per ResNet-20 training step (forward, backward, SGD step) per rule at batch 128, on CIFAR-sized
random inputs (the time does not depend on the pixel values).

    PYTHONPATH=src python benchmarks/resnet_step.py [--threads 1] [--steps 3] [--device cpu]

Prints one line per rule: the median over ``--steps`` timed steps after one warm-up step, and the
projected time of one 45000-example epoch (352 steps) at that rate.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import feedalign
from feedalign.models import resnet20


def step_seconds(rule: str, *, batch: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    model = feedalign.convert(resnet20(), rule).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    learning_rule = feedalign.learning_rule(model)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with learning_rule.forward_context(model, y):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learning_rule.after_step(model, (x, y), i + 1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rules", default="bp,fa,dfa,usf,brsf,frsf,kp,wm,drtp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ResNet-20, batch {args.batch}, {args.device}, {args.threads} thread(s), median of {args.steps} steps")
    for rule in args.rules.split(","):
        s = step_seconds(rule, batch=args.batch, steps=args.steps, device=args.device)
        print(f"{rule:5s} {s:.3f} s/step  ~{s * 352 / 60:.1f} min per 45000-example epoch", flush=True)


if __name__ == "__main__":
    main()
