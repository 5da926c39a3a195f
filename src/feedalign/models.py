"""Model builders: ``mlp("784-800-800-10")``."""
from __future__ import annotations

import re

from torch import nn

from .errors import ConfigError, ConfigTypeError

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
MAX_LAYERS = 100_000  # far past any network trained here; a bound so a typo cannot build a list of 10^11 sizes
GB = 1e9


def training_bytes(sizes: list[int]) -> int:
    """A lower bound on the memory (bytes) that training the MLP ``sizes`` needs: float32 weights and
    biases, their gradients, and feedback matrices of the same size (FA's; BP has none, DFA's are smaller,
    but the optimizer's momentum takes as much again). Exact Python integers: no overflow at any width."""
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return 3 * 4 * params


def available_memory_bytes() -> int | None:
    """Memory the system can give a new allocation now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(architecture: str, max_memory: float | None = None) -> None:
    """ConfigError (one line) when the MLP ``architecture`` cannot fit: its :func:`training_bytes` exceed
    ``max_memory`` (GB) or the memory available now. Called before any tensor is allocated."""
    sizes = parse_sizes(architecture)
    need = training_bytes(sizes)
    available = available_memory_bytes()
    for limit, what in ((None if max_memory is None else max_memory * GB, "max_memory"), (available, "available memory")):
        if limit is not None and need > limit:
            raise ConfigError(f"architecture {architecture!r} needs at least {need / GB:.3g} GB to train "
                              f"({sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])):.3g} parameters, plus "
                              f"gradients and feedback), more than the {limit / GB:.3g} GB of {what}; use narrower "
                              f"or fewer layers")


def parse_sizes(spec: str) -> list[int]:
    """Parse an architecture string into layer widths.

    ``"784-800-800-10"`` gives ``[784, 800, 800, 10]``; ``WxN`` repeats a width,
    so ``"784-240x7-10"`` (or ``"784-(240x7)-10"``) has seven hidden layers of 240.
    """
    expected = "sizes joined by '-', e.g. '784-800-800-10' or '784-240x7-10' (positive integers, at least input and output)"
    if not isinstance(spec, str):
        raise ConfigTypeError(f"architecture must be a string of {expected}; got {spec!r}")
    sizes: list[int] = []
    for token in spec.strip().split("-"):
        match = _TOKEN.match(token.strip())
        if not match:
            raise ConfigError(f"malformed architecture {spec!r}: token {token!r} is not a size; expected {expected}")
        width, repeat = int(match.group(1)), int(match.group(2) or 1)
        if width <= 0 or repeat <= 0:
            raise ConfigError(f"malformed architecture {spec!r}: sizes and repeats must be positive; expected {expected}")
        if len(sizes) + repeat > MAX_LAYERS:  # before the list is built: 240x99999999999 must not fill the memory
            raise ConfigError(f"architecture {spec!r} has more than {MAX_LAYERS} layers; use fewer")
        sizes.extend([width] * repeat)
    if len(sizes) < 2:
        raise ConfigError(f"malformed architecture {spec!r}: needs at least an input and an output size; expected {expected}")
    return sizes


def mlp(sizes: str, activation: str = "tanh", bias: bool = True) -> nn.Sequential:
    """A multilayer perceptron: ``nn.Linear`` layers with ``activation`` between them.

    The output layer has no activation (the loss decides what the output means).
    ``mlp("784-800-10")`` is ``Sequential(Linear(784, 800), Tanh(), Linear(800, 10))``.
    """
    widths = parse_sizes(sizes)
    key = str(activation).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[key]())
    return nn.Sequential(*layers)


def _activation(name: str) -> type[nn.Module]:
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def lenet5(in_channels: int = 1, num_classes: int = 10, activation: str = "tanh", input_size: int = 28) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) for (N, in_channels, 28, 28) or (N, in_channels, 32, 32) inputs.

    conv 5x5 to 6 maps, 2x2 max-pool, conv 5x5 to 16 maps, 2x2 max-pool, then fully
    connected 400-120-84-``num_classes``. 28x28 inputs get padding 2 on the first conv
    so that both sizes reach the 16x5x5 map.
    """
    if input_size not in (28, 32):
        raise ConfigError(f"lenet5 expects input_size 28 or 32, got {input_size!r}")
    act = _activation(activation)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2 if input_size == 28 else 0), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))


def nokland_conv(in_channels: int = 3, num_classes: int = 10, activation: str = "tanh",
                 input_size: int = 32) -> nn.Sequential:
    """The convolutional network of Nøkland (2016, NeurIPS, Sec. 3, CIFAR experiments).

    Three 5x5 convolutions (padding 2) of 96, 128 and 256 channels, each followed by
    ``activation`` and a 3x3 max-pool with stride 2, then two fully connected layers
    of 2048 and the output layer. For 32x32 inputs the last map is 256x3x3.
    """
    if input_size < 7:
        raise ConfigError(f"nokland_conv needs input_size >= 7, got {input_size!r}")
    act = _activation(activation)
    layers: list[nn.Module] = []
    size, channels = input_size, in_channels
    for width in (96, 128, 256):
        layers += [nn.Conv2d(channels, width, 5, padding=2), act(), nn.MaxPool2d(3, stride=2)]
        size, channels = (size - 3) // 2 + 1, width
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 2048), act(), nn.Linear(2048, 2048), act(),
               nn.Linear(2048, num_classes)]
    return nn.Sequential(*layers)


# Architectures a run config can name instead of an MLP size string: builder(in_channels, num_classes, activation,
# input_size) for (N, C, H, W) images.
NAMED_ARCHITECTURES = {"lenet5": lenet5, "nokland-conv": nokland_conv}


def build_architecture(architecture: str, activation: str, input_shape: tuple, num_classes: int) -> nn.Module:
    """``mlp(architecture)`` or the named convolutional network for inputs of ``input_shape`` = (C, H, W)."""
    if architecture not in NAMED_ARCHITECTURES:
        return mlp(architecture, activation)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ConfigError(f"architecture {architecture!r} needs square images (C, H, W); the dataset's inputs "
                         f"have shape {tuple(input_shape)}")
    return NAMED_ARCHITECTURES[architecture](in_channels=input_shape[0], num_classes=num_classes,
                                             activation=activation, input_size=input_shape[1])
