"""Node perturbation (Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8; Fiete & Seung 2006, "Gradient learning in spiking neural
networks by dynamic perturbation of conductances", Phys. Rev. Lett. 97:048104; analysed against
weight perturbation and gradient descent by Werfel, Xie & Seung 2005, "Learning curves for stochastic
gradient descent in linear feedforward networks", Neural Computation 17). Lillicrap et al. 2016
(Nat. Commun. 7:13276) set feedback alignment beside it. Equation numbers of these papers were not
read here; the estimator below is the standard one they share, written out.

Every trainable layer ``l`` with pre-activation ``a_l = h_{l-1} W_l^T + b_l`` (row vectors; a Conv2d's
output map likewise) gets independent Gaussian noise on each unit of each example,
``a~_l = a_l + xi_l``, ``xi_l ~ N(0, sigma^2 I)``, all layers at once, and the loss change of each
example ``dL_n = L_n(a + xi) - L_n(a)`` is correlated with the noise (see :mod:`._perturbation` for
how ``dL_n`` is measured, the centred variant and the samples K)::

    delta_hat_l = (1 / (K sigma^2)) sum_k dL_{n,k} xi_{l,n,k}        (per example n)
    dW_l = delta_hat_l^T h_{l-1},      db_l = sum_n delta_hat_l

``E[delta_hat_l] -> dL/da_l`` (backprop's delta) as sigma -> 0, so the update is an unbiased estimate
of the gradient in that limit; its variance grows with the number of perturbed units and falls as 1/K.
``h_{l-1}`` is the layer's input in the clean pass. Werfel, Xie & Seung's abstract (read here) gives the
cost: for a linear perceptron at its fastest learning rate, node perturbation learns slower than gradient
descent by a factor equal to the number of output units.

How it runs: the forward pass is the clean one. Every layer takes its input *detached*, so no gradient
runs between layers; each learning layer's output ``a_l`` is recorded, and the root's output goes
through one autograd Function whose inputs are the ``a_l``. ``loss.backward()`` reaches it with
``e = dL/dy``; its backward replays the forward pass with the noise added to each ``a_l`` by the layers' forward hooks, measures
``dL``, and returns ``delta_hat_l`` as the gradient of ``a_l``; autograd then forms ``dW_l`` and ``db_l``
(for a Conv2d, the transposed products of its own backward). So the diagnostics see ``delta_hat_l``
at each layer's output, as they see backprop's delta.

Settings (:func:`feedalign.rules._perturbation.configure`, rule options ``sigma``, ``samples``,
``antithetic``): sigma = 1e-3, K = 1, forward differences by default (this library's choice; the
literature tunes sigma per task). The target for the exact loss change: :func:`target`, or the
training engine's forward context.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from . import _perturbation
from ._perturbation import PerturbationRule, configure, target  # noqa: F401  (the rule's public helpers)
from .base import forward_flops, register


class _NodePerturbation(torch.autograd.Function):
    """Identity on the output's value; backward gives each recorded ``a_l`` its ``delta_hat_l``, nothing to ``y``."""

    @staticmethod
    def forward(ctx, output, state, layers, inputs, target, draw, *preactivations):
        ctx.state, ctx.layers, ctx.inputs, ctx.target, ctx.draw = state, layers, inputs, target, draw
        ctx.shapes = [a.shape for a in preactivations]
        ctx.save_for_backward(output)
        return output.clone()

    @staticmethod
    def backward(ctx, error):
        (output,) = ctx.saved_tensors
        state, (args, kwargs) = ctx.state, ctx.inputs
        _, change = _perturbation.loss_change(output, error, ctx.target)
        lead = output.dim() - 1

        def run(noise):
            return _perturbation.replay(state, dict(zip(map(id, ctx.layers), noise)), lambda: state.root(*args, **kwargs))

        def combine(dl, xi):  # dL_n xi_{l,n}: the example's loss change on every unit of its row
            return dl.reshape(*dl.shape, *([1] * (xi.dim() - lead))).to(xi.dtype) * xi

        deltas = _perturbation.estimate(state, ctx.draw, ctx.shapes, output, run, change, combine)
        return (None, None, None, None, None, None, *deltas)


def _layer_input(state, layer, args):
    """Training pass: every layer's input goes on detached, so no gradient runs between layers."""
    if state.preactivations is None or not state.training_pass():
        return None
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def _layer_output(state, layer, args, output):
    """Record a learning layer's output (training pass); add its noise (replay)."""
    if state.replay is not None:
        xi = state.replay.get(id(layer))
        return None if xi is None else output + xi
    recorded = state.preactivations
    if recorded is None or not state.training_pass() or not _learns(layer):
        return None
    if id(layer) in recorded:
        raise ValueError(f"np: {type(layer).__name__} ran twice in one forward pass; each layer must run once")
    recorded[id(layer)] = (output, output._version)
    return None


def _learns(layer: nn.Module) -> bool:
    return any(p.requires_grad for p in layer.parameters(recurse=False))


def _start(root, args, kwargs):
    state = root._feedalign_cut
    state.preactivations = {} if state.training_pass() else None


def _finish(root, args, kwargs, output):
    state = root._feedalign_cut
    recorded, state.preactivations = state.preactivations, None
    if recorded is None or not state.training_pass():
        return None
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"np needs the model to return one tensor, got {type(output).__name__}")
    layers = [layer for layer in state.layers if id(layer) in recorded]
    missing = [type(layer).__name__ for layer in state.layers if _learns(layer) and id(layer) not in recorded]
    if missing:
        raise ValueError(f"np: learning layers did not run in the forward pass ({', '.join(missing)}); every "
                         "layer must run once")
    if not layers:
        return None
    lead = output.shape[:-1]
    for layer in layers:
        a, version = recorded[id(layer)]
        if a._version != version:
            raise ValueError(f"np: the output of {type(layer).__name__} was changed in place (an inplace activation?); "
                             "np gives its estimate to that output, so use out-of-place modules")
        shape = a.shape
        if tuple(shape[:len(lead)]) != tuple(lead) or len(shape) <= len(lead):
            raise ValueError(f"np: {type(layer).__name__} gives shape {tuple(shape)} but the output is "
                             f"{tuple(output.shape)}: its leading (batch) dimensions must be the output's")
    inputs, state.inputs = state.inputs, None
    return _NodePerturbation.apply(output.detach(), state, layers, inputs, state.target, state.next_draw(),
                                   *(recorded[id(layer)][0] for layer in layers))


@register
class NodePerturbation(PerturbationRule):
    """``np``: noise on every learning layer's pre-activations (see the module docstring)."""

    name = "np"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        state = _perturbation.install(model, self.name, generator)
        state.preactivations = None
        model.register_forward_pre_hook(_start, with_kwargs=True)  # before the layers' (the root may be one)
        for layer in state.layers:
            layer.register_forward_pre_hook(functools.partial(_layer_input, state))
            layer.register_forward_hook(functools.partial(_layer_output, state))
        model.register_forward_hook(_finish, with_kwargs=True)  # after them
        return model

    def estimate_flops(self, widths, batch):
        """``dW = delta_hat^T h``: one forward pass's products again."""
        return float(forward_flops(widths, batch))
