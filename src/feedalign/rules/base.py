"""What every learning rule shares: the registry, feedback sampling, layer discovery, and the
hooks through which training, diagnostics and benchmarks ask a rule what it needs."""
from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type["LearningRule"]] = {}

# Attribute set on the root of a converted model: the configured rule object.
RULE_ATTRIBUTE = "feedalign_rule"


def register(cls: type["LearningRule"]) -> type["LearningRule"]:
    """Class decorator: make a rule available to :func:`feedalign.convert` by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, LearningRule)):
        raise TypeError(f"register expects a LearningRule subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"rule name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def rules() -> list[str]:
    """Names of the registered learning rules."""
    return sorted(_REGISTRY)


def get_rule(name: str) -> "LearningRule":
    """The rule registered as ``name``; a ValueError lists the known ones otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a rule name is a str, got {type(name).__name__} {name!r}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(rules())}")
    return _REGISTRY[name]()


def reference_rule() -> str:
    """The name of the registered rule whose update is the true gradient (:attr:`LearningRule.exact`: ``bp``)."""
    return next(name for name in rules() if _REGISTRY[name].exact)


def parse_options(rule: str, text: str) -> dict[str, float]:
    """``"name=value,name=value"`` -> ``{name: float}`` for rule ``rule``'s :attr:`LearningRule.options`;
    ``""`` -> ``{}``. A ValueError names the bad part and the rule's options."""
    known = get_rule(rule).options
    valid = f"rule {rule!r} takes {', '.join(sorted(known))}" if known else f"rule {rule!r} takes no options"
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name:
            raise ValueError(f"rule option {part!r} is not name=value; {valid}")
        if name not in known:
            raise ValueError(f"unknown rule option {name!r}; {valid}")
        if name in out:
            raise ValueError(f"rule option {name!r} is given twice")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"rule option {name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"rule option {name} must be a finite number, got {value!r}")
        out[name] = number
    return out


@dataclass(frozen=True)
class FeedbackRole:
    """What one trainable layer's feedback matrix stands in for (for diagnostics).

    ``matrix`` B takes the place of the product of the forward weights of the layers
    ``replaces`` (indices into :func:`trainable_layers`, forward order), taken as the
    linear path ``W_{r[-1]} ... W_{r[0]}``:

    - ``(k,)``: B has ``W_k``'s shape and carries the error to layer k's input in
      ``W_k``'s place, ``delta_in = delta_out B`` (FA-type rules; BP with ``B = W_k``);
    - ``(k + 1, ..., L - 1)``: B (out_features, width_k) carries the output error
      straight to layer k's output, in place of ``W_L ... W_{k+1}`` (DFA-type rules).

    ``matrix`` None: the layer has no feedback matrix; ``reason`` says why.
    """

    matrix: torch.Tensor | None
    replaces: tuple[int, ...] = ()
    reason: str = ""


