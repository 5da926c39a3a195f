"""Feedback Alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276).

Backprop sends the error to a layer's input through the transpose of its forward
weights, ``delta_in = delta_out W`` (row vectors, ``W`` of shape (out, in)). FA sends
it through a fixed random matrix ``B`` of the same shape instead (the paper's
``delta h = B^T e``, its Eq. for the hidden update): ``delta_in = delta_out B``
(for ``nn.Conv2d`` a fixed feedback kernel, see :mod:`.layers`).
Weight and bias gradients are the ordinary ones, ``dW = delta_out^T x``, ``db = sum delta_out``.
"""
from __future__ import annotations

import torch

from .base import register
from .layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, random_feedback


class _FixedFeedback:
    """B is the fixed buffer ``feedback``, of ``weight``'s shape."""

    feedback: torch.Tensor

    def backward_weight(self) -> torch.Tensor:
        return self.feedback

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=fixed"


class FALinear(_FixedFeedback, FeedbackLinear):
    pass


class FAConv2d(_FixedFeedback, FeedbackConv2d):
    pass


@register
class FeedbackAlignment(LayerwiseRule):
    """``fa``: every ``nn.Linear`` becomes a :class:`FALinear`, every ``nn.Conv2d`` a :class:`FAConv2d`.

    Default feedback: U[-1/sqrt(fan_in), 1/sqrt(fan_in)], the scale of the forward
    weights in Nøkland's code; ``feedback_scale`` overrides it.
    """

    name = "fa"
    linear_class, conv_class = FALinear, FAConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        layer.register_buffer("feedback", random_feedback(layer, generator=generator, feedback_init=feedback_init,
                                                          feedback_scale=feedback_scale))
