"""Model builders: ``mlp("784-800-800-10")``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

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


class ShortcutA(nn.Module):
    """He et al. (2016) option A shortcut: subsample by ``stride`` and zero-pad the channels, no parameters.

    (N, C, H, W) -> (N, C + 2 * pad, ceil(H / stride), ceil(W / stride)), the new channels zero, as BioTorch's
    ``IdentityPadding`` (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``).
    """

    def __init__(self, stride: int, pad_channels: int):
        super().__init__()
        self.stride, self.pad_channels = stride, pad_channels

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad_channels, self.pad_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad_channels}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (He et al. 2016, Sec. 4.2).

    (N, in_planes, H, W) -> (N, planes, H / stride, W / stride). Convolutions have no bias (BatchNorm follows).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        change = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(stride, (planes - in_planes) // 2) if change else nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. 2016 (arXiv 1512.03385, Sec. 4.2): depth ``6n + 2``.

    A 3x3 conv to 16 channels with BatchNorm and ReLU, three stages of ``n`` :class:`BasicBlock`
    (16, 32, 64 channels; the second and third start with stride 2 and an option-A shortcut),
    global average pooling and a linear classifier. Input (N, C, H, W); output (N, num_classes).
    ResNet-20 has 0.27M parameters. Follows BioTorch's ``small_resnet.py`` (after Y. Idelbayev's
    pytorch_resnet_cifar10), which the BioTorch benchmark trains.
    """

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
            raise ConfigError(f"blocks_per_stage must be a positive integer, got {blocks_per_stage!r}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, planes_in = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(BasicBlock(planes_in, planes, s))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.flatten(self.pool(out)))


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """The CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
    return CifarResNet((depth - 2) // 6, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return resnet(20, in_channels, num_classes)


def resnet32(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return resnet(32, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return resnet(56, in_channels, num_classes)


# -- the model registry: what `--model NAME` / `architecture = NAME` builds ---------------------------------------

def flat_inputs(x):
    """(N, ...) -> (N, features): what an MLP reads (N may be 0: an empty validation set)."""
    return x.flatten(1)


def image_inputs(x):
    """(N, C, H, W) as it is (checked by the model spec)."""
    return x


def native_inputs(x):
    """(N, *the dataset's input_shape) as it is."""
    return x


# How a model wants its inputs: layout name -> fn((N, *input_shape) tensor) -> the tensor the model is fed.
INPUT_LAYOUTS = {"flat": flat_inputs, "image": image_inputs, "native": native_inputs}


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``build(input_shape, num_classes, activation) -> nn.Module`` and the input layout it reads.

    ``inputs``: a key of :data:`INPUT_LAYOUTS` ("flat": (N, features); "image": (N, C, H, W); "native": the
    dataset's own shape). ``needs``: what the dataset must be ("image classification" or "" for anything).
    """

    build: Callable[[tuple, int | None, str], nn.Module]
    inputs: str
    description: str
    needs: str = "image classification"


def _image_builder(fn, *, activation: bool = True, square: bool = True):
    def build(input_shape, num_classes, act):
        kwargs = {"in_channels": input_shape[0], "num_classes": num_classes}
        if activation:
            kwargs.update(activation=act, input_size=input_shape[1])
        return fn(**kwargs)
    return build


MODELS: dict[str, ModelSpec] = {
    "lenet5": ModelSpec(_image_builder(lenet5), "image", "LeNet-5 (28x28 or 32x32 images), --activation applies"),
    "nokland-conv": ModelSpec(_image_builder(nokland_conv), "image",
                              "Nøkland 2016's CIFAR convolutional network, --activation applies"),
    "resnet20": ModelSpec(_image_builder(resnet20, activation=False), "image",
                          "He et al. 2016 CIFAR ResNet-20 (BatchNorm, option-A shortcuts, ReLU)"),
    "resnet32": ModelSpec(_image_builder(resnet32, activation=False), "image", "CIFAR ResNet-32"),
    "resnet56": ModelSpec(_image_builder(resnet56, activation=False), "image", "CIFAR ResNet-56"),
}


def register_model(name: str, spec: ModelSpec) -> None:
    """Make ``name`` buildable by ``--model NAME`` / ``architecture = NAME``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model expects a ModelSpec, got {type(spec).__name__}")
    if not isinstance(name, str) or not name or name in MODELS or ":" in name or name[0].isdigit():
        raise ValueError(f"model name {name!r} is empty, taken, or looks like an MLP size string or module:function")
    if spec.inputs not in INPUT_LAYOUTS:
        raise ValueError(f"unknown input layout {spec.inputs!r}; known: {', '.join(INPUT_LAYOUTS)}")
    MODELS[name] = spec


# Kept for code that asked for the convolutional names before the registry.
NAMED_ARCHITECTURES = {"lenet5": lenet5, "nokland-conv": nokland_conv}

_USER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_model(architecture: str) -> bool:
    """``module:function``: a user's own builder."""
    return isinstance(architecture, str) and bool(_USER.match(architecture.strip()))


def check_architecture(architecture) -> None:
    """ConfigError unless ``architecture`` is a registered model, ``module:function`` or an MLP size string."""
    if isinstance(architecture, str) and (architecture in MODELS or is_user_model(architecture)):
        return
    if isinstance(architecture, str) and ":" in architecture:
        raise ConfigError(f"architecture {architecture!r}: a user model is 'module:function' (an importable module "
                          "and a function in it), e.g. 'mypackage.nets:build'")
    try:
        parse_sizes(architecture)
    except ConfigError as err:
        raise ConfigError(f"{err}; or a named model: {', '.join(MODELS)}; or 'module:function'") from None


def input_layout(architecture: str) -> str:
    """How ``architecture`` reads its inputs: a key of :data:`INPUT_LAYOUTS` (MLPs "flat", user models "native")."""
    if architecture in MODELS:
        return MODELS[architecture].inputs
    return "native" if is_user_model(architecture) else "flat"


def user_builder(architecture: str) -> Callable:
    """The function named by ``module:function``; a ConfigError says what is wrong."""
    import importlib
    module_name, function_name = architecture.strip().split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"architecture {architecture!r}: cannot import {module_name!r} ({err}); is it on "
                          "PYTHONPATH?") from None
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise ConfigError(f"architecture {architecture!r}: {module_name} has no function {function_name!r}")
    return fn


def build_architecture(architecture: str, activation: str, input_shape: tuple, num_classes: int) -> nn.Module:
    """The model ``architecture`` names, for inputs of ``input_shape`` (without the batch dimension).

    - an MLP size string: ``mlp(architecture, activation)``, fed flat vectors;
    - a name of :data:`MODELS` (``lenet5``, ``nokland-conv``, ``resnet20``, ...), fed as its spec says;
    - ``module:function``: ``function(input_shape=..., num_classes=...)`` must return an nn.Module; it is fed
      (N, *input_shape), the dataset's own shape (flatten inside the model if it wants vectors).
    """
    if is_user_model(architecture):
        model = user_builder(architecture)(input_shape=tuple(input_shape), num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"architecture {architecture!r} returned {type(model).__name__}, not an nn.Module")
        return model
    if architecture not in MODELS:
        return mlp(architecture, activation)
    spec = MODELS[architecture]
    if spec.inputs == "image" and (len(input_shape) != 3 or input_shape[1] != input_shape[2]):
        raise ConfigError(f"architecture {architecture!r} needs square images (C, H, W); the dataset's inputs "
                          f"have shape {tuple(input_shape)}")
    return spec.build(tuple(input_shape), num_classes, activation)
