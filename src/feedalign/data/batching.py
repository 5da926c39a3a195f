"""Minibatches from in-memory tensors: one permutation per epoch, sliced, no per-example objects.

Each batch is gathered with ``index_select`` rather than permuting a full copy up front and
slicing views: the copy moves the whole array through memory once more and doubles its
footprint, which at small batches costs more than the gathers (``benchmarks/bench_data.py``).
"""
from __future__ import annotations

from typing import Iterator

import torch


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], y[idx])`` for consecutive ``batch_size`` slices of one permutation of ``range(len(x))``.

    ``x``: ``(N, ...)``; ``y``: ``(N, ...)``. Every example appears exactly once per epoch
    (the last batch is short unless ``drop_last``). The permutation is drawn from
    ``generator`` (the global RNG if None) when ``batches`` is *called*, not when iteration
    starts, and consumes the generator exactly once: the same generator state gives the
    same batches, bit for bit, which resuming a run relies on. ``shuffle=False`` keeps order
    and leaves the generator untouched.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"batches() needs tensors x and y; got {type(x).__name__} and {type(y).__name__}")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be a positive integer; got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        if order.device != x.device:
            order = order.to(x.device)
        y_order = order if y.device == x.device else order.to(y.device)
    else:
        order = y_order = None
    stop = n - n % batch_size if drop_last else n
    return _iterate(x, y, order, y_order, batch_size, stop)


def _iterate(x, y, order, y_order, batch_size, stop):
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            yield x.index_select(0, order[start:end]), y.index_select(0, y_order[start:end])
