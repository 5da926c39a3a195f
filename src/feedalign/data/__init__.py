"""Datasets, verified and cached: ``load("mnist")`` gives a :class:`DataSplits` of tensors.

Real sets (``mnist``, ``fashion-mnist``, ``cifar10``) come from the user's folder
(``data_dir`` / ``$FEEDALIGN_DATA``), the cache (``~/.cache/feedalign``, or ``cache_dir`` /
``$FEEDALIGN_CACHE``), or a verified download; ``mnist1d`` is generated locally and
cached; the papers' synthetic regression tasks are generated from ``seed``.
``feedalign data fetch NAME`` fetches ahead of time.
"""
from __future__ import annotations

from pathlib import Path

from .batching import batches
from .cifar import CifarDataset
from .mnist import FASHION_MNIST, MNIST
from .mnist_1d import Mnist1dDataset
from ..errors import DatasetError
from .splits import DataSplits, SplitDataset, make_splits
from .synthetic import LINEAR, NONLINEAR, TOY1D

__all__ = ["load", "batches", "datasets", "DatasetError", "DataSplits", "SplitDataset", "fetch", "status", "REGISTRY"]

# name -> dataset spec; tests swap entries (e.g. an IdxDataset with their own checksums).
REGISTRY = {d.name: d for d in (MNIST, FASHION_MNIST, Mnist1dDataset(), CifarDataset(), LINEAR, NONLINEAR, TOY1D)}


def datasets() -> list[str]:
    """The names :func:`load` knows."""
    return list(REGISTRY)


def _spec(name):
    key = str(name).strip().lower() if isinstance(name, str) else name
    key = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "mnist-1d": "mnist1d",
           "cifar-10": "cifar10"}.get(key, key)
    if key not in REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def load(name: str, *, data_dir=None, cache_dir=None, validation_size: int | None = None, seed: int = 0,
         standardize: bool = False, flatten: bool = True, download: bool = True) -> DataSplits:
    """Load ``name`` into memory, holding ``validation_size`` training examples out (chosen by ``seed``).

    ``validation_size=None``: 10000 for mnist, fashion-mnist and cifar10, 20% of the
    training set otherwise. Image pixels are float32 in [0, 1]; ``standardize`` then
    centres and scales each feature by the training split's statistics. ``flatten`` gives
    ``x`` as ``(N, input_size)``, otherwise ``(N, *input_shape)``. ``download=False``
    raises :class:`DatasetError` instead of fetching a dataset the disk lacks.
    """
    spec = _spec(name)
    if spec.kind == "synthetic":
        train_x, train_y, test_x, test_y = spec.arrays(seed=seed)
    else:
        train_x, train_y, test_x, test_y = spec.arrays(data_dir, cache_dir, download)
    if validation_size is None:
        default = spec.default_validation
        validation_size = default if isinstance(default, int) else int(len(train_x) * default)
    return make_splits(spec.name, train_x, train_y, test_x, test_y, num_classes=spec.num_classes,
                       input_shape=spec.input_shape, validation_size=validation_size, seed=seed,
                       standardize=standardize, flatten=flatten)


def fetch(name: str, *, data_dir=None, cache_dir=None, progress: bool = True) -> Path | None:
    """Make ``name`` present and verified in the cache and return its folder (None for generated tasks)."""
    return _spec(name).fetch(data_dir, cache_dir, progress)


def status(*, data_dir=None, cache_dir=None) -> list[dict]:
    """For each dataset: ``name``, ``present`` (bool), ``path`` (where it is or would be cached), ``size_bytes``."""
    return [spec.status(data_dir, cache_dir) for spec in REGISTRY.values()]
