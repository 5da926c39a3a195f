"""One training step, the same in every loop that trains: the engine, population training,
``feedalign bench`` and ``bench --to-accuracy``.

A step is what the rule needs around the user's plain loop: its forward context (drtp captures the
target there), the forward pass, the loss, ``backward``, the optimizer step, and the rule's own phase
after it (wm's mirror). Each part is asked of the model's :class:`~feedalign.rules.LearningRule`; a
part the rule leaves at the default is skipped, so BP's step is the plain loop.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import learning_rule
from ..rules import LearningRule


class Step:
    """The training step of ``model`` under ``optimizer`` and ``loss_fn(output, targets)``.

    ``generator``: where the rule's after-step phase draws its noise (a CPU generator; for a model of
    stacked members, one per member). ``clip``: clip the gradients the rule left in ``.grad`` of the
    optimizer's parameters to this total 2-norm between backward and the optimizer step
    (``torch.nn.utils.clip_grad_norm_``); None: no clipping. Call it as ``step(x, y, n)`` (n: the optimizer steps taken so
    far plus one), or split in :meth:`forward` and :meth:`update` to look at the loss in between.
    """

    def __init__(self, model: nn.Module, optimizer, loss_fn, *, generator=None, clip: float | None = None):
        rule = learning_rule(model)
        self.model, self.optimizer, self.loss_fn, self.generator = model, optimizer, loss_fn, generator
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be a positive number or None, got {clip!r}")
        self.clip = clip
        self.clipped = ([p for group in optimizer.param_groups for p in group["params"]]
                        if clip is not None else [])
        kind = type(rule)
        self.context = None if kind.forward_context is LearningRule.forward_context else rule.forward_context
        self.after = None if kind.after_step is LearningRule.after_step else rule.after_step

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, loss)`` of a training forward pass on the batch ``(x, y)``."""
        if self.context is None:
            output = self.model(x)
        else:
            with self.context(self.model, y):
                output = self.model(x)
        return output, self.loss_fn(output, y)

    def update(self, loss: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> None:
        """Backward from ``loss``, the optimizer step, then the rule's after-step phase on ``batch``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.clip)
        self.optimizer.step()
        if self.after is not None:
            self.after(self.model, batch, step, generator=self.generator)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        output, loss = self.forward(x, y)
        self.update(loss, (x, y), step)
        return output, loss
