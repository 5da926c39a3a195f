"""The synthetic regression tasks of the feedback-alignment papers, generated from a seed.

* ``linear-task`` (Lillicrap et al. 2016): ``x ~ N(0, I_30)``, target ``T x`` with ``T`` (10x30) from U[-1, 1].
* ``nonlinear-task``: targets from a random 30-20-10-10 tanh teacher network, ``x ~ N(0, I_30)``.
* ``toy1d``: ``x ~ N(0, 1)``, target ``y = x``: the smallest sanity check.

Nothing is cached: generating 12000 examples takes milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def linear_teacher(generator: torch.Generator, in_dim: int = 30, out_dim: int = 10) -> torch.Tensor:
    """T of Lillicrap et al.'s linear task: ``(out_dim, in_dim)``, entries U[-1, 1], float32."""
    return torch.rand(out_dim, in_dim, generator=generator) * 2 - 1


def linear_task(n_train: int = 10000, n_test: int = 2000, *, seed: int = 0, in_dim: int = 30, out_dim: int = 10):
    """``(train_x, train_y, test_x, test_y)``: x float32 ``(N, in_dim)``, targets ``(N, out_dim)``; teacher from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    teacher = linear_teacher(g, in_dim, out_dim)
    x = torch.randn(n_train + n_test, in_dim, generator=g)
    y = x @ teacher.T
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def nonlinear_task(n_train: int = 10000, n_test: int = 2000, *, seed: int = 0, sizes: tuple = (30, 20, 10, 10)):
    """Like :func:`linear_task`, targets from a random tanh teacher with layer widths ``sizes`` (linear output).

    Teacher weights are U[-1, 1] scaled by ``sqrt(3 / fan_in)`` (unit-variance pre-activations),
    so the tanh units neither saturate nor stay linear.
    """
    g = torch.Generator().manual_seed(int(seed))
    weights = [(torch.rand(o, i, generator=g) * 2 - 1) * (3.0 / i) ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    x = torch.randn(n_train + n_test, sizes[0], generator=g)
    h = x
    for k, w in enumerate(weights):
        h = h @ w.T
        if k < len(weights) - 1:
            h = torch.tanh(h)
    return x[:n_train], h[:n_train], x[n_train:], h[n_train:]


def toy1d(n_train: int = 10000, n_test: int = 2000, *, seed: int = 0):
    """``x ~ N(0, 1)`` with target ``x``, both ``(N, 1)``."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n_train + n_test, 1, generator=g)
    return x[:n_train], x[:n_train].clone(), x[n_train:], x[n_train:].clone()


_GENERATORS = {"linear-task": linear_task, "nonlinear-task": nonlinear_task, "toy1d": toy1d}


@dataclass(frozen=True)
class SyntheticDataset:
    name: str
    input_shape: tuple
    num_classes: None = None
    default_validation: int | float = 0.2
    kind: str = field(default="synthetic", repr=False)

    def status(self, data_dir=None, cache_dir=None) -> dict:
        return {"name": self.name, "present": True, "path": "(generated)", "size_bytes": 0}

    def fetch(self, data_dir=None, cache_dir=None, progress: bool = True):
        return None  # generated on demand: nothing to fetch

    def arrays(self, data_dir=None, cache_dir=None, download: bool = True, seed: int = 0):
        return tuple(t.numpy() for t in _GENERATORS[self.name](seed=seed))


LINEAR = SyntheticDataset("linear-task", (30,))
NONLINEAR = SyntheticDataset("nonlinear-task", (30,))
TOY1D = SyntheticDataset("toy1d", (1,))
