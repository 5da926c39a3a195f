"""Indirect Feedback Alignment (Nøkland 2016, NeurIPS, Fig. 1d).

The output error reaches the first hidden layer through one fixed random matrix
B_1 of shape (out_features, width_1): ``delta a_1 = (e B_1) * f'(a_1)``. Each higher
hidden layer gets its signal by sending the one below forward through the forward
weights: ``delta a_k = (delta a_{k-1} W_k^T) * f'(a_k)`` (row vectors, ``W_k`` of shape
(width_k, width_{k-1})). The output layer's gradients are the ordinary ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from ..models.sequence import has_sequence_modules
from ._cut import HiddenCut, find_cut
from .base import FeedbackRole, LearningRule, forward_flops, register, sample_feedback, trainable_layers


class _IndirectFeedback(torch.autograd.Function):
    """Identity on ``y``; backward sends ``e`` to ``y`` and the IFA signal ``g_k`` to each hidden ``h_k``.

    ``g_1 = e B_1`` and ``g_k = delta a_{k-1} W_k^T``. The factor ``f'(a_k)`` is applied by
    autograd on the way from ``h_k`` to ``a_k`` (once inside this backward, to get the
    ``delta a_{k-1}`` the next layer needs, and once by the engine afterwards).
    """

    @staticmethod
    def forward(ctx, output, feedback, n_hidden, *tensors):
        hidden, preactivations, weights = tensors[:n_hidden], tensors[n_hidden:2 * n_hidden], tensors[2 * n_hidden:]
        ctx.save_for_backward(feedback, *weights)
        ctx.graph = (hidden, preactivations)  # kept with their autograd history for f'(a_k)
        ctx.n_tensors = len(tensors)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        feedback, *weights = ctx.saved_tensors
        hidden, preactivations = ctx.graph
        signal = error.reshape(-1, error.shape[-1]).mm(feedback).reshape(hidden[0].shape)
        signals = [signal]
        for k, weight in enumerate(weights):  # weight of linear k+2, mapping h_{k+1} to a_{k+2}
            (delta,) = torch.autograd.grad(hidden[k], preactivations[k], signal, retain_graph=True)
            signal = F.linear(delta, weight)
            signals.append(signal)
        ctx.graph = None
        padding = [None] * (ctx.n_tensors - len(signals))
        return (error, None, None, *signals, *padding)


class _IndirectSignals(fused.StackedSignals):
    """The fused path: ``delta_1 = (e B_1) * D_1``, then ``delta_l = (delta_{l-1} W_l^T) * D_l`` layer by layer."""

    def inputs(self, plan, input):
        feedback = plan.root.feedback
        if feedback.shape[-2] != plan.linears[-1].out_features:
            raise ValueError(f"IFA feedback expects outputs of size {feedback.shape[-2]}, "
                             f"got {plan.linears[-1].out_features}")
        return [feedback]

    def one_hidden(self, inputs):
        return True  # one hidden layer: delta_1 = (e B_1) * f'(a_1), as DFA

    def one_hidden_matrix(self, plan, inputs):
        return inputs[0], 1.0

    def signals(self, step, error, inputs):
        (feedback,) = inputs
        deltas, outs = step.empty()
        grad = torch.matmul(error, feedback)
        for l in range(len(outs)):
            if l > 0:
                grad = torch.matmul(outs[l - 1], step.weights[l].mT, out=outs[l])
            step.times_derivative(l, grad, outs[l])
        return deltas


def _attach(root, output, hidden, preactivations):
    cut = find_cut(root)
    weights = [layer.weight for layer in cut.linears[1:-1]]
    return _IndirectFeedback.apply(output, root.feedback, len(hidden), *hidden, *preactivations, *weights)


@register
class IndirectFeedbackAlignment(LearningRule):
    """``ifa``. Default feedback: B_1 ~ U[-1/sqrt(width_1), 1/sqrt(width_1)], as for DFA."""

    name = "ifa"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ValueError("ifa supports nn.Linear layers only: its signal goes forward through W_k, which "
                             "is not defined across pooling and flattening; use fa, dfa or drtp for Conv2d models")
        if has_sequence_modules(model):
            raise ValueError("ifa does not support attention or recurrent modules: its signal goes forward through "
                             "a chain of layers, which they are not; use fa, usf, brsf, frsf, kp, wm, or dfa/drtp "
                             "with taps")
        linears = trainable_layers(model)
        cut = HiddenCut(model, linears, _attach, record_preactivations=True)
        width = cut.widths[0]
        model.register_buffer("feedback", sample_feedback(
            (linears[-1].out_features, width), fan=width, init=feedback_init, scale=feedback_scale,
            generator=generator, like=linears[-1].weight))
        model._feedalign_cut = cut
        fused.install(model, linears, self.fused_signals())
        return model

    def fused_signals(self):
        return _IndirectSignals()

    def feedback_matrices(self, model: nn.Module) -> list[torch.Tensor]:
        """``[B_1]``, of shape (out_features, width_1): the first hidden layer's signal is ``e @ B_1``."""
        find_cut(model)
        return [model.feedback]

    def feedback_layout(self, model):
        """B_1 stands in for ``W_L ... W_2``, the linear path from h_1 to the output; the layers above
        have no feedback matrix."""
        n = len(trainable_layers(model))
        return ([FeedbackRole(model.feedback, tuple(range(1, n)))]
                + [FeedbackRole(None, reason="IFA sends the signal up through W")] * (n - 2)
                + [FeedbackRole(None, reason="output layer")])

    def step_flops(self, widths, batch):
        """Forward, every weight gradient, ``e @ B_1``, and the forward product of each hidden-to-hidden layer."""
        macs = [i * o for i, o in zip(widths[:-1], widths[1:])]
        return float(2 * forward_flops(widths, batch) + 2 * batch * (widths[-1] * widths[1] + sum(macs[1:-1])))
