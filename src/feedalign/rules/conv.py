"""Convolutions for the feedback rules: ``nn.Conv2d`` with a feedback kernel.

A convolution is a linear map ``a = W * x`` (cross-correlation); backprop sends the
output gradient to the input through its adjoint, the transposed convolution with
the same kernel ``W``: ``delta_x = conv_transpose(delta_a, W)``. The FA-type rules
(Lillicrap et al. 2016; for convolutions e.g. Moskovitz, Litwin-Kumar & Abbott 2018,
Liao, Leibo & Poggio 2016) send it through a *feedback kernel* ``B`` of the same
shape (out_channels, in_channels / groups, kh, kw) instead:
``delta_x = conv_transpose(delta_a, B)``, computed by
``torch.nn.grad.conv2d_input`` with the layer's stride, padding, dilation and groups.
The kernel and bias gradients are the ordinary ones (``conv2d_weight``, sum over
batch and positions).

:class:`FeedbackConv2d` asks :meth:`FeedbackConv2d.backward_weight` for ``B`` *at
backward time*, so rules whose feedback follows ``W`` (sign-symmetry) see the
current ``W``. :class:`FAConv2d` is the fixed-random-kernel case (``fa``).
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn


def conv_arguments(conv: nn.Conv2d) -> tuple:
    """``(stride, padding, dilation, groups)`` of ``conv``, with padding as ints.

    ``padding="valid"`` is 0; ``padding="same"`` is accepted where it is symmetric
    (odd effective kernel). Other padding modes than ``"zeros"`` are refused.
    """
    if conv.padding_mode != "zeros":
        raise ValueError(f"feedback convolutions support padding_mode='zeros' only, got {conv.padding_mode!r}")
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same"
            total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            if any(t % 2 for t in total):
                raise ValueError(f"padding='same' with an even effective kernel {conv.kernel_size} is asymmetric; "
                                 "pad explicitly (e.g. nn.ZeroPad2d) instead")
            padding = tuple(t // 2 for t in total)
    return tuple(conv.stride), tuple(padding), tuple(conv.dilation), conv.groups


class _FeedbackConv2dFunction(torch.autograd.Function):
    """``a = conv2d(x, W) + b`` forward; backward sends ``delta_a`` to ``x`` through the kernel ``B``.

    ``delta_x = conv2d_input(x.shape, B, delta_a)`` (the transposed convolution with
    ``B``; with ``B = W`` it is backprop), ``dW = conv2d_weight(x, W.shape, delta_a)``,
    ``db = sum over n, i, j of delta_a``. ``B = layer.backward_weight()`` is asked for
    in backward. If ``trained_feedback`` (a tensor that requires grad, Kolen-Pollack)
    is given, it receives ``dW`` as its gradient.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, trained_feedback, layer, arguments):
        ctx.save_for_backward(input)
        ctx.layer, ctx.arguments, ctx.has_bias = layer, arguments, bias is not None
        ctx.weight_shape = weight.shape
        stride, padding, dilation, groups = arguments
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.arguments
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            with torch.no_grad():
                feedback = ctx.layer.backward_weight()
            grad_input = torch.nn.grad.conv2d_input(input.shape, feedback.to(grad_output.dtype), grad_output,
                                                    stride, padding, dilation, groups)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_weight = torch.nn.grad.conv2d_weight(input, ctx.weight_shape, grad_output,
                                                      stride, padding, dilation, groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        grad_feedback = grad_weight if ctx.needs_input_grad[3] else None
        if not ctx.needs_input_grad[1]:
            grad_weight = None
        return grad_input, grad_weight, grad_bias, grad_feedback, None, None


def adopt(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance with ``module``'s state: the very same parameters, buffers and settings."""
    layer = cls.__new__(cls)
    for key, value in module.__dict__.items():
        layer.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
    return layer


class FeedbackLayer(abc.ABC):
    """What :class:`FeedbackConv2d` and ``FeedbackLinear`` share: the rule supplies ``B`` at backward time.

    ``exact_gradient = True`` (see :func:`feedalign.exact_gradients`) gives backprop.
    """

    exact_gradient = False

    @abc.abstractmethod
    def backward_weight(self) -> torch.Tensor:
        """``B``, of ``weight``'s shape, that carries the output gradient to the input."""

    def trained_feedback(self) -> torch.Tensor | None:
        """A feedback tensor that should receive the weight's gradient (Kolen-Pollack), else None."""
        return None


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    """``nn.Conv2d`` whose input gradient goes through :meth:`backward_weight` instead of ``weight``."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "FeedbackConv2d":
        """A layer of this class sharing ``conv``'s parameters (optimizers made before keep working)."""
        conv_arguments(conv)  # validate padding early
        return adopt(cls, conv)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.exact_gradient or not torch.is_grad_enabled():
            return super().forward(input)
        return _FeedbackConv2dFunction.apply(input, self.weight, self.bias, self.trained_feedback(), self,
                                             conv_arguments(self))


class FAConv2d(FeedbackConv2d):
    """``nn.Conv2d`` whose backward uses the fixed buffer ``feedback`` (shape of ``weight``): rule ``fa``."""

    feedback: torch.Tensor

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, feedback: torch.Tensor | None = None) -> "FAConv2d":
        layer = super().from_conv(conv)
        layer.register_buffer("feedback", torch.zeros_like(conv.weight) if feedback is None else feedback)
        return layer

    def backward_weight(self) -> torch.Tensor:
        return self.feedback

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=fixed"
