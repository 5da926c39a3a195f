"""Backpropagation: the exact gradient, the baseline every other rule is compared with."""
from __future__ import annotations

from .base import LearningRule, register


@register
class Backprop(LearningRule):
    """``bp``: the model is left as it is; autograd computes the true gradient. No feedback matrices."""

    name = "bp"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        return model
