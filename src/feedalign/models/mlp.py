"""Multi-layer perceptrons: ``mlp("784-800-800-10")``, the networks of both papers and the ones the fused
path trains (:mod:`feedalign.rules.fused`)."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .sizes import parse_sizes

# Element-wise activations by name; "linear" and "identity" mean none.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
    "identity": nn.Identity,
}

def mlp(sizes: str, activation: str = "tanh", bias: bool = True, *, dropout: float = 0.0,
        input_dropout: float = 0.0) -> nn.Sequential:
    """A multilayer perceptron: ``nn.Linear`` layers with ``activation`` between them.

    The output layer has no activation (the loss decides what the output means).
    ``mlp("784-800-10")`` is ``Sequential(Linear(784, 800), Tanh(), Linear(800, 10))``.
    ``dropout`` > 0 adds ``nn.Dropout(dropout)`` after every hidden activation and ``input_dropout`` > 0
    ``nn.Dropout(input_dropout)`` before the first layer, as Nøkland's code places them (anokland/dfa-torch,
    Models/mlp.lua; a direct rule's signal reaches a hidden layer through its dropout mask). Such a model trains
    through the general path, not the fused one.
    """
    widths = parse_sizes(sizes)
    key = str(activation).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{name} must be in [0, 1); got {p!r}")
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[key]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _activation(name: str) -> type[nn.Module]:
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]
