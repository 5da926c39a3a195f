"""How the rules that learn from the target (drtp, pepita, chl, ff, np and wp) take it.

Two ways, both keeping ``loss.backward(); optimizer.step()``:

- given for the forward pass: ``with feedalign.rules.RULE.target(model, y): loss = criterion(model(x), y)``
  (:func:`holding`); ``y`` class indices (N,) or rows of the output's shape (:func:`as_rows`);
- recovered from the output error when the loss is a mean-reduced softmax cross-entropy: ``dL/dy =
  (softmax(y) - t) / N``, so ``t = softmax(y) - N e`` exactly (:func:`recover`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def recover(output: torch.Tensor, error: torch.Tensor, rows: int | None = None, *, rule: str = "drtp",
            what: str = "a target") -> torch.Tensor:
    """``t = softmax(y) - N e``, the target of a mean-reduced softmax cross-entropy; checked to be a
    distribution (else a ValueError naming ``rule``). ``N`` is ``rows`` (the batch of one member of
    stacked models, each with its own mean), else every row of ``y``; ``t`` then has the shape of
    ``error``, else (rows, out)."""
    if rows is not None:
        flat_y, flat_e, n = output, error, rows
    else:
        flat_y, flat_e = output.reshape(-1, output.shape[-1]), error.reshape(-1, error.shape[-1])
        n = flat_y.shape[0]
    t = torch.softmax(flat_y.to(flat_e.dtype), dim=-1) - flat_e * n
    tolerance = 1e-3 if t.dtype in (torch.float32, torch.float64) else 2e-2
    bounds = torch.aminmax(t) if t.numel() else None  # one kernel, not four: a check at every step
    if bounds is not None and not (float(bounds.min) > -tolerance and float(bounds.max) < 1 + tolerance):
        module = "energy" if rule == "chl" else rule
        them = "them" if what.startswith("the labels") else "it"
        raise ValueError(f"{rule} could not recover {what} from the output error: the loss is not a mean-reduced "
                         f"softmax cross-entropy of the model output. Give {them} explicitly: "
                         f"`with feedalign.rules.{module}.target(model, y): loss = ...`")
    return t


def as_rows(target: torch.Tensor, shape: torch.Size, dtype: torch.dtype, *, rule: str) -> torch.Tensor:
    """``target`` (class indices of shape ``shape[:-1]``, or of the output's ``shape``) as (rows, classes)
    of ``dtype``: one-hot rows for class indices, the target itself (detached) otherwise."""
    classes = shape[-1]
    if not target.is_floating_point():
        if target.shape != shape[:-1]:
            raise ValueError(f"{rule} target of class indices must have shape {tuple(shape[:-1])}, "
                             f"got {tuple(target.shape)}")
        low, high = (int(b) for b in torch.aminmax(target)) if target.numel() else (0, 0)  # one kernel a step
        if low < 0 or high >= classes:
            raise ValueError(f"{rule} target must hold class indices in [0, {classes}), got values from "
                             f"{low} to {high}")
        return F.one_hot(target.long(), classes).reshape(-1, classes).to(dtype)
    if target.shape != shape:
        raise ValueError(f"{rule} target must be class indices or of the output's shape {tuple(shape)}, "
                         f"got {tuple(target.shape)}")
    return target.detach().reshape(-1, classes).to(dtype)


@contextlib.contextmanager
def holding(state, attribute: str, y, *, rule: str):
    """Within this block ``state.<attribute>`` is ``y`` (a tensor, else a TypeError naming ``rule``); the
    previous value comes back on exit, so blocks nest and an exception leaves nothing behind."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{rule} target must be a tensor, got {type(y).__name__}")
    previous = getattr(state, attribute, None)
    setattr(state, attribute, y)
    try:
        yield
    finally:
        setattr(state, attribute, previous)
