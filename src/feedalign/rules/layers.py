"""The feedback layers of the FA-type rules (``fa``, ``usf``, ``brsf``, ``frsf``, ``kp``, ``wm``).

These rules keep the forward pass and the weight gradient of a layer and change only
the matrix that carries the error to its input. Backprop sends it through the forward
weights; an FA-type rule through a *feedback matrix* ``B`` of ``W``'s shape:

- ``nn.Linear``: ``delta_in = delta_out B`` (row vectors, ``B`` of shape (out, in);
  backprop has ``B = W``).
- ``nn.Conv2d``: a convolution is a linear map ``a = W * x`` (cross-correlation) whose
  adjoint is the transposed convolution with the same kernel; the rule sends
  ``delta_x = conv_transpose(delta_a, B)`` with a *feedback kernel* ``B`` of shape
  (out_channels, in_channels / groups, kh, kw) (for convolutions e.g. Moskovitz,
  Litwin-Kumar & Abbott 2018, Liao, Leibo & Poggio 2016), computed by
  ``torch.nn.grad.conv2d_input`` with the layer's stride, padding, dilation and groups.

Weight and bias gradients are the ordinary ones. The rules differ only in what ``B``
is, so each is a small mixin implementing :meth:`FeedbackLayer.backward_weight`, put in
front of :class:`FeedbackLinear` and :class:`FeedbackConv2d`, and a
:class:`LayerwiseRule` that swaps a model's layers for them. ``B`` is asked for *at
backward time*, so rules whose feedback follows ``W`` (sign-symmetry) see the current ``W``.
"""
from __future__ import annotations

import abc
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .base import TRAINABLE, FeedbackRole, LearningRule, sample_feedback, trainable_layers


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear or Conv2d weight, as ``torch.nn.init`` counts them."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


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


def adopt(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance with ``module``'s state: the very same parameters, buffers and settings."""
    layer = cls.__new__(cls)
    for key, value in module.__dict__.items():
        layer.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
    return layer


class FeedbackLayer(abc.ABC):
    """What :class:`FeedbackLinear` and :class:`FeedbackConv2d` share: the rule supplies ``B`` at backward time.

    ``exact_gradient = True`` (see :func:`feedalign.exact_gradients`) gives backprop.
    """

    exact_gradient = False

    @abc.abstractmethod
    def backward_weight(self) -> torch.Tensor:
        """``B``, of ``weight``'s shape, that carries the output gradient to the input (called once per backward)."""

    def feedback_matrix(self) -> torch.Tensor:
        """The ``B`` the next backward pass will use, for inspection; unlike :meth:`backward_weight`
        it must not change the layer's state (brsf counts its draws there)."""
        return self.backward_weight()

    def scaled_backward_weight(self) -> tuple[torch.Tensor, float]:
        """``(M, s)`` with ``B = s M``, in place of :meth:`backward_weight` on the fused path, which folds
        ``s`` into its matmul (the GEMM's alpha) instead of a pass over ``B``. Default ``(B, 1.0)``."""
        return self.backward_weight(), 1.0

    def trained_feedback(self) -> torch.Tensor | None:
        """A feedback tensor that should receive the weight's gradient (Kolen-Pollack), else None."""
        return None


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


class LayerwiseSignals(fused.StackedSignals):
    """The fused path of every FA-type rule: ``delta_l = s_{l+1} (delta_{l+1} M_{l+1}) * f'(a_l)`` with
    ``B = s M`` each layer's :meth:`FeedbackLayer.scaled_backward_weight`, asked for at backward time as
    the general path asks for ``B``; the input gradient through ``B_1``, and a trained B (kp) given
    ``dW`` as its gradient."""

    def inputs(self, plan, input):
        return [t for t in (layer.trained_feedback() for layer in plan.linears) if t is not None]

    def signals(self, step, error, inputs):
        deltas, outs = step.empty()
        signal = error
        for l in reversed(range(len(outs))):
            feedback, scale = step.plan.linears[l + 1].scaled_backward_weight()
            fused.scaled_matmul(signal, feedback, scale, outs[l])
            step.times_derivative(l, outs[l], outs[l])
            signal = outs[l]
        return deltas

    def one_hidden(self, inputs):
        return True  # a trained feedback (kp) gets its gradient from input_grads there too

    def one_hidden_matrix(self, plan, inputs):
        return plan.linears[1].scaled_backward_weight()

    def input_matrix(self, step, inputs):
        return step.plan.linears[0].backward_weight()

    def input_grads(self, plan, grad_weights, inputs):
        return [g for layer, g in zip(plan.linears, grad_weights) if layer.trained_feedback() is not None]


def swap_layers(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every Linear/Conv2d of ``model`` (the root included) by ``make(layer)``, in forward order.

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


def random_feedback(layer: nn.Module, *, generator: torch.Generator, feedback_init: str,
                    feedback_scale: float | None) -> torch.Tensor:
    """A fixed random ``B`` of ``layer.weight``'s shape; default scale ``1/sqrt(fan_in)``
    (``in_features``; ``(in_channels / groups) * kh * kw`` for a Conv2d), as Nøkland's code."""
    return sample_feedback(tuple(layer.weight.shape), fan=layer.weight[0].numel(), init=feedback_init,
                           scale=feedback_scale, generator=generator, like=layer.weight)


class LayerwiseRule(LearningRule):
    """An FA-type rule: every Linear/Conv2d becomes ``linear_class``/``conv_class`` (a mixin on
    :class:`FeedbackLinear`/:class:`FeedbackConv2d`), whose feedback state :meth:`init_layer` sets up.

    A new FA-type rule is then a mixin with ``backward_weight``, its two layer classes, and
    a subclass of this with ``name``, the classes and ``init_layer``.
    """

    linear_class: ClassVar[type]
    conv_class: ClassVar[type]
    needs_layers_as_modules = False

    @abc.abstractmethod
    def init_layer(self, layer: FeedbackLayer, *, generator: torch.Generator, feedback_init: str,
                   feedback_scale: float | None) -> None:
        """Give the freshly swapped ``layer`` its feedback state (buffers, parameters, scales)."""

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        def make(layer):
            new = (self.linear_class.from_linear(layer) if isinstance(layer, nn.Linear)
                   else self.conv_class.from_conv(layer))
            self.init_layer(new, generator=generator, feedback_init=feedback_init, feedback_scale=feedback_scale)
            return new
        model = swap_layers(model, make)
        fused.install(model, trainable_layers(model), self.fused_signals())
        return model

    def fused_signals(self):
        return LayerwiseSignals()

    def feedback_matrices(self, model):
        """Each layer's B (weight-shaped, the one its next backward pass uses), forward order."""
        return [layer.feedback_matrix() for layer in trainable_layers(model)]

    def feedback_layout(self, model):
        """Layer k's B stands in for ``W_k``."""
        return [FeedbackRole(b.detach(), (k,)) for k, b in enumerate(self.feedback_matrices(model))]
