"""Model builders: ``mlp("784-800-800-10")``."""
from __future__ import annotations

import re

from torch import nn

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

_TOKEN = re.compile(r"^\(?(\d+)(?:x(\d+))?\)?$")


def parse_sizes(spec: str) -> list[int]:
    """Parse an architecture string into layer widths.

    ``"784-800-800-10"`` gives ``[784, 800, 800, 10]``; ``WxN`` repeats a width,
    so ``"784-240x7-10"`` (or ``"784-(240x7)-10"``) has seven hidden layers of 240.
    """
    expected = "sizes joined by '-', e.g. '784-800-800-10' or '784-240x7-10' (positive integers, at least input and output)"
    if not isinstance(spec, str):
        raise ValueError(f"architecture must be a string of {expected}; got {spec!r}")
    sizes: list[int] = []
    for token in spec.strip().split("-"):
        match = _TOKEN.match(token.strip())
        if not match:
            raise ValueError(f"malformed architecture {spec!r}: token {token!r} is not a size; expected {expected}")
        width, repeat = int(match.group(1)), int(match.group(2) or 1)
        if width <= 0 or repeat <= 0:
            raise ValueError(f"malformed architecture {spec!r}: sizes and repeats must be positive; expected {expected}")
        sizes.extend([width] * repeat)
    if len(sizes) < 2:
        raise ValueError(f"malformed architecture {spec!r}: needs at least an input and an output size; expected {expected}")
    return sizes


def mlp(sizes: str, activation: str = "tanh", bias: bool = True) -> nn.Sequential:
    """A multilayer perceptron: ``nn.Linear`` layers with ``activation`` between them.

    The output layer has no activation (the loss decides what the output means).
    ``mlp("784-800-10")`` is ``Sequential(Linear(784, 800), Tanh(), Linear(800, 10))``.
    """
    widths = parse_sizes(sizes)
    key = str(activation).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[key]())
    return nn.Sequential(*layers)
