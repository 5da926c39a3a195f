"""From a :class:`Config` to the pieces of a run: device, data, model, loss, optimizer, schedule.

Everything here validates against the dataset and the machine, so a bad run fails
before its run directory exists.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import Config


def derived_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for forward init, feedback matrices and data order.

    They must differ: torch's CPU generator is the same Mersenne Twister whatever it
    is seeded through, and the default ``nn.Linear`` init draws U[-1/sqrt(fan_in), ...]
    like FA's default feedback, so one seed for both would make B equal W at start.
    """
    forward, feedback, data = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint32)
    return {"forward": int(forward), "feedback": int(feedback), "data": int(data)}


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but no CUDA device is available; use device = 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def load_data(config: Config):
    """The dataset's :class:`feedalign.data.DataSplits` (or a DatasetError saying why not)."""
    from ..data import load  # lazily: the data layer is optional for importing this module
    kwargs = {"data_dir": config.data_dir, "seed": config.seed, "standardize": config.standardize, "flatten": True}
    if config.validation_size is not None:
        kwargs["validation_size"] = config.validation_size
    return load(config.dataset, **kwargs)


def check_fit(config: Config, data) -> str:
    """Check architecture and loss against the dataset; return the resolved loss name."""
    from ..models import parse_sizes
    sizes = parse_sizes(config.architecture)
    if sizes[0] != data.input_size or sizes[-1] != data.output_size:
        raise ConfigError(
            f"architecture {config.architecture!r} does not fit {data.name}: it needs input size {data.input_size} and "
            f"output size {data.output_size}, e.g. '{data.input_size}-256-{data.output_size}'")
    loss = config.loss
    if loss == "auto":
        loss = "cross_entropy" if data.task == "classification" else "mse"
    if data.task == "regression" and loss != "mse":
        raise ConfigError(f"loss {loss!r} needs class labels but {data.name} is a regression task; use loss = 'mse'")
    if len(data.train_x) == 0:
        raise ConfigError(f"{data.name} has no training examples")
    return loss


def build_model(config: Config, device: torch.device) -> nn.Module:
    """``mlp(architecture, activation)`` initialized as ``config.init`` says, converted with ``config.rule``."""
    from ..convert import convert
    from ..models import mlp
    seeds = derived_seeds(config.seed)
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global generator; leave it be
        torch.manual_seed(seeds["forward"])
        model = mlp(config.architecture, config.activation)
    generator = torch.Generator().manual_seed(seeds["forward"])
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        w = config.init_scale if config.init_scale is not None else 1.0 / math.sqrt(layer.in_features)
        for p in (layer.weight, layer.bias):
            if p is None or config.init == "default":
                continue
            with torch.no_grad():
                if config.init == "zero":
                    p.zero_()
                elif config.init == "uniform":  # Nøkland's code: weights and biases alike
                    p.copy_(torch.empty(p.shape).uniform_(-w, w, generator=generator))
                else:
                    p.copy_(torch.empty(p.shape).normal_(0.0, w, generator=generator))
    try:
        model = convert(model, config.rule, seed=seeds["feedback"], feedback_init=config.feedback_init,
                        feedback_scale=config.feedback_scale, inplace=True)
    except ValueError as err:  # the rule refuses this network (e.g. dfa without a hidden layer): a setting to change
        raise ConfigError(f"rule {config.rule!r} cannot train architecture {config.architecture!r}: {err}") from err
    return model.to(device)


def make_loss(name: str, num_classes: int | None):
    """``loss(output, target) -> scalar``; ``target`` holds labels (classification) or values (regression)."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "bce":  # Nøkland's code: sigmoid outputs against one-hot targets
        return lambda out, y: F.binary_cross_entropy_with_logits(out, F.one_hot(y, num_classes).to(out.dtype))
    if num_classes is not None:  # mse on a classification task: one-hot targets
        return lambda out, y: F.mse_loss(out, F.one_hot(y, num_classes).to(out.dtype))
    return F.mse_loss


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_schedule(config: Config, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
