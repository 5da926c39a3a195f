"""Convolutional networks: LeNet-5 (BioTorch's benchmark), Nøkland's CIFAR network and the CIFAR ResNets
of He et al. (option A shortcuts)."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .mlp import _activation

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