class LearningRule(abc.ABC):
    """A learning rule: rewires a model's backward pass, never its forward pass.

    Every object a rule installs that changes the backward pass (a layer, a hook
    holder) has a boolean attribute ``exact_gradient``; while it is True the object
    must give the plain backprop gradient. :func:`exact_gradients` flips them, so
    diagnostics can compare a rule's update with the true gradient on the same weights.

    Subclasses set ``name`` and implement :meth:`convert` (in place, on a model that
    :func:`feedalign.convert` has already copied). Everything else a training loop,
    the diagnostics or the benchmark need from a rule is a method here with a default
    that fits backprop; a rule overrides what it does differently. Callers never ask
    for a rule by name.
    """

    name: ClassVar[str] = ""
    # whether the rule's update is the true gradient: the reference every other rule is compared and timed against
    exact: ClassVar[bool] = False
    # whether the rule needs every nn.Linear/nn.Conv2d to run as a module (it taps their inputs), so layers an
    # opaque module calls functionally are refused; an FA-type rule swaps layers and merely leaves those on backprop
    needs_layers_as_modules: ClassVar[bool] = True
    # whether convert(..., taps=[...]) applies: rules that project the error to named block outputs
    takes_taps: ClassVar[bool] = False
    # the rule's own settings beyond feedback_init/feedback_scale: name -> what it is (and its default);
    # set on a converted model by configure, numbers only (see parse_options)
    options: ClassVar[dict[str, str]] = {}

    @abc.abstractmethod
    def convert(self, model: nn.Module, *, generator: torch.Generator, feedback_init: str,
                feedback_scale: float | None) -> nn.Module:
        """Rewire ``model`` in place and return it (a new root if the root itself is replaced)."""

    def configure(self, model: nn.Module, **options: float) -> None:
        """Apply the rule's :attr:`options` (already checked by :func:`parse_options`) to a converted model.
        Default: the rule has none."""

    def parameter_groups(self, model: nn.Module, lr: float, **options: float) -> list[dict]:
        """Optimizer parameter groups for ``model`` at learning rate ``lr``: one group of every parameter that
        needs a gradient, unless the rule trains some at their own rate (dtp's inverses)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def adjust_recipe(self, family: str, settings: dict) -> dict[str, tuple[object, str]]:
        """Changes this rule's literature makes to the training recipe of a model of ``family`` (a
        :class:`feedalign.models.Recipe` family: "mlp", "conv", "resnet", "transformer", "recurrent"), given the
        recipe's ``settings`` (training Config fields, complete): ``{field: (value, why)}``, ``why`` naming the
        source. Settings the user gives override these in turn. Default: none, the model's recipe as it is."""
        return {}

    def fused_signals(self):
        """The rule's backward on the fused path (a :class:`~feedalign.rules.fused.StackedSignals`): what
        ``convert`` installs on a plain MLP, and what trains stacked members (population training).
        None (the default): the rule has none, and trains through its general path only."""
        return None

    def feedback_matrices(self, model: nn.Module) -> list[torch.Tensor]:
        """The rule's feedback matrices, forward order (see :func:`feedalign.feedback_matrices`)."""
        return []

    def feedback_layout(self, model: nn.Module) -> list[FeedbackRole]:
        """One :class:`FeedbackRole` per trainable layer, forward order. Default (backprop):
        every layer's "feedback" is its own weight."""
        return [FeedbackRole(layer.weight.detach(), (k,)) for k, layer in enumerate(trainable_layers(model))]

    def forward_context(self, model: nn.Module, y: torch.Tensor) -> contextlib.AbstractContextManager:
        """Context for a training forward pass of ``model`` on a batch with targets ``y``
        (e.g. (N,) class indices). Default: nothing; a rule whose backward needs the target
        (drtp) captures it here."""
        return contextlib.nullcontext()

    def after_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int, *,
                   generator: torch.Generator | None = None) -> None:
        """Called by a training loop after optimizer step ``step`` (from 1) on ``batch``
        (inputs, targets): a rule's own phase between learning steps (wm's mirror).
        ``generator`` (CPU) for any noise it draws. Default: nothing."""

    def step_flops(self, widths: list[int], batch: int) -> float:
        """Matmul FLOPs of one training step (forward and backward) of an MLP with layer
        ``widths`` (input first) on ``batch`` examples; element-wise work left out.

        Default (backprop, and every rule that sends the error down through one
        weight-shaped matrix per layer): the forward pass ``2N sum(in * out)``, every
        weight gradient (the same again), and the input gradient of every layer but the first.
        """
        forward = forward_flops(widths, batch)
        return float(2 * forward + forward - 2 * batch * widths[0] * widths[1])


