"""``convert(model, rule)``: the one entry point that turns a model into a learner with ``rule``."""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .models import VisionTransformer
from .models.sequence import has_sequence_modules, swap_sequence_modules
from .rules._cut import resolve_taps
from .rules.base import RULE_ATTRIBUTE, LearningRule, get_rule, reference_rule, trainable_layers
from .rules.base import rules as registered_rules


class BackpropFallbackWarning(UserWarning):
    """``convert`` left some modules on backprop: their error path still uses the transpose of their own weights."""


# -- what carries each module's error signal -------------------------------------------------------------------
#
# For every parameter, :func:`describe` says what computes the error signal its module sends on to its input:
#
# - the rule's name: the rule replaced the transpose of the module's weights (Linear and Conv2d under every rule);
# - "local": the module acts on each unit (channel) by itself, so its backward multiplies the error by that
#   unit's own gain: BatchNorm's gamma, LayerNorm/GroupNorm's weight, PReLU's slope. A diagonal matrix is its own
#   transpose and carries nothing from one unit to another, so no weight is transported between neurons; it is the
#   same kind of local factor as an activation's derivative f'(a) (BioTorch, Liao et al. 2016, keep normalisation
#   layers as they are for the same reason). BatchNorm's backward also mixes the examples of the batch through its
#   batch statistics, still one channel at a time. Counted apart, never as "backprop".
# - "none": no error goes below the module (nn.Embedding: its input is integer indices). Its weight gets the
#   ordinary gradient of the signal that reaches its output.
# - "backprop": the error still goes through the transpose of the module's own weights (autograd's backward):
#   modules no rule has a feedback version of (Conv1d, ConvTranspose2d, Bilinear, an unknown module with its own
#   parameters), and every parameter inside a module that uses its weights functionally (nn.MultiheadAttention,
#   nn.LSTM/GRU/RNN) -- the converted layers there never run, so the rule cannot reach them.
#
# A rule that is backprop ("bp") shows "bp" in its rows and never warns.

@dataclass(frozen=True)
class ModuleHandler:
    """How :func:`convert` treats one module type (matched along the class hierarchy, most specific first).

    ``signal``: "rule", "local", "none" or "backprop" (see above); ``why``: one line for :func:`describe`.
    ``opaque``: the module uses its submodules' weights functionally, so everything under it is backprop.
    ``swap``: ``swap(module) -> module``, a drop-in replacement whose weight products go through converted layers;
    :func:`convert` puts it in place (parameters copied or shared) before the rule converts the model, after which
    its handler is that of the new module's type.
    """

    signal: str
    why: str = ""
    opaque: bool = False
    swap: Callable[[nn.Module], nn.Module] | None = None

    def __post_init__(self):
        if self.signal not in ("rule", "local", "none", "backprop"):
            raise ValueError(f"signal must be 'rule', 'local', 'none' or 'backprop'; got {self.signal!r}")


_LOCAL = ModuleHandler("local", "elementwise: the error is scaled by each unit's own gain (a diagonal, its own "
                                "transpose), as by f'(a)")
_FUNCTIONAL = "uses its weights functionally, so no rule reaches them"

# module type -> handler. Add an entry (with ``swap``) to give convert a drop-in module for another torch module.
HANDLERS: dict[type, ModuleHandler] = {
    nn.Linear: ModuleHandler("rule", "the rule's feedback replaces W^T"),
    nn.Conv2d: ModuleHandler("rule", "the rule's feedback kernel replaces W^T"),
    nn.modules.batchnorm._NormBase: _LOCAL,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm with affine
    nn.LayerNorm: _LOCAL,
    nn.GroupNorm: _LOCAL,
    nn.PReLU: _LOCAL,
    nn.Embedding: ModuleHandler("none", "index lookup: no error flows below it"),
    nn.EmbeddingBag: ModuleHandler("none", "index lookup: no error flows below it"),
    nn.MultiheadAttention: ModuleHandler("backprop", _FUNCTIONAL + " (F.multi_head_attention_forward)", opaque=True),
    nn.RNNBase: ModuleHandler("backprop", _FUNCTIONAL + " (fused recurrent kernels)", opaque=True),
    nn.RNNCellBase: ModuleHandler("backprop", _FUNCTIONAL, opaque=True),
    # the ViT's own parameter, the position embedding, is added to the tokens
    VisionTransformer: ModuleHandler("local", "position embedding added to the tokens: the error reaches it "
                                              "unchanged, through no weight"),
}
_UNKNOWN = ModuleHandler("backprop", "no rule has a feedback version of this module: autograd sends the error "
                                     "through its own weights")
