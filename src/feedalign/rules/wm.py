"""Weight mirrors (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, NeurIPS, "Deep learning
without weight transport", Sec. 4 and Eq. 8).

Learning phase: as FA, the error reaches a layer's input through ``delta_in =
delta_out B`` (a feedback kernel for Conv2d) with B a buffer of W's shape.

Mirror phase, between learning steps: each layer is driven by noise ``x ~ N(0,
sigma^2 I)`` and emits ``y = x W^T``; B learns from the correlation of the noise at
its two ends, ``E[y^T x] = sigma^2 W``, so B comes to mirror W without reading it:

    B <- B + lr * (y^T x) / (n sigma^2) - weight_decay * B

(n noise samples; for Conv2d ``y = conv2d(x, W)`` on a noise map with no padding and
the correlation ``conv2d_weight(x, y)`` is divided by ``n * positions * sigma^2``).
With ``weight_decay = lr`` (the default) this is B <- (1 - lr) B + lr W_hat, an
exponential average of an unbiased estimate of W, so B tends to W itself.

The training loop calls :func:`mirror` between steps (say every k batches or once
per epoch); the learning step itself is ``loss.backward(); optimizer.step()`` as
usual, and the optimizer never sees B.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import register
from .layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, random_feedback


class _Mirror:
    """B is the buffer ``feedback``, changed only by :func:`mirror`."""

    feedback: torch.Tensor

    def backward_weight(self) -> torch.Tensor:
        return self.feedback

    def extra_repr(self) -> str:
        return super().extra_repr() + ", feedback=mirrored"


class WMLinear(_Mirror, FeedbackLinear):
    pass


class WMConv2d(_Mirror, FeedbackConv2d):
    pass


#: the mirror settings of :meth:`WeightMirror.after_step`
AFTER_STEP = dict(noise_std=1.0, lr=0.1, weight_decay=None, batch_size=64)


@register
class WeightMirror(LayerwiseRule):
    """``wm``: B starts as FA's (U[-1/sqrt(fan_in), 1/sqrt(fan_in)]) and learns in :func:`mirror`."""

    name = "wm"
    linear_class, conv_class = WMLinear, WMConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        layer.register_buffer("feedback", random_feedback(layer, generator=generator, feedback_init=feedback_init,
                                                          feedback_scale=feedback_scale))

    def after_step(self, model, batch, step, *, generator=None):
        """One mirror step (:func:`mirror`, :data:`AFTER_STEP`'s settings) after every learning step:
        Akrout et al. alternate the two phases."""
        mirror(model, steps=1, generator=generator, **AFTER_STEP)


def linear_estimate(weight: torch.Tensor, noise: torch.Tensor, noise_std: float) -> torch.Tensor:
    """W's estimate from a Linear layer driven by noise: ``(x W^T)^T x / (n sigma^2)``, of W's shape.

    ``noise`` x (..., n, in), already scaled by sigma; ``weight`` W (..., out, in). Leading
    dimensions batch independent layers (a population's members).
    """
    y = noise @ weight.mT
    return y.mT @ noise / (noise.shape[-2] * noise_std ** 2)


def mirror_update_(feedback: torch.Tensor, estimate: torch.Tensor, *, lr: float,
                   weight_decay: float | None) -> torch.Tensor:
    """``B <- (1 - decay) B + lr estimate`` in place, ``decay = weight_decay`` (None: ``lr``, so B tends to W)."""
    decay = lr if weight_decay is None else float(weight_decay)
    return feedback.mul_(1.0 - decay).add_(estimate, alpha=lr)


@torch.no_grad()
def mirror(model: nn.Module, steps: int = 1, *, noise_std: float = 1.0, lr: float = 0.1,
           weight_decay: float | None = None, batch_size: int = 64,
           generator: torch.Generator | list[torch.Generator] | None = None) -> nn.Module:
    """Run ``steps`` mirror steps on every weight-mirror layer of ``model`` (in place).

    Args:
        model: a model converted with ``"wm"``.
        steps: mirror steps; each draws ``batch_size`` noise vectors (maps) per layer.
        noise_std: sigma of the injected noise.
        lr: step size of the correlation update.
        weight_decay: decay of B per step; ``None`` takes ``lr`` (B then tends to W).
        generator: for the noise (a CPU generator; the noise is moved to the layer's
            device); ``None`` uses torch's global RNG. A model of stacked members
            (:func:`~feedalign.rules.fused.stack_members`) takes one generator per member, each
            drawing that member's noise as its own model's mirror would.
    """
    layers = [m for m in model.modules() if isinstance(m, _Mirror)]
    if not layers:
        raise ValueError("mirror() needs a model converted with rule 'wm'")
    if steps < 0 or noise_std <= 0 or batch_size <= 0:
        raise ValueError(f"need steps >= 0, noise_std > 0, batch_size > 0; got {steps}, {noise_std}, {batch_size}")
    for _ in range(steps):
        for layer in layers:
            weight = layer.weight.detach()
            if isinstance(layer, nn.Linear):
                x = _noise((batch_size, layer.in_features), generator) * noise_std
                estimate = linear_estimate(weight, x.to(weight), noise_std)
            else:
                kh, kw = (d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size))
                x = torch.randn(batch_size, layer.in_channels, kh + 3, kw + 3, generator=generator) * noise_std
                x = x.to(weight)
                y = F.conv2d(x, weight, None, 1, 0, layer.dilation, layer.groups)
                positions = y.shape[-2] * y.shape[-1]
                estimate = torch.nn.grad.conv2d_weight(x, weight.shape, y, 1, 0, layer.dilation, layer.groups)
                estimate /= batch_size * positions * noise_std ** 2
            mirror_update_(layer.feedback, estimate, lr=lr, weight_decay=weight_decay)
    return model


def _noise(shape: tuple[int, ...], generator) -> torch.Tensor:
    """Standard normal noise of ``shape``; a list of generators draws one such tensor per member, (M, *shape)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape, generator=g) for g in generator])
    return torch.randn(shape, generator=generator)
