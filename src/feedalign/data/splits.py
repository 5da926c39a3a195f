"""What every loader returns: :class:`DataSplits`, and how it is built from raw arrays."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from ..errors import DatasetError


@dataclass
class DataSplits:
    """Train, validation and test tensors of one dataset, in memory.

    ``*_x``: float32, ``(N, input_size)`` when flattened, else ``(N, *input_shape)``.
    ``*_y``: int64 ``(N,)`` class labels (classification) or float32 ``(N, output_size)``
    targets (regression, where ``num_classes`` is None).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int | None
    input_shape: tuple
    pad_value: torch.Tensor | None = None  # (C,): a black pixel's value after per-channel normalisation

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        return int(self.train_y.shape[1])

    @property
    def task(self) -> str:
        return "classification" if self.num_classes is not None else "regression"

    def dataset(self, split: str = "train", *, transform=None, target_transform=None) -> "SplitDataset":
        """One split as a ``torch.utils.data.Dataset``, for a ``DataLoader``, its samplers and transforms.

        ``split``: ``"train"``, ``"val"`` or ``"test"``. ``dataset[i]`` is
        ``(transform(x[i]), target_transform(y[i]))`` (either transform may be None), with
        ``x[i]`` of shape ``(input_size,)`` or ``input_shape`` as loaded. The examples are
        views of these tensors, not copies. The training engine keeps its own faster path
        (:func:`feedalign.data.batches`, one gather per batch instead of one per example).
        """
        if split not in _SPLITS:
            raise DatasetError(f"split must be one of {', '.join(_SPLITS)}; got {split!r}")
        for name, fn in (("transform", transform), ("target_transform", target_transform)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None; got {type(fn).__name__}")
        prefix = _SPLITS[split]
        return SplitDataset(getattr(self, f"{prefix}_x"), getattr(self, f"{prefix}_y"), transform=transform,
                            target_transform=target_transform, name=f"{self.name}/{split}")

    def __repr__(self) -> str:
        return (f"DataSplits({self.name!r}, train={len(self.train_x)}, val={len(self.val_x)}, test={len(self.test_x)}, "
                f"input_shape={self.input_shape}, output_size={self.output_size}, task={self.task!r})")


_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class SplitDataset(torch.utils.data.Dataset):
    """A map-style dataset over in-memory tensors ``x`` (N, ...) and ``y`` (N, ...): see :meth:`DataSplits.dataset`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, transform=None, target_transform=None, name: str = ""):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same number of rows; got {len(x)} and {len(y)}")
        self.x, self.y, self.transform, self.target_transform, self.name = x, y, transform, target_transform, name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        x, y = self.x[index], self.y[index]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return f"SplitDataset({self.name!r}, examples={len(self)}, example_shape={tuple(self.x.shape[1:])})"


def make_splits(name: str, train_x, train_y, test_x, test_y, *, num_classes: int | None, input_shape: tuple,
                validation_size: int, seed: int, standardize: bool, flatten: bool) -> DataSplits:
    """Hold out ``validation_size`` training examples and build a :class:`DataSplits`.

    ``train_x``/``test_x``: arrays ``(N, *input_shape)`` of any real dtype, already scaled;
    labels int (classification) or ``(N, out)`` float targets. The held-out rows are the
    first ``validation_size`` of a permutation drawn from ``seed``, so a given seed always
    holds out the same examples whatever else the run does.
    """
    n = len(train_x)
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise TypeError(f"validation_size must be a non-negative integer; got {validation_size!r}")
    if validation_size < 0:
        raise DatasetError(f"validation_size must be a non-negative integer; got {validation_size!r}")
    if validation_size >= n:
        raise DatasetError(f"validation_size={validation_size} leaves no training data: {name} has {n} training examples; pass a smaller validation_size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_idx, train_idx = perm[:validation_size], perm[validation_size:].sort().values  # keep file order in train

    def xs(a) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(torch.float32)

    def ys(a) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(a))
        if num_classes is not None:
            return t.to(torch.int64)
        t = t.to(torch.float32)
        return t.unsqueeze(1) if t.dim() == 1 else t

    all_x, all_y = xs(train_x), ys(train_y)
    tx, ty = all_x[train_idx], all_y[train_idx]
    vx, vy = all_x[val_idx], all_y[val_idx]
    sx, sy = xs(test_x), ys(test_y)
    if standardize:
        # Per feature, from the training split alone, so no statistic leaks from val/test.
        mean = tx.mean(0, keepdim=True)
        std = tx.std(0, keepdim=True)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features (MNIST's border) stay put
        tx, vx, sx = ((t - mean) / std for t in (tx, vx, sx))
    if flatten:
        tx, vx, sx = (t.reshape(len(t), int(np.prod(input_shape))) for t in (tx, vx, sx))
    else:
        tx, vx, sx = (t.reshape(len(t), *input_shape) for t in (tx, vx, sx))
    return DataSplits(name, tx.contiguous(), ty, vx.contiguous(), vy, sx.contiguous(), sy,
                      num_classes=num_classes, input_shape=tuple(input_shape))
