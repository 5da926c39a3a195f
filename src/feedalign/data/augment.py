"""Image preprocessing on tensors: per-channel normalisation and random crop + flip, the CIFAR-10 recipe.

The usual CIFAR-10 training pipeline (He et al. 2016, Sec. 4.2; BioTorch's ``CIFAR10Benchmark``):
normalise each channel by its mean and standard deviation, and on the training split pad each
image by 4 pixels, take a random 32x32 crop and flip it horizontally with probability 1/2. Here
this runs on whole batches of tensors (on their device) in one gather, with the randomness from
a ``torch.Generator`` the caller seeds, so a resumed run replays its epochs exactly.
"""
from __future__ import annotations

import torch

from .splits import DataSplits


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` of images ``x`` (N, C, H, W), each of shape (C,)."""
    if x.dim() != 4:
        raise ValueError(f"channel statistics need images (N, C, H, W), got shape {tuple(x.shape)}")
    return x.mean((0, 2, 3)), x.std((0, 2, 3))


def normalize_channels(data: DataSplits) -> DataSplits:
    """``data`` with every split's images ``(x - mean_c) / std_c`` by the training split's per-channel statistics
    (nothing leaks from validation or test). Sets ``data.pad_value`` to where a black pixel (0) lands, (C,)."""
    mean, std = channel_statistics(data.train_x)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    scale = (lambda t: (t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    data.train_x, data.val_x, data.test_x = scale(data.train_x), scale(data.val_x), scale(data.test_x)
    data.pad_value = -mean / std
    return data


def random_crop_flip(x: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None,
                     pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """A random crop of each image of ``x`` (N, C, H, W) padded by ``padding``, flipped left-right half the time.

    Each example draws its offsets ``(dy, dx)`` uniformly in ``[0, 2 * padding]`` and its flip from ``generator``
    (on the CPU, so a seed gives the same batch on every device): ``out[n, c, i, j] = p[n, c, dy + i, dx + j']``
    with ``p`` the padded image and ``j' = W - 1 - j`` when flipped. ``pad_value`` (C,) fills the border per channel
    (the value of a black pixel after normalisation); 0 by default. Returns a new (N, C, H, W) tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip needs images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    if pad_value is not None:  # fill the border channel by channel
        border = torch.ones(1, 1, h + 2 * padding, w + 2 * padding, dtype=torch.bool, device=x.device)
        border[..., padding:padding + h, padding:padding + w] = False
        padded = torch.where(border, pad_value.to(x).view(1, c, 1, 1), padded)
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[1][:, None]          # (N, W)
    rows = torch.arange(h, device=x.device) + offsets[0][:, None]                          # (N, H)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
