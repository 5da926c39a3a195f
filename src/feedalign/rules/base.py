"""What every learning rule shares: the registry, feedback sampling, layer discovery."""
from __future__ import annotations

import abc
import contextlib
import math
from typing import ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type["LearningRule"]] = {}

# Attribute set on the root of a converted model: the rule's name.
RULE_ATTRIBUTE = "feedalign_rule"


def register(cls: type["LearningRule"]) -> type["LearningRule"]:
    """Class decorator: make a rule available to :func:`feedalign.convert` by its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"rule name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def rules() -> list[str]:
    """Names of the registered learning rules."""
    return sorted(_REGISTRY)


def get_rule(name: str) -> "LearningRule":
    """The rule registered as ``name``; a ValueError lists the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(rules())}")
    return _REGISTRY[name]()


class LearningRule(abc.ABC):
    """A learning rule: rewires a model's backward pass, never its forward pass.

    Every object a rule installs that changes the backward pass (a layer, a hook
    holder) has a boolean attribute ``exact_gradient``; while it is True the object
    must give the plain backprop gradient. :func:`exact_gradients` flips them, so
    diagnostics can compare a rule's update with the true gradient on the same weights.

    Subclasses set ``name`` and implement :meth:`convert` (in place, on a model that
    :func:`feedalign.convert` has already copied) and :meth:`feedback_matrices`.
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def convert(self, model: nn.Module, *, generator: torch.Generator, feedback_init: str,
                feedback_scale: float | None) -> nn.Module:
        """Rewire ``model`` in place and return it (a new root if the root itself is replaced)."""

    def feedback_matrices(self, model: nn.Module) -> list[torch.Tensor]:
        return []


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """Every ``nn.Linear`` of ``model`` in registration order, nested containers included.

    Registration order is taken as forward order, as it is for ``nn.Sequential`` and
    for modules that create their layers in the order they call them.
    """
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def sample_feedback(shape: tuple[int, ...], *, fan: int, init: str, scale: float | None,
                    generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A fixed random feedback matrix.

    ``uniform``: U[-s, s]; ``gaussian``: N(0, s^2). The default s is ``1/sqrt(fan)``,
    the scale of Nøkland's code (anokland/dfa-torch, ``Linear.lua`` and
    ``ErrorFeedback.lua``). Drawn in float32 on the CPU from ``generator`` so that
    a seed gives the same matrix on every device and dtype, then moved to ``like``.
    """
    s = 1.0 / math.sqrt(fan) if scale is None else float(scale)
    if init == "uniform":
        values = torch.empty(shape).uniform_(-1.0, 1.0, generator=generator) * s
    elif init == "gaussian":
        values = torch.empty(shape).normal_(0.0, 1.0, generator=generator) * s
    else:
        raise ValueError(f"unknown feedback_init {init!r}; expected 'uniform' or 'gaussian'")
    return values.to(device=like.device, dtype=like.dtype)


@contextlib.contextmanager
def exact_gradients(model: nn.Module):
    """Within this block ``model`` computes true backprop gradients, whatever its rule.

    The forward pass, parameters and buffers are untouched; only the backward
    pass of the rule's layers and hooks reverts to backprop. Used by diagnostics.
    """
    switches = [m for m in model.modules() if hasattr(m, "exact_gradient")]
    cut = getattr(model, "_feedalign_cut", None)
    if cut is not None:
        switches.append(cut)
    previous = [s.exact_gradient for s in switches]
    for s in switches:
        s.exact_gradient = True
    try:
        yield model
    finally:
        for s, value in zip(switches, previous):
            s.exact_gradient = value
