"""Angles between tensors, in degrees, that never crash on a zero vector."""
from __future__ import annotations

import math

import torch


def angle(u: torch.Tensor, v: torch.Tensor) -> tuple[float, str]:
    """Angle in degrees between ``u`` and ``v`` flattened, and "" or why it is NaN.

    Uses ``2 atan2(|u/|u| - v/|v||, |u/|u| + v/|v||)`` (Kahan), which is accurate
    near 0 and 180 degrees where ``acos`` of the cosine is not (identical vectors give
    exactly 0), even in float32: so it runs in the tensors' own dtype, with no copy
    to float64 (the training-time probe's cost is mostly these reductions).
    """
    u = u.detach().reshape(-1)
    v = v.detach().reshape(-1).to(u.dtype)
    if u.numel() != v.numel():
        raise ValueError(f"angle between tensors of {u.numel()} and {v.numel()} elements")
    nu, nv = u.norm(), v.norm()
    if not (torch.isfinite(nu) and torch.isfinite(nv)):
        return math.nan, "non-finite values"
    if nu == 0 or nv == 0:
        return math.nan, "zero vector" if (nu == 0) == (nv == 0) else ("first vector is zero" if nu == 0 else
                                                                         "second vector is zero")
    u, v = u / nu, v / nv
    return math.degrees(2.0 * math.atan2((u - v).norm().item(), (u + v).norm().item())), ""


def row_angles(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between matching rows of ``u`` and ``v``, both (N, D); NaN where either row is zero."""
    u, v = u.detach(), v.detach().to(u.dtype)
    nu, nv = u.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
    valid = ((nu > 0) & (nv > 0)).squeeze(1)
    u, v = u / nu.clamp_min(torch.finfo(u.dtype).tiny), v / nv.clamp_min(torch.finfo(v.dtype).tiny)
    degrees = torch.rad2deg(2.0 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1)))
    return torch.where(valid, degrees, torch.full_like(degrees, math.nan))


def mean_row_angle(u: torch.Tensor, v: torch.Tensor) -> tuple[float, str]:
    """Mean over examples of the per-example angle; examples where either vector is zero are left out."""
    angles = row_angles(u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1))
    finite = angles[torch.isfinite(angles)]
    if finite.numel() == 0:
        return math.nan, "every example has a zero vector"
    return finite.mean().item(), ""
