"""Sign-symmetry: ``usf``, ``brsf``, ``frsf`` (Liao, Leibo & Poggio 2016, AAAI, "How important is
weight symmetry in backpropagation?"; the names are BioTorch's, Sanfiz & Akrout 2021).

The error reaches a layer's input through a matrix with the *signs* of the forward
weights and some other magnitude, ``delta_in = delta_out B`` with

- ``usf`` (uniform sign-concordant feedback): ``B = s sign(W)``, one scale s for the
  layer. Default ``s = sqrt(2 / (fan_in + fan_out))``, the scaling factor BioTorch
  applies (jsalbert/biotorch, ``biotorch/layers/fa_constructor/linear.py``, option
  ``scaling_factor``, after Xiao, Chen, Liao & Poggio 2018) to keep the backward
  signal at the scale of a Xavier-initialised layer.
- ``brsf`` (batchwise random magnitude): ``B = |R| * sign(W)`` with R redrawn for
  every backward pass (every mini-batch).
- ``frsf`` (fixed random magnitude): ``B = |M| * sign(W)`` with M drawn once.

R and M default to Xavier-uniform, U[-a, a] with ``a = sqrt(6 / (fan_in + fan_out))``,
as BioTorch draws them; ``feedback_scale`` / ``feedback_init`` override (U[-s, s] or
N(0, s^2)). ``sign(W)`` is taken from the weights at backward time, so it always
follows the current W. For Conv2d, B is a kernel of W's shape (see :mod:`.conv`).

brsf's draws are reproducible: draw number k of a layer comes from a generator
seeded with ``(feedback_seed, k)``, both kept as buffers (so in ``state_dict``); a
resumed run continues the same sequence. ``feedback_matrices`` returns the B the
*next* backward pass will use, without advancing the count.
"""
from __future__ import annotations

import math

import torch

from .base import register, sample_feedback
from .layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, fans


def _xavier_bound(weight: torch.Tensor) -> float:
    fan_in, fan_out = fans(weight)
    return math.sqrt(6.0 / (fan_in + fan_out))


class _UniformSign:
    """B = s sign(W); ``feedback_scale`` is s (a float)."""

    feedback_scale: float

    def scaled_backward_weight(self) -> tuple[torch.Tensor, float]:
        return torch.sign(self.weight.detach()), self.feedback_scale  # s goes into the fused path's GEMM

    def backward_weight(self) -> torch.Tensor:
        sign, scale = self.scaled_backward_weight()
        return sign.mul_(scale)  # in place: one W-sized pass less

    def extra_repr(self) -> str:
        return super().extra_repr() + f", feedback=sign(W)*{self.feedback_scale:.3g}"


class _BatchRandomSign:
    """B = |R_k| sign(W), R_k the k-th draw from seed ``feedback_seed``; k = ``feedback_draws``."""

    feedback_seed: torch.Tensor
    feedback_draws: torch.Tensor

    def magnitude(self) -> torch.Tensor:
        """``|R_k|`` of W's shape. Stacked members (:func:`~feedalign.rules.fused.stack_members`: seed and
        count of shape (M,), W (M, out, in), a differing scale (M, 1, 1)) each draw from their own sequence."""
        members = self.feedback_seed.dim()
        shape = tuple(self.weight.shape[members:])
        seeds, draws = self.feedback_seed.reshape(-1).tolist(), self.feedback_draws.reshape(-1).tolist()
        scales = self.magnitude_scale.reshape(-1).tolist() if isinstance(self.magnitude_scale, torch.Tensor) \
            else [self.magnitude_scale] * len(seeds)
        values = [sample_feedback(shape, fan=1, init=self.feedback_init, scale=scale, like=self.weight,
                                  generator=torch.Generator().manual_seed((seed * 1_000_003 + draw) % (2 ** 63)))
                  for seed, draw, scale in zip(seeds, draws, scales)]
        return (torch.stack(values) if members else values[0]).abs_()

    def backward_weight(self) -> torch.Tensor:
        feedback = torch.sign(self.weight.detach()).mul_(self.magnitude())  # no W-sized temporary besides the draw
        self.feedback_draws += 1
        return feedback

    def feedback_matrix(self) -> torch.Tensor:
        return self.magnitude() * torch.sign(self.weight.detach())  # the next draw, not counted

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=|R|*sign(W), R redrawn per batch"


class _FixedRandomSign:
    """B = |M| sign(W), with the fixed buffer ``feedback_magnitude`` = |M|."""

    feedback_magnitude: torch.Tensor

    def backward_weight(self) -> torch.Tensor:
        return torch.sign(self.weight.detach()).mul_(self.feedback_magnitude)  # one W-sized tensor, not two

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=|M|*sign(W), M fixed"


class USFLinear(_UniformSign, FeedbackLinear):
    pass


class USFConv2d(_UniformSign, FeedbackConv2d):
    pass


class BRSFLinear(_BatchRandomSign, FeedbackLinear):
    pass


class BRSFConv2d(_BatchRandomSign, FeedbackConv2d):
    pass


class FRSFLinear(_FixedRandomSign, FeedbackLinear):
    pass


class FRSFConv2d(_FixedRandomSign, FeedbackConv2d):
    pass


@register
class UniformSignFeedback(LayerwiseRule):
    """``usf``: ``B = s sign(W)``, s = ``feedback_scale`` or sqrt(2 / (fan_in + fan_out))."""

    name = "usf"
    linear_class, conv_class = USFLinear, USFConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        fan_in, fan_out = fans(layer.weight)
        layer.feedback_scale = math.sqrt(2.0 / (fan_in + fan_out)) if feedback_scale is None else float(feedback_scale)


@register
class BatchRandomSignFeedback(LayerwiseRule):
    """``brsf``: ``B = |R| sign(W)``, R redrawn every backward pass (Xavier-uniform by default)."""

    name = "brsf"
    linear_class, conv_class = BRSFLinear, BRSFConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        layer.feedback_init = feedback_init
        layer.magnitude_scale = _xavier_bound(layer.weight) if feedback_scale is None else float(feedback_scale)
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        layer.register_buffer("feedback_seed", torch.tensor(seed, dtype=torch.int64, device=layer.weight.device))
        layer.register_buffer("feedback_draws", torch.zeros((), dtype=torch.int64, device=layer.weight.device))


@register
class FixedRandomSignFeedback(LayerwiseRule):
    """``frsf``: ``B = |M| sign(W)``, M fixed (Xavier-uniform by default), kept as ``feedback_magnitude``."""

    name = "frsf"
    linear_class, conv_class = FRSFLinear, FRSFConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        scale = _xavier_bound(layer.weight) if feedback_scale is None else float(feedback_scale)
        magnitude = sample_feedback(tuple(layer.weight.shape), fan=1, init=feedback_init, scale=scale,
                                    generator=generator, like=layer.weight).abs()
        layer.register_buffer("feedback_magnitude", magnitude)
