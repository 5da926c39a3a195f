"""An FA-type rule that lives in the test suite only: FA with sparse feedback.

It is what adding an FA-type rule takes: one file with a mixin that supplies ``B`` over
the shared feedback layers, and a registered :class:`LearningRule`. The ``sample_rule``
fixture (conftest.py) registers it for one test at a time; test_contract.py runs the
whole contract suite on it with the default contract.
"""
from __future__ import annotations

import torch

from feedalign.rules import LearningRule
from feedalign.rules._layers import FeedbackConv2d, FeedbackLinear, adopt_layer, swap_layers, trainable_layers
from feedalign.rules.base import sample_feedback

NAME = "sparse-fa"


class _SparseFeedback:
    """B is the fixed buffer ``feedback``: FA's random matrix with about half its entries zeroed."""

    feedback: torch.Tensor

    def backward_weight(self) -> torch.Tensor:
        return self.feedback


class SparseFALinear(_SparseFeedback, FeedbackLinear):
    pass


class SparseFAConv2d(_SparseFeedback, FeedbackConv2d):
    pass


class SparseFeedbackAlignment(LearningRule):
    name = NAME

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        def make(layer):
            new = adopt_layer(layer, SparseFALinear, SparseFAConv2d)
            shape = tuple(layer.weight.shape)
            b = sample_feedback(shape, fan=layer.weight[0].numel(), init=feedback_init, scale=feedback_scale,
                                generator=generator, like=layer.weight)
            keep = (torch.rand(shape, generator=generator) < 0.5).to(b)
            new.register_buffer("feedback", b * keep)
            return new
        return swap_layers(model, make)

    def feedback_matrices(self, model):
        return [layer.feedback for layer in trainable_layers(model)]
