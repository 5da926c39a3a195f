"""Backpropagation: the exact gradient, the baseline every other rule is compared with."""
from __future__ import annotations

import torch

from . import fused
from .base import LearningRule, register


class BackpropSignals(fused.StackedSignals):
    """Backprop on the fused runner, ``delta_l = (delta_{l+1} W_{l+1}) * f'(a_l)``: what trains stacked
    members of a ``bp`` model (a single ``bp`` model keeps plain autograd, the reference every rule
    is timed against)."""

    def signals(self, step, error, inputs):
        deltas, outs = step.empty()
        signal = error
        for l in reversed(range(len(outs))):
            torch.matmul(signal, step.weights[l + 1], out=outs[l])
            step.times_derivative(l, outs[l], outs[l])
            signal = outs[l]
        return deltas


@register
class Backprop(LearningRule):
    """``bp``: the model is left as it is; autograd computes the true gradient. No feedback matrices."""

    name = "bp"
    exact = True
    needs_layers_as_modules = False

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        return model

    def fused_signals(self):
        return BackpropSignals()