TRAINABLE = (nn.Linear, nn.Conv2d)


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` in registration order, nested containers included.

    Registration order is taken as forward order, as it is for ``nn.Sequential`` and
    for modules that create their layers in the order they call them.
    """
    return [module for module in model.modules() if isinstance(module, TRAINABLE)]


def linear_stack(model: nn.Module, rule: str, *, stateless: bool = False) -> tuple[list[nn.Linear], list[nn.Sequential]]:
    """The ``nn.Linear`` layers of an ``nn.Sequential`` MLP and the parameter-free modules between each two
    (each as an ``nn.Sequential``), for rules that run the stack themselves (dtp, pc, pepita); a one-line
    ValueError naming ``rule`` and what is wrong otherwise. ``stateless``: also refuse modules between the layers
    that draw randomness or keep state (dropout, running statistics), for a rule that evaluates them again."""
    why = (f"{rule} needs an nn.Sequential of nn.Linear layers with parameter-free activations between them, "
           "ending with an nn.Linear (e.g. feedalign.mlp)")
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError(f"{why}; got nn.Conv2d ({rule} is implemented for MLPs only)")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"{why}; got {type(model).__name__}")
    children = list(model)
    if not children or not isinstance(children[-1], nn.Linear):
        raise ValueError(f"{why}; the last module is not nn.Linear")
    linears, between, current = [], [], []
    for child in children:
        if isinstance(child, nn.Linear):
            if linears:
                between.append(nn.Sequential(*current))
            linears.append(child)
            current = []
        elif any(True for _ in child.parameters()) or any(isinstance(m, nn.Linear) for m in child.modules()):
            raise ValueError(f"{why}; got {type(child).__name__} with parameters")
        elif stateless and (any(True for _ in child.buffers())
                            or any(isinstance(m, nn.modules.dropout._DropoutNd) for m in child.modules())):
            raise ValueError(f"{why}; got {type(child).__name__}, which is random or keeps state ({rule} evaluates the "
                             "modules between layers again at every step)")
        elif not linears:
            raise ValueError(f"{why}; got {type(child).__name__} before the first nn.Linear")
        else:
            current.append(child)
    return linears, between


def forward_flops(widths: list[int], batch: int) -> int:
    """Matmul FLOPs of an MLP's forward pass: ``2N sum(in * out)`` over its layers."""
    return 2 * batch * sum(i * o for i, o in zip(widths[:-1], widths[1:]))


def sample_feedback(shape: tuple[int, ...], *, fan: int, init: str, scale: float | None,
                    generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A fixed random feedback matrix.

    ``uniform``: U[-s, s]; ``gaussian``: N(0, s^2). The default s is ``1/sqrt(fan)``,
    the scale of Nøkland's code (anokland/dfa-torch, ``Linear.lua`` and
    ``ErrorFeedback.lua``). ``orthogonal``: s times a random matrix with orthonormal rows
    or columns (``nn.init.orthogonal_``; default s = 1), as Lee et al.'s DTP code starts its inverses. Drawn in float32 on the CPU from ``generator`` so that
    a seed gives the same matrix on every device and dtype, then moved to ``like``.
    """
    if init == "orthogonal":
        values = torch.nn.init.orthogonal_(torch.empty(shape), generator=generator) * (1.0 if scale is None else scale)
        return values.to(device=like.device, dtype=like.dtype)
    s = 1.0 / math.sqrt(fan) if scale is None else float(scale)
    if init == "uniform":
        values = torch.empty(shape).uniform_(-1.0, 1.0, generator=generator).mul_(s)
    elif init == "gaussian":
        values = torch.empty(shape).normal_(0.0, 1.0, generator=generator).mul_(s)
    else:
        raise ValueError(f"unknown feedback_init {init!r}; expected 'uniform', 'gaussian' or 'orthogonal'")
    return values.to(device=like.device, dtype=like.dtype)


def learns_by_backprop(model: nn.Module) -> bool:
    """Whether ``model``'s gradients are backprop's already: nothing in it that
    :func:`exact_gradients` would switch (no rule's layer, cut or energy phase)."""
    return getattr(model, "_feedalign_cut", None) is None and not any(hasattr(m, "exact_gradient")
                                                                      for m in model.modules())


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
