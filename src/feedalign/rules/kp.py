"""Kolen-Pollack (Kolen & Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019,
NeurIPS, "Deep learning without weight transport", Eq. 4 and 5).

The error reaches a layer's input through a feedback matrix B of W's shape,
``delta_in = delta_out B`` (a kernel for Conv2d), and B *learns*: it receives the
same update as W, weight decay included,

    dW = -eta (delta_out^T x) - lambda W,      dB = -eta (delta_out^T x) - lambda B,

so ``B - W`` shrinks by ``(1 - lambda)`` every step and B converges to W without
ever reading it (the paper's B is our B transposed: ours maps delta_out to delta_in
by a right product).

Design: B is an ``nn.Parameter`` named ``feedback`` on each layer, and the backward
pass gives it W's gradient as its own ``.grad``. The user's loop is unchanged,
``loss.backward(); optimizer.step()``, and the optimizer does not need to know: built
on ``model.parameters()`` *after* ``convert`` it holds every B, and applies to B the
same learning rate, momentum and weight decay it applies to W. With plain SGD (any
momentum, L2 weight decay) this is exactly Kolen-Pollack: the gradients are
identical, so ``B - W`` decays geometrically. With adaptive optimizers (Adam) the
decay terms differ (lambda B vs lambda W) and the updates are close but not equal;
AdamW's decoupled decay again shrinks ``B - W`` each step. Without weight decay
``B - W`` stays constant: the alignment comes from the decay. Excluding
``feedback`` from the optimizer (or freezing it) gives FA with a trained-never B.
Under :func:`feedalign.exact_gradients` B receives no gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import register
from .layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, random_feedback


class _KolenPollack:
    """B is the Parameter ``feedback``; it gets W's gradient."""

    feedback: nn.Parameter

    def backward_weight(self) -> torch.Tensor:
        return self.feedback.detach()

    def trained_feedback(self) -> torch.Tensor:
        return self.feedback

    def feedback_matrix(self) -> torch.Tensor:
        return self.feedback  # the Parameter itself

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=learnt (Kolen-Pollack)"


class KPLinear(_KolenPollack, FeedbackLinear):
    pass


class KPConv2d(_KolenPollack, FeedbackConv2d):
    pass


@register
class KolenPollack(LayerwiseRule):
    """``kp``: B starts as FA's (U[-1/sqrt(fan_in), 1/sqrt(fan_in)]) and is trained by the
    user's optimizer with W's gradient. Build the optimizer after ``convert``."""

    name = "kp"
    linear_class, conv_class = KPLinear, KPConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        initial = random_feedback(layer, generator=generator, feedback_init=feedback_init,
                                  feedback_scale=feedback_scale)
        layer.feedback = nn.Parameter(initial, requires_grad=layer.weight.requires_grad)
