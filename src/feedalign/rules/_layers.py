"""Layers whose backward asks for its feedback matrix, shared by the FA-type rules.

``usf``, ``brsf``, ``frsf``, ``kp`` and ``wm`` all keep the forward pass and the
weight gradient of a layer and change only the matrix that carries the error to
its input: ``delta_in = delta_out B`` for ``nn.Linear`` (``B`` of shape (out, in),
backprop has ``B = W``), the transposed convolution with ``B`` for ``nn.Conv2d``
(:mod:`feedalign.rules.conv`). They differ in what ``B`` is, so each rule is a
mixin that implements ``backward_weight()`` on top of :class:`FeedbackLinear` and
:class:`~feedalign.rules.conv.FeedbackConv2d`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .conv import FeedbackConv2d, FeedbackLayer, adopt, conv_arguments

TRAINABLE = (nn.Linear, nn.Conv2d)


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` in registration (taken as forward) order."""
    return [module for module in model.modules() if isinstance(module, TRAINABLE)]


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear or Conv2d weight, as ``torch.nn.init`` counts them."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


def swap_layers(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every Linear/Conv2d of ``model`` (the root included) by ``make(layer)``.

    A layer used in two places stays one layer. Returns the (possibly new) root.
    """
    if isinstance(model, TRAINABLE):
        return make(model)
    swapped = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TRAINABLE):
                if id(child) not in swapped:
                    swapped[id(child)] = make(child)
                setattr(parent, name, swapped[id(child)])
    return model


class _FeedbackLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` forward; backward sends ``delta_y B`` (not ``delta_y W``) to ``x``.

    ``dW = delta_y^T x``, ``db = sum_n delta_y``. ``B = layer.backward_weight()`` is
    asked for in backward, so it sees the weights as they are then. If
    ``trained_feedback`` (a tensor that requires grad, Kolen-Pollack) is given, it
    receives ``dW`` as its gradient.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, trained_feedback, layer):
        ctx.save_for_backward(input)
        ctx.layer, ctx.has_bias = layer, bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            with torch.no_grad():
                feedback = ctx.layer.backward_weight()
            grad_input = grad_output.matmul(feedback.to(grad_output.dtype))
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_weight = flat_grad.t().mm(input.reshape(-1, input.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        grad_feedback = grad_weight if ctx.needs_input_grad[3] else None
        if not ctx.needs_input_grad[1]:
            grad_weight = None
        return grad_input, grad_weight, grad_bias, grad_feedback, None


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose input gradient goes through :meth:`backward_weight` instead of ``weight``."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FeedbackLinear":
        """A layer of this class sharing ``linear``'s parameters (optimizers made before keep working)."""
        return adopt(cls, linear)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.exact_gradient or not torch.is_grad_enabled():
            return F.linear(input, self.weight, self.bias)
        return _FeedbackLinearFunction.apply(input, self.weight, self.bias, self.trained_feedback(), self)


def adopt_layer(layer: nn.Module, linear_class: type, conv_class: type) -> nn.Module:
    """``layer`` as ``linear_class`` or ``conv_class``, sharing its parameters."""
    if isinstance(layer, nn.Linear):
        return linear_class.from_linear(layer)
    conv_arguments(layer)
    return conv_class.from_conv(layer)


__all__ = ["FeedbackConv2d", "FeedbackLinear", "adopt_layer", "fans", "swap_layers", "trainable_layers"]