if hasattr(nn, "RMSNorm"):
    HANDLERS[nn.RMSNorm] = _LOCAL


def handler_for(module: nn.Module) -> ModuleHandler:
    """The :data:`HANDLERS` entry of ``module``'s class or its nearest base class; an unknown module is backprop."""
    for cls in type(module).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return _UNKNOWN


@dataclass(frozen=True)
class SignalPath:
    """One row of :func:`describe`: what computes the error signal that ``module`` sends on, for ``parameter``."""

    module: str          # qualified name in the model ("" is the root)
    kind: str            # the module's class name
    parameter: str
    shape: tuple
    signal: str          # the rule's name, "local", "none" or "backprop"
    why: str


class ModelDescription(list):
    """The rows of :func:`describe` (a list of :class:`SignalPath`); ``str()`` is a table."""

    def __init__(self, rows, rule: str, exact: bool = False):
        super().__init__(rows)
        self.rule, self.exact = rule, exact

    @property
    def backprop(self) -> list[SignalPath]:
        """The rows whose error path still uses the transpose of the module's own weights (none under ``bp``,
        whose update is the exact gradient)."""
        return [] if self.exact else [r for r in self if r.signal == "backprop"]

    def backprop_modules(self) -> list[str]:
        """Names of the modules with a "backprop" row, once each, in order (not those inside another listed one)."""
        names = list(dict.fromkeys(r.module or "(root)" for r in self.backprop))
        return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]

    def counts(self) -> dict[str, int]:
        """Parameters per signal, e.g. ``{"fa": 21, "local": 38}``."""
        out: dict[str, int] = {}
        for r in self:
            out[r.signal] = out.get(r.signal, 0) + 1
        return out

    def summary(self) -> str:
        """One line: the rule and how many parameters each signal moves."""
        return f"rule={self.rule}, signals: " + ", ".join(f"{k} {v}" for k, v in self.counts().items())

    def __str__(self) -> str:
        head = ("module", "class", "parameter", "shape", "signal", "why")
        cells = [head] + [(r.module or "(root)", r.kind, r.parameter, "x".join(map(str, r.shape)) or "()", r.signal,
                           r.why) for r in self]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
        lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head) - 1)) + "  " + c[-1] for c in cells]
        return "\n".join(lines + [self.summary()])


