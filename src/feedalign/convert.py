"""``convert(model, rule)``: the one entry point that turns a model into a learner with ``rule``."""
from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import torch
from torch import nn

from .rules._cut import resolve_taps
from .rules.base import RULE_ATTRIBUTE, LearningRule, get_rule, trainable_layers
from .sequence import has_sequence_modules, swap_sequence_modules


def convert(model: nn.Module, rule: str, *, seed: int = 0, feedback_init: str = "uniform",
            feedback_scale: float | None = None, inplace: bool = False, taps=None) -> nn.Module:
    """Return ``model`` rewired to learn with ``rule`` (see :func:`feedalign.rules`).

    Raises TypeError for an argument of the wrong type, ValueError for a bad value.

    The forward pass is unchanged, and so is the training loop:
    ``loss = criterion(model(x), y); loss.backward(); optimizer.step()``.

    Args:
        model: any module whose trainable layers are ``nn.Linear`` or ``nn.Conv2d`` (nested
            containers included). Forward order is taken to be registration order.
        rule: ``"bp"``, ``"fa"``, ``"dfa"``, ``"ifa"``, ...
        seed: seeds the fixed random feedback matrices; the same seed gives the same B.
        feedback_init: ``"uniform"`` (U[-s, s]) or ``"gaussian"`` (N(0, s^2)).
        feedback_scale: s; ``None`` takes the rule's documented default.
        inplace: rewire ``model`` itself instead of a deep copy (parameters are then
            shared, so an optimizer built on ``model`` keeps working; not those of an
            ``nn.MultiheadAttention``/``nn.LSTM``/``nn.GRU``, which are copied into
            feedalign's modules, see :mod:`feedalign.sequence`).
        taps: dfa and drtp only: the block outputs (module names or submodules) that receive
            the projected error, after Launay et al. 2020 (see :mod:`feedalign.rules.dfa`).
            ``None`` takes ``model.feedalign_taps`` where a builder set it, else cuts at every
            layer's input.
    """
    learning_rule = get_rule(rule)
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not isinstance(feedback_init, str):
        raise TypeError(f"feedback_init must be a str, got {type(feedback_init).__name__}")
    not_a_number = isinstance(feedback_scale, bool) or not isinstance(feedback_scale, numbers.Real)
    if feedback_scale is not None and not_a_number:
        raise TypeError(f"feedback_scale must be a number or None, got {type(feedback_scale).__name__} "
                        f"{feedback_scale!r}")
    if hasattr(model, RULE_ATTRIBUTE):
        raise ValueError(f"model was already converted with rule {getattr(model, RULE_ATTRIBUTE)!r}")
    if feedback_init not in ("uniform", "gaussian"):
        raise ValueError(f"unknown feedback_init {feedback_init!r}; expected 'uniform' or 'gaussian'")
    if feedback_scale is not None and not (math.isfinite(feedback_scale) and feedback_scale >= 0):
        raise ValueError(f"feedback_scale must be a finite non-negative number or None, got {feedback_scale!r}")
    if not trainable_layers(model) and not has_sequence_modules(model):
        raise ValueError(f"model has no nn.Linear or nn.Conv2d layer to convert ({type(model).__name__})")
    taps = resolve_taps(model, learning_rule, taps)  # names of the dfa/drtp cut points, or None
    if not inplace:
        model = copy.deepcopy(model)
    # attention and recurrent modules -> feedalign.sequence's, so the layer conversion reaches their weights
    model = swap_sequence_modules(model)
    generator = torch.Generator().manual_seed(feedback_seed(seed))
    model = learning_rule.convert(model, generator=generator, feedback_init=feedback_init,
                                  feedback_scale=feedback_scale, **({} if taps is None else {"taps": taps}))
    setattr(model, RULE_ATTRIBUTE, rule)
    return model


def feedback_seed(seed: int) -> int:
    """The generator seed for the feedback matrices of ``convert(..., seed=seed)``.

    Mixed with a constant so that it never equals the seed users give
    ``torch.manual_seed``: with the raw seed, ``torch.manual_seed(0)`` followed by
    ``convert(model, "fa", seed=0)`` would draw the first B from the same stream
    as the first layer's default init, giving B == W (FA silently turned into BP).
    """
    return int(np.random.SeedSequence([seed, 0xFEEDBAC]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rule_of(model: nn.Module) -> str:
    """The rule ``model`` was converted with; a plain model learns with ``"bp"``."""
    return getattr(model, RULE_ATTRIBUTE, "bp")


def learning_rule(model: nn.Module) -> LearningRule:
    """The :class:`~feedalign.rules.LearningRule` object of ``model``'s rule (see :func:`rule_of`):
    what a training loop, the diagnostics or the benchmark ask a rule for."""
    return get_rule(rule_of(model))


def feedback_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The fixed feedback buffers of a converted model, in forward order.

    - ``fa``: one per linear layer, with the shape of its weight (out, in); the
      layer's input gradient is ``grad_output @ B``.
    - ``dfa``: one per hidden layer k, (out_features, width_k); the hidden output
      ``h_k`` receives ``e @ B_k`` with ``e = dL/dy``.
    - ``ifa``: ``[B_1]``, (out_features, width_1).
    - ``bp``: ``[]``.
    """
    return get_rule(rule_of(model)).feedback_matrices(model)
