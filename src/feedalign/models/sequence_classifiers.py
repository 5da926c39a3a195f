"""Small sequence models for images and signals: a vision transformer and an LSTM classifier.

Both are built from torch modules (``nn.TransformerEncoderLayer``, ``nn.LSTM``);
:func:`feedalign.convert` swaps their attention and recurrent parts for
:mod:`feedalign.models.sequence`'s, so every rule reaches every weight matrix. Each sets
``feedalign_taps``, the block outputs that dfa and drtp project the error to when
``convert`` is given no ``taps`` (Launay et al. 2020; see :mod:`feedalign.rules.dfa`).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import ModelSpec, Recipe, register_model


def _positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class VisionTransformer(nn.Module):
    """A small ViT (Dosovitskiy et al. 2021): non-overlapping patches, a linear patch embedding,
    learnt position embeddings, pre-norm encoder blocks, a final LayerNorm, the mean over
    tokens and a linear head.

    Input (N, C, H, W) with H = W = ``image_size`` a multiple of ``patch``, or flattened
    (N, C*H*W); output (N, num_classes).
    ``feedalign_taps``: every block and the final norm; ``feedalign_share_positions``: dfa and drtp
    send every token of a tap the same ``e B_k`` (B_k of shape (classes, dim)), as the mean over
    tokens sends every token the same true error (see :class:`feedalign.rules._cut.TapCut`).
    """

    def __init__(self, image_size: int = 28, patch: int = 7, in_channels: int = 1, num_classes: int = 10,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        _positive(image_size=image_size, patch=patch, in_channels=in_channels, num_classes=num_classes, dim=dim,
                  depth=depth, heads=heads, mlp_dim=mlp_dim)
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.image_size, self.patch = image_size, patch
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=dropout, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.position, std=0.02)
        self.feedalign_taps = [f"blocks.{k}" for k in range(depth)] + ["norm"]
        self.feedalign_share_positions = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side, channels = self.image_size, self.embed.in_features // self.patch ** 2
        if x.dim() == 2 and x.shape[1] == channels * side * side:  # flattened images
            x = x.view(-1, channels, side, side)
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"VisionTransformer expects images (N, C, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        n, c, p = x.shape[0], x.shape[1], self.patch
        # (N, C, H, W) -> (N, tokens, C*p*p), patches in row-major order
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)
        h = self.embed(patches) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


def vit_tiny(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, patch: int = 7) -> VisionTransformer:
    """A 2-block vision transformer for MNIST-sized images: 7x7 patches (16 tokens), dim 64,
    4 heads, MLP 128, GELU, pre-norm, no dropout (about 70k parameters)."""
    return VisionTransformer(image_size=image_size, patch=patch, in_channels=in_channels, num_classes=num_classes,
                             dim=64, depth=2, heads=4, mlp_dim=128)


class SequenceClassifier(nn.Module):
    """An ``nn.LSTM`` (batch first) read at its last time step by a linear head.

    Inputs: sequences (N, T, input_size); images (N, C, H, W) as H time steps of C*W
    values (the rows: sequential MNIST with input_size 28); flat inputs (N, L) as L /
    input_size steps of consecutive values (a flattened MNIST image (N, 784) is its rows
    again; MNIST-1D (N, 40) with input_size 1 is 40 steps). Output (N, num_classes).
    ``feedalign_taps``: the LSTM (every layer, every time step).
    """

    def __init__(self, input_size: int = 28, hidden_size: int = 64, num_classes: int = 10, num_layers: int = 1):
        super().__init__()
        _positive(input_size=input_size, hidden_size=hidden_size, num_classes=num_classes, num_layers=num_layers)
        self.input_size = input_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)
        self.feedalign_taps = ["lstm"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 1, 3).flatten(2)
        elif x.dim() == 2 and x.shape[1] % self.input_size == 0:  # flat: consecutive runs of input_size values
            x = x.reshape(x.shape[0], -1, self.input_size)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"SequenceClassifier(input_size={self.input_size}) cannot read input {tuple(x.shape)} as "
                             f"steps of {self.input_size} values; images give C*W values per row")
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def lstm_classifier(input_size: int = 28, num_classes: int = 10, hidden_size: int = 64,
                    num_layers: int = 1) -> SequenceClassifier:
    """An LSTM classifier; the default reads MNIST row by row (28 steps of 28 pixels). For
    MNIST-1D as a sequence (40 steps of 1 value) pass ``input_size=1``."""
    return SequenceClassifier(input_size, hidden_size, num_classes, num_layers)


# The vision-transformer recipe: AdamW (Loshchilov & Hutter 2019) with weight decay 0.05, linear warm-up, then a
# cosine decay (Touvron et al. 2021, DeiT, Table 9; Dosovitskiy et al. 2021, App. B.1: warm-up, global-norm clipping
# at 1); the rate (feedalign's own search for this model, experiments/transformer.py) and length fitted to a
# 70k-parameter model on MNIST-sized data.
VIT_RECIPE = Recipe(
    {"optimizer": "adamw", "lr": 3e-3, "momentum": 0.0, "weight_decay": 0.05, "schedule": "cosine",
     "warmup_steps": 200, "batch_size": 128, "clip_grad_norm": 1.0, "epochs": 10},
    "transformer",
    "Touvron et al. 2021 (DeiT, arXiv 2012.12877, Table 9): AdamW (Loshchilov & Hutter 2019), weight decay 0.05, "
    "linear warm-up then cosine decay; Dosovitskiy et al. 2021 (ViT, arXiv 2010.11929, App. B.1): gradient clipping "
    "at global norm 1. Rate 3e-3, the rate feedalign's launay-transformer experiment chose for this model on MNIST "
    "(Adam, its settings search in experiments/transformer.py); batch 128, 200 warm-up steps and 10 epochs sized for "
    "a 70k-parameter model on MNIST on a CPU, not DeiT's 300 ImageNet epochs")

# The recurrent recipe: Adam at 1e-2, batches of 100 (MNIST-1D's reference training code, greydanus/mnist1d
# notebooks/train.py, get_model_args, for all its models, its GRU included), gradient-norm clipping for recurrent
# networks (Pascanu, Mikolov & Bengio 2013, ICML, Sec. 3.2).
LSTM_RECIPE = Recipe(
    {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
     "batch_size": 100, "clip_grad_norm": 1.0, "epochs": 20},
    "recurrent",
    "MNIST-1D's reference training (Greydanus 2020, greydanus/mnist1d notebooks/train.py get_model_args): Adam, lr "
    "1e-2, batch 100, no weight decay, constant rate; gradient-norm clipping at 1 as Pascanu, Mikolov & Bengio 2013 "
    "(ICML, Sec. 3.2) prescribe for recurrent networks. 20 epochs where MNIST-1D's code takes 8000 steps (200 epochs "
    "of its 4000 training examples), so that the default finishes in minutes on a CPU")


def _register_models() -> None:
    """``--model vit-tiny`` (images) and ``--model lstm`` (images read row by row, or 1-D signals step by step)."""
    def build_vit(input_shape, num_classes, activation):
        return vit_tiny(in_channels=input_shape[0], num_classes=num_classes, image_size=input_shape[1])

    def build_lstm(input_shape, num_classes, activation):
        # (C, H, W): H steps of C*W values; (L,): L steps of one value (MNIST-1D as a sequence)
        steps_of = input_shape[0] * input_shape[2] if len(input_shape) == 3 else 1
        return lstm_classifier(input_size=steps_of, num_classes=num_classes)

    register_model("vit-tiny", ModelSpec(build_vit, "image", "a 2-block vision transformer (7x7 patches, dim 64, "
                                                             "4 heads); dfa/drtp tap each block's output",
                                         recipe=VIT_RECIPE))
    register_model("lstm", ModelSpec(build_lstm, "native", "an LSTM (64 units) read at its last step: images row by "
                                                          "row, 1-D signals value by value", needs="",
                                     recipe=LSTM_RECIPE))


_register_models()