def describe(model: nn.Module) -> ModelDescription:
    """For every parameter of ``model``: which rule moves the error signal its module sends on (see
    :class:`SignalPath`). ``print(feedalign.describe(model))`` shows the table; ``.backprop`` lists the rows
    whose error path still uses the transpose of the module's own weights. A plain model describes as ``bp``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"describe expects an nn.Module, got {type(model).__name__}")
    return _describe(model, learning_rule(model))


def _describe(model: nn.Module, rule: LearningRule) -> ModelDescription:
    """:func:`describe` as if ``model`` learnt with ``rule`` (convert asks before it converts)."""
    rows: list[SignalPath] = []
    opaque: dict[str, str] = {}  # name prefix of an opaque module -> its class name
    seen: set[int] = set()
    # feedback a converted model's rule trains (dkp's on the root, where no layer's handler would name it)
    trained: set[int] = set()
    if getattr(model, RULE_ATTRIBUTE, None) is rule:
        try:
            trained = {id(t) for b in rule.feedback_matrices(model) for t in (b, b._base) if t is not None}
        except ValueError:  # dfa on Conv2d layers before its first forward pass: no feedback drawn yet, none trained
            pass
    for name, module in model.named_modules():
        handler = handler_for(module)
        owner = next((o for p, o in opaque.items() if p == "" or name.startswith(p + ".")), None)
        if owner is not None:
            handler = ModuleHandler("backprop", f"inside {owner}, which {_FUNCTIONAL}")
        elif handler.opaque:
            opaque[name] = type(module).__name__
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # shared (tied) parameter: its first owner's row
                continue
            seen.add(id(param))
            signal = rule.name if handler.signal == "rule" else handler.signal
            if rule.exact and signal == "backprop":
                signal = rule.name
            why = handler.why if handler.signal != "rule" or not rule.exact else "backprop (the rule asked for)"
            if id(param) in trained:
                signal, why = rule.name, "the rule's feedback, trained by the rule"
            rows.append(SignalPath(name, type(module).__name__, pname, tuple(param.shape), signal, why))
    return ModelDescription(rows, rule.name, rule.exact)


def convert(model: nn.Module, rule: str, *, seed: int = 0, feedback_init: str = "uniform",
            feedback_scale: float | None = None, inplace: bool = False, strict: bool = False,
            taps=None) -> nn.Module:
    """Return ``model`` rewired to learn with ``rule`` (see :func:`feedalign.rules`).

    Raises TypeError for an argument of the wrong type, ValueError for a bad value.

    Every parameter's error path is accounted for (:func:`describe`). Modules the rule cannot reach and that
    still send the error through the transpose of their own weights (nn.MultiheadAttention, nn.LSTM, Conv1d,
    an unknown module with parameters, ...) are named in ONE :class:`BackpropFallbackWarning`; with
    ``strict=True`` they are a :class:`~feedalign.errors.ConfigError` instead. Normalisation layers are
    "local", not backprop (see :class:`ModuleHandler`).

    The forward pass is unchanged, and so is the training loop:
    ``loss = criterion(model(x), y); loss.backward(); optimizer.step()``.

    Args:
        model: any module whose trainable layers are ``nn.Linear`` or ``nn.Conv2d`` (nested
            containers included). Forward order is taken to be registration order.
        rule: ``"bp"``, ``"fa"``, ``"dfa"``, ``"ifa"``, ...
        seed: seeds the fixed random feedback matrices; the same seed gives the same B.
        feedback_init: ``"uniform"`` (U[-s, s]), ``"gaussian"`` (N(0, s^2)) or ``"orthogonal"`` (s times
            orthonormal rows or columns; s defaults to 1).
        feedback_scale: s; ``None`` takes the rule's documented default.
        inplace: rewire ``model`` itself instead of a deep copy (parameters are then
            shared, so an optimizer built on ``model`` keeps working; not those of an
            ``nn.MultiheadAttention``/``nn.LSTM``/``nn.GRU``, which are copied into
            feedalign's modules, see :mod:`feedalign.models.sequence`).
        strict: refuse (ConfigError) a model that would keep any module on backprop.
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
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {type(strict).__name__} {strict!r}")
    if hasattr(model, RULE_ATTRIBUTE):
        raise ValueError(f"model was already converted with rule {getattr(model, RULE_ATTRIBUTE).name!r}")
    if feedback_init not in ("uniform", "gaussian", "orthogonal"):
        raise ValueError(f"unknown feedback_init {feedback_init!r}; expected 'uniform', 'gaussian' or 'orthogonal'")
    if feedback_scale is not None and not (math.isfinite(feedback_scale) and feedback_scale >= 0):
        raise ValueError(f"feedback_scale must be a finite non-negative number or None, got {feedback_scale!r}")
    if not trainable_layers(model) and not has_sequence_modules(model):
        raise ValueError(f"model has no nn.Linear or nn.Conv2d layer to convert ({type(model).__name__})")
    taps = resolve_taps(model, learning_rule, taps)  # names of the dfa/drtp cut points, or None
    if not inplace:
        model = copy.deepcopy(model)
    # attention and recurrent modules -> feedalign.models.sequence's, so the layer conversion reaches their weights
    model = swap_modules(swap_sequence_modules(model))
    left = _describe(model, learning_rule).backprop_modules()
    if left and strict:
        raise ConfigError(f"rule {rule!r} cannot reach {_named(left, model)}: they would still send the error through "
                          "the transpose of their own weights (strict=True). " + _ADVICE)
    _refuse_opaque_cut_layers(model, learning_rule)
    generator = torch.Generator().manual_seed(feedback_seed(seed))
    model = learning_rule.convert(model, generator=generator, feedback_init=feedback_init,
                                  feedback_scale=feedback_scale, **({} if taps is None else {"taps": taps}))
    setattr(model, RULE_ATTRIBUTE, learning_rule)  # the configured rule object: what everything asks
    model.extra_repr = _DescribedExtraRepr(model)
    if left:
        warnings.warn(f"convert(model, {rule!r}): {_named(left, model)} stay on backprop (their error path uses the "
                      "transpose of their own weights); feedalign.describe(model) lists every parameter. "
                      + _ADVICE + " Pass strict=True to make this an error.", BackpropFallbackWarning, stacklevel=2)
    return model


_ADVICE = ("Replace them with layers built from nn.Linear/nn.Conv2d, or register a drop-in module for their type "
           "in feedalign.convert.HANDLERS.")


def _named(names: list[str], model: nn.Module) -> str:
    modules = dict(model.named_modules())
    return ", ".join(f"{n} ({type(modules.get('' if n == '(root)' else n)).__name__})" for n in names)


def swap_modules(model: nn.Module) -> nn.Module:
    """Put each module whose :data:`HANDLERS` entry has a ``swap`` in its place; return the (possibly new) root."""
    handler = handler_for(model)
    if handler.swap is not None:
        return handler.swap(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            child_handler = handler_for(child)
            if child_handler.swap is not None:
                setattr(parent, name, child_handler.swap(child))
    return model


def _refuse_opaque_cut_layers(model: nn.Module, learning_rule: LearningRule) -> None:
    """A rule that taps every trainable layer's input (dfa, ifa, drtp) cannot use layers an opaque module calls
    functionally: they never run as modules. Say so now rather than at the first forward pass."""
    if not learning_rule.needs_layers_as_modules:
        return  # FA-type rules swap layers; unused ones are merely left on backprop (warned above)
    inside = [name for name, module in model.named_modules() if handler_for(module).opaque
              and any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules())]
    if inside:
        raise ConfigError(f"rule {learning_rule.name!r} sends its signal to the input of every nn.Linear/nn.Conv2d, but "
                          f"{_named(inside, model)} use(s) their layers functionally, so those layers never run as "
                          f"modules. Use an FA-type rule (fa, usf, brsf, frsf, kp, wm), or replace the module. " + _ADVICE)


class _DescribedExtraRepr:
    """The converted root's ``extra_repr``: its class's own, plus one line of :func:`describe`'s counts.
    A plain object (not a bound method) so that the model still pickles and deep-copies."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self) -> str:
        own = type(self.model).extra_repr(self.model)
        summary = describe(self.model).summary()
        return f"{own}\n{summary}" if own else summary


def feedback_seed(seed: int) -> int:
    """The generator seed for the feedback matrices of ``convert(..., seed=seed)``.

    Mixed with a constant so that it never equals the seed users give
    ``torch.manual_seed``: with the raw seed, ``torch.manual_seed(0)`` followed by
    ``convert(model, "fa", seed=0)`` would draw the first B from the same stream
    as the first layer's default init, giving B == W (FA silently turned into BP).
    """
    return int(np.random.SeedSequence([seed, 0xFEEDBAC]).generate_state(1, dtype=np.uint64)[0] >> 1)


def convertible_rules(make_model: Callable[[], nn.Module]) -> list[str]:
    """The registered rules, in registry order, that convert the model ``make_model()`` builds (a fresh one
    each): a rule refuses a model it cannot train with a ValueError, so experiments that run "every rule"
    on one model ask this rather than keep a list."""
    out = []
    for name in registered_rules():
        try:
            convert(make_model(), name)
        except ValueError:  # the rule's own refusal of this model
            continue
        out.append(name)
    return out


def rule_of(model: nn.Module) -> str:
    """The name of the rule ``model`` was converted with; a plain model learns with ``"bp"``."""
    return learning_rule(model).name


def learning_rule(model: nn.Module) -> LearningRule:
    """The :class:`~feedalign.rules.LearningRule` object ``model`` was converted with (``convert`` stores it on
    the model), or backprop's for a plain model: what a training loop, the diagnostics or the benchmark ask."""
    rule = getattr(model, RULE_ATTRIBUTE, None)
    return rule if rule is not None else get_rule(reference_rule())


def feedback_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The fixed feedback buffers of a converted model, in forward order.

    - ``fa``: one per linear layer, with the shape of its weight (out, in); the
      layer's input gradient is ``grad_output @ B``.
    - ``dfa``: one per hidden layer k, (out_features, width_k); the hidden output
      ``h_k`` receives ``e @ B_k`` with ``e = dL/dy``.
    - ``ifa``: ``[B_1]``, (out_features, width_1).
    - ``bp``: ``[]``.
    """
    return learning_rule(model).feedback_matrices(model)
