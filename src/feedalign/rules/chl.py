"""Contrastive Hebbian learning (Movellan 1991, "Contrastive Hebbian learning in the continuous
Hopfield model"; Xie & Seung 2003, Neural Comput. 15:441, with symmetric feedback, gamma = 1).

The energy network of :mod:`feedalign.rules.energy` (as for ``eqprop``, see :mod:`.eqprop`) with a
*fully* clamped second phase: the output state is held at the target d and the hidden layers
relax from the free fixed point to ``s^+``; the update is the difference of the two phases'
correlations (Movellan 1991):

    dL/dW_k ~ -(1/N) [rho(s_{k+1}^+) rho(s_k^+)^T - rho(s_{k+1}^0) rho(s_k^0)^T]

(biases likewise). Unlike EP it is not the gradient of the loss (Xie & Seung: it is, to first
order, when the feedback is weak); the loss is only used for its target. The target is the one
given at forward time (``feedalign.rules.energy.target(model, y)``, which the training engine does
through :meth:`forward_context`), or recovered from the output error of a mean-reduced softmax
cross-entropy (as drtp does); any other loss without it raises a ValueError in backward.
"""
from __future__ import annotations

from .base import register
from .eqprop import EnergyRule


@register
class ContrastiveHebbian(EnergyRule):
    """``chl``: fully clamped second phase."""

    name = "chl"
