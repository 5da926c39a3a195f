"""An FA-type rule that lives in the test suite only: FA with sparse feedback.

It is what adding an FA-type rule takes: one file with a mixin that supplies ``B`` over
the shared feedback layers, and a registered :class:`LearningRule`. The ``sample_rule``
fixture (conftest.py) registers it for one test at a time; test_contract.py runs the
whole contract suite on it with the default contract.
"""
from __future__ import annotations

import torch

from feedalign.rules.layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, random_feedback

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


class SparseFeedbackAlignment(LayerwiseRule):
    name = NAME
    linear_class, conv_class = SparseFALinear, SparseFAConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        b = random_feedback(layer, generator=generator, feedback_init=feedback_init, feedback_scale=feedback_scale)
        keep = (torch.rand(tuple(b.shape), generator=generator) < 0.5).to(b)
        layer.register_buffer("feedback", b * keep)
