"""Weight perturbation (Jabri & Flower 1992, "Weight perturbation: an optimal architecture and learning
technique for analog VLSI feedforward and recurrent multilayer networks", IEEE Trans. Neural Netw. 3, and
Neural Comput. 3 (1991) under the same title;
Cauwenberghs 1993, "A fast stochastic error-descent algorithm for supervised learning and
optimization", NIPS 5; analysed beside node perturbation and gradient descent by Werfel, Xie & Seung
2005, Neural Computation 17). Equation numbers of these papers were not read here; the estimator below
is the standard one they share, written out (Jabri & Flower's finite difference perturbs one weight at
a time; Cauwenberghs' version, used here, perturbs all of them at once with random noise).

Every learning parameter ``w`` (weights and biases of the ``nn.Linear`` / ``nn.Conv2d`` layers) gets
independent Gaussian noise ``xi ~ N(0, sigma^2 I)``, all at once and the same for every example of the
batch; the change of the batch's loss ``dL = L(w + xi) - L(w)`` is correlated with it (see
:mod:`._perturbation` for how ``dL`` is measured, the centred variant and the samples K)::

    dw_hat = (1 / (K sigma^2)) sum_k dL_k xi_k

``E[dw_hat] -> dL/dw`` as sigma -> 0; the variance grows with the number of parameters perturbed
(against node perturbation's number of units times examples) and falls as 1/K. Werfel, Xie & Seung's
abstract (read here): for a linear perceptron at the fastest learning rates, weight perturbation is
slower than node perturbation by a further factor equal to the number of input units.

How it runs: the forward pass is the clean one; the root's output goes through one autograd Function
whose inputs are the parameters. ``loss.backward()`` reaches it with ``e = dL/dy``; its backward replays
the forward pass with perturbed parameters (``torch.func.functional_call``, the parameters themselves
untouched), measures ``dL`` and returns ``dw_hat`` as every parameter's gradient. No gradient reaches
any layer's output: the diagnostics' signal angles are NaN, the update angle is the one to read.

Settings (:func:`feedalign.rules._perturbation.configure`, rule options ``sigma``, ``samples``,
``antithetic``): sigma = 1e-3, K = 1, forward differences by default (this library's choice). The
target for the exact loss change: :func:`target`, or the training engine's forward context.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from . import _perturbation
from ._perturbation import PerturbationRule, configure, target  # noqa: F401  (the rule's public helpers)
from .base import register


class _WeightPerturbation(torch.autograd.Function):
    """Identity on the output's value; backward gives every parameter its ``dw_hat``."""

    @staticmethod
    def forward(ctx, output, state, names, inputs, target, draw, *params):
        ctx.state, ctx.names, ctx.inputs, ctx.target, ctx.draw = state, names, inputs, target, draw
        ctx.save_for_backward(output, *params)
        return output.clone()

    @staticmethod
    def backward(ctx, error):
        output, *params = ctx.saved_tensors
        state, (args, kwargs) = ctx.state, ctx.inputs
        _, change = _perturbation.loss_change(output, error, ctx.target)

        def run(noise):
            perturbed = {name: p + xi for name, p, xi in zip(ctx.names, params, noise)}
            return _perturbation.replay(state, True, lambda: functional_call(state.root, perturbed, args, kwargs,
                                                                             strict=False))

        def combine(dl, xi):  # the batch's loss change times the noise of every weight
            return dl.sum().to(xi.dtype) * xi

        grads = _perturbation.estimate(state, ctx.draw, [p.shape for p in params], params[0], run, change, combine)
        return (None, None, None, None, None, None, *grads)


def _finish(root, args, kwargs, output):
    state = root._feedalign_cut
    if not state.training_pass():
        return None
    inputs, state.inputs = state.inputs, None
    learning = [(name, p) for name, p in root.named_parameters() if p.requires_grad]  # Linear/Conv2d's only
    if not learning or inputs is None:
        return None
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"wp needs the model to return one tensor, got {type(output).__name__}")
    names, params = zip(*learning)
    return _WeightPerturbation.apply(output.detach(), state, list(names), inputs, state.target, state.next_draw(),
                                     *params)


@register
class WeightPerturbation(PerturbationRule):
    """``wp``: noise on every learning weight and bias (see the module docstring)."""

    name = "wp"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        _perturbation.install(model, self.name, generator)  # checks every parameter is a Linear/Conv2d's
        model.register_forward_hook(_finish, with_kwargs=True)
        return model
