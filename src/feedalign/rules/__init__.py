"""Learning rules, one module each, registered by name.

Adding a rule: a new module here with a :class:`LearningRule` subclass decorated
with :func:`register`, an import below, and its reference-gradient tests. An FA-type
rule (a feedback matrix per layer) is a mixin on the layers of :mod:`.layers` and a
:class:`~feedalign.rules.layers.LayerwiseRule`.
"""
from .base import (FeedbackRole, LearningRule, exact_gradients, get_rule, parse_options, reference_rule, register, rules,
                   trainable_layers)
from . import bp, dfa, fa, ifa  # noqa: F401  (registration)
from . import sign_symmetry  # noqa: F401  (usf, brsf, frsf)
from . import kp  # noqa: F401
from . import wm  # noqa: F401
from . import drtp  # noqa: F401
from . import dkp  # noqa: F401  (direct Kolen-Pollack)
from . import pepita  # noqa: F401  (error-driven input modulation)
from . import dtp  # noqa: F401
from . import eqprop, chl  # noqa: F401  (energy networks)
from . import pc  # noqa: F401
from . import ff  # noqa: F401  (forward-forward)
from . import node_perturbation, weight_perturbation  # noqa: F401  (np, wp)

__all__ = ["FeedbackRole", "LearningRule", "exact_gradients", "get_rule", "parse_options", "reference_rule", "register",
           "rules",
           "trainable_layers"]
