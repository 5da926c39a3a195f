"""Direct Feedback Alignment (Nøkland 2016, NeurIPS, Eq. 3 and Fig. 1c).

With ``e = dL/dy`` the gradient of the loss at the network output, every hidden
layer k receives ``e B_k`` in place of its backpropagated gradient, so its
pre-activation signal is ``delta a_k = (e B_k) * f'(a_k)`` (row vectors; the paper
writes ``(B_k e) ⊙ f'(a_k)`` with column vectors). ``B_k`` is fixed and random, of
shape (out_features, width_k). The output layer's gradients are the ordinary ones.

All ``B_k`` live side by side in one buffer ``feedback`` of shape
(out_features, sum of widths) on the model's root, so that every hidden signal
comes from ONE matmul ``e @ feedback``.
"""
from __future__ import annotations

import torch
from torch import nn

from . import fast
from ._cut import HiddenCut, find_cut
from .base import LearningRule, linear_layers, register, sample_feedback


class _DirectFeedback(torch.autograd.Function):
    """Identity on the output ``y``; backward sends ``e`` to ``y`` and ``e B_k`` to each hidden ``h_k``."""

    @staticmethod
    def forward(ctx, output, feedback, widths, *hidden):
        ctx.save_for_backward(feedback)
        ctx.widths = widths
        ctx.hidden_shapes = [h.shape for h in hidden]
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        (feedback,) = ctx.saved_tensors
        signals = error.reshape(-1, error.shape[-1]).mm(feedback).split(ctx.widths, dim=1)
        return (error, None, None, *(s.reshape(shape) for s, shape in zip(signals, ctx.hidden_shapes)))


def _attach(root, output, hidden, preactivations):
    if output.shape[-1] != root.feedback.shape[0]:
        raise ValueError(f"DFA feedback expects outputs of size {root.feedback.shape[0]}, got {output.shape[-1]}")
    return _DirectFeedback.apply(output, root.feedback, find_cut(root).widths, *hidden)


@register
class DirectFeedbackAlignment(LearningRule):
    """``dfa``. Default feedback: B_k ~ U[-1/sqrt(width_k), 1/sqrt(width_k)], as ``ErrorFeedback.lua``
    of Nøkland's code (anokland/dfa-torch); ``feedback_scale`` sets one scale for all layers."""

    name = "dfa"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        linears = linear_layers(model)
        cut = HiddenCut(model, linears, _attach)
        out_features = linears[-1].out_features
        blocks = [sample_feedback((out_features, width), fan=width, init=feedback_init, scale=feedback_scale,
                                  generator=generator, like=linears[-1].weight) for width in cut.widths]
        model.register_buffer("feedback", torch.cat(blocks, dim=1))
        model._feedalign_cut = cut
        fast.install(model, linears, self.name)
        return model

    def feedback_matrices(self, model: nn.Module) -> list[torch.Tensor]:
        """One B_k per hidden layer, forward order, each (out_features, width_k): views of ``model.feedback``."""
        return list(model.feedback.split(find_cut(model).widths, dim=1))
