"""Feedback Alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276).

Backprop sends the error to a layer's input through the transpose of its forward
weights, ``delta_in = delta_out W`` (row vectors, ``W`` of shape (out, in)). FA sends
it through a fixed random matrix ``B`` of the same shape instead (the paper's
``delta h = B^T e``, its Eq. for the hidden update): ``delta_in = delta_out B``.
Weight and bias gradients are the ordinary ones, ``dW = delta_out^T x``, ``db = sum delta_out``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from .base import LearningRule, linear_layers, register, sample_feedback
from .conv import FAConv2d


class _FALinearFunction(torch.autograd.Function):
    """y = x W^T + b forward; backward sends grad_y @ B (not grad_y @ W) to x."""

    @staticmethod
    def forward(ctx, input, weight, bias, feedback):
        ctx.save_for_backward(input, feedback)
        ctx.has_bias = bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, feedback = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output.matmul(feedback)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad.t().mm(input.reshape(-1, input.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_input, grad_weight, grad_bias, None


class FALinear(nn.Linear):
    """``nn.Linear`` whose backward uses the fixed buffer ``feedback`` (shape of ``weight``)."""

    feedback: torch.Tensor
    exact_gradient = False  # set by feedalign.exact_gradients(): backward through W, for diagnostics

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("feedback", torch.zeros_like(self.weight))

    @classmethod
    def from_linear(cls, linear: nn.Linear, feedback: torch.Tensor) -> "FALinear":
        """A FALinear sharing ``linear``'s parameters (so optimizers made before still work)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.register_buffer("feedback", feedback)
        layer.train(linear.training)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.exact_gradient or not torch.is_grad_enabled():
            return F.linear(input, self.weight, self.bias)
        return _FALinearFunction.apply(input, self.weight, self.bias, self.feedback)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=fixed"


@register
class FeedbackAlignment(LearningRule):
    """``fa``: every ``nn.Linear`` becomes a :class:`FALinear`, every ``nn.Conv2d`` a
    :class:`~feedalign.rules.conv.FAConv2d` (a fixed feedback kernel of the weight's shape).

    Default feedback: U[-1/sqrt(in_features), 1/sqrt(in_features)], the scale of the
    forward weights in Nøkland's code; ``feedback_scale`` overrides it.
    """

    name = "fa"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        if isinstance(model, (nn.Linear, nn.Conv2d)):
            return self._swap(model, generator, feedback_init, feedback_scale)
        swapped = {}  # a layer used in two places stays one layer
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, (nn.Linear, nn.Conv2d)):
                    if id(child) not in swapped:
                        swapped[id(child)] = self._swap(child, generator, feedback_init, feedback_scale)
                    setattr(parent, child_name, swapped[id(child)])
        fast.install(model, linear_layers(model), self.name)
        return model

    @staticmethod
    def _swap(linear, generator, feedback_init, feedback_scale):
        fan = linear.weight[0].numel()  # in_features; (in_channels / groups) * kh * kw for a Conv2d
        feedback = sample_feedback(tuple(linear.weight.shape), fan=fan, init=feedback_init,
                                   scale=feedback_scale, generator=generator, like=linear.weight)
        if isinstance(linear, nn.Conv2d):
            return FAConv2d.from_conv(linear, feedback)
        return FALinear.from_linear(linear, feedback)

    def feedback_matrices(self, model):
        """One matrix per Linear or Conv2d layer, forward order, each of its weight's shape."""
        return [layer.feedback for layer in model.modules() if isinstance(layer, (nn.Linear, nn.Conv2d))]
