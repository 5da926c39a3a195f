"""Equilibrium propagation (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24, arXiv 1602.05179).

Not a rewiring of a feedforward network's backward pass: ``convert(mlp, "eqprop")`` returns a
:class:`feedalign.rules.energy.EnergyNetwork` on the MLP's ``nn.Linear`` layers (the same parameters;
the MLP's activations are replaced by the energy's hard sigmoid). Its forward pass is the free
phase (relaxation to the fixed point ``s^0``, the prediction is the output state ``y^0``);
``loss.backward()`` runs the weakly clamped phase from ``s^0`` with the output nudged by
``beta dL/dy`` and deposits the contrastive update

    dL/dW_k ~ -(1/beta) [rho(s_{k+1}^beta) rho(s_k^beta)^T - rho(s_{k+1}^0) rho(s_k^0)^T]

into ``W_k.grad`` (biases likewise), so ``loss.backward(); optimizer.step()`` trains it. As
beta -> 0 this tends to the gradient of the loss at the free fixed point (Theorem 1).

Settings (``model.epsilon``, ``n_free``, ``n_clamped``, ``beta``) default to
:func:`feedalign.rules.energy.paper_settings` for the depth and beta = 1; change them on the model.

Alignment: the symmetric connection W_k carries the signal both ways, so the "feedback" of
layer k is ``W_k`` itself (the default layout, as for bp). ``exact_gradients`` makes backward
give the true gradient at the free fixed point (recurrent backprop), so the diagnostics'
update angle is the angle between EP's update and the true dL/dW of the energy model.
There is no feedforward map per layer, so the signal angles are NaN.
"""
from __future__ import annotations

from .energy import from_mlp, paper_settings, target
from .base import LearningRule, register


class EnergyRule(LearningRule):
    """A rule that replaces the network by an energy network settling to equilibrium (eqprop, chl)."""

    replaces_model = True

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        return from_mlp(model, self.name)

    def forward_context(self, model, y):
        """The target is captured for CHL's clamped phase (EP nudges with the output error instead)."""
        return target(model, y)

    def step_flops(self, widths, batch):
        """Each relaxation step: every connection both ways but the input's (its drive is a product
        per step here too, so it is counted); free plus second phase, plus the two correlations."""
        s = paper_settings(len(widths) - 2)
        per_step = sum(2 * batch * i * o * (1 if k == 0 else 2) for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])))
        correlations = 2 * sum(2 * batch * i * o for i, o in zip(widths[:-1], widths[1:]))
        return float(per_step * (s["n_free"] + s["n_clamped"]) + correlations)


@register
class EquilibriumPropagation(EnergyRule):
    """``eqprop``: weakly clamped second phase (see the module docstring)."""

    name = "eqprop"
