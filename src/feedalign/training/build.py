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

from ..convert import convert, learning_rule
from ..data import REGISTRY, load
from ..data.augment import normalize_channels
from ..errors import ConfigError
from ..models import INPUT_LAYOUTS, MODELS, build_architecture, input_layout, is_user_model, parse_sizes
from .config import Config
from .optimizers import GravesRMSprop, LinearWarmup


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
    kwargs = {"data_dir": config.data_dir, "seed": config.seed, "standardize": config.standardize,
              "flatten": False}  # the model's input layout decides the shape, below
    if config.validation_size is not None:
        kwargs["validation_size"] = config.validation_size
    data = load(config.dataset, **kwargs)
    if config.train_size is not None:  # first rows: a subset fixed by the seed's split, the same on every resume
        data.train_x, data.train_y = data.train_x[:config.train_size], data.train_y[:config.train_size]
    if config.test_size is not None:
        data.test_x, data.test_y = data.test_x[:config.test_size], data.test_y[:config.test_size]
    if config.normalize == "channel" or config.augment != "none":
        if data.train_x.dim() != 4:
            setting = "normalize = 'channel'" if config.normalize == "channel" else f"augment = {config.augment!r}"
            raise ConfigError(f"{setting} needs images (C, H, W); {data.name}'s inputs have shape "
                              f"{tuple(data.input_shape)}")
    if config.normalize == "channel":
        data = normalize_channels(data)
    layout = INPUT_LAYOUTS[input_layout(config.architecture)]
    data.train_x, data.val_x, data.test_x = (layout(t).contiguous() for t in (data.train_x, data.val_x, data.test_x))
    return data


def check_fit(config: Config, data) -> str:
    """Check architecture and loss against the dataset; return the resolved loss name."""
    if config.architecture in MODELS or is_user_model(config.architecture):
        needs = MODELS[config.architecture].needs if config.architecture in MODELS else ""
        if needs == "image classification" and (data.task != "classification" or len(data.input_shape) != 3):
            raise ConfigError(f"architecture {config.architecture!r} classifies images; {data.name} is not an image "
                             "classification dataset")
        if config.augment != "none" and data.train_x.dim() != 4:
            raise ConfigError(f"augment = {config.augment!r} needs a model fed images (N, C, H, W); "
                              f"{config.architecture!r} is not")
        sizes = [data.input_size, data.output_size]
    else:
        if config.augment != "none":
            raise ConfigError(f"augment = {config.augment!r} crops images; the MLP {config.architecture!r} reads flat "
                              "vectors: use an image model (e.g. --model resnet20) or augment = 'none'")
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


def build_model(config: Config, device: torch.device, *, input_shape: tuple | None = None,
                num_classes: int | None = None) -> nn.Module:
    """``mlp(architecture, activation)`` (or the named network, for the dataset's image shape, or ``input_shape``
    and ``num_classes`` when given), its linear layers initialized as ``config.init`` says, converted with
    ``config.rule``."""
    seeds = derived_seeds(config.seed)
    spec = REGISTRY.get(config.dataset)
    shape, classes = (spec.input_shape, spec.num_classes) if spec is not None else ((), None)
    if input_shape is not None:
        shape, classes = tuple(input_shape), num_classes
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global generator; leave it be
        torch.manual_seed(seeds["forward"])
        model = build_architecture(config.architecture, config.activation, shape, classes, dropout=config.dropout,
                                   input_dropout=config.input_dropout)
    if config.init == "xavier":  # Glorot uniform weights, zero biases, every Linear and Conv2d (BioTorch's "xavier")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds["forward"])
            for layer in (m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    generator = torch.Generator().manual_seed(seeds["forward"])
    for k, layer in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
        if config.init == "orthogonal":  # Lee et al.'s DTP code (rand_ortho): orthonormal rows or columns, zero biases
            with torch.no_grad():
                layer.weight.copy_(nn.init.orthogonal_(torch.empty(layer.weight.shape), generator=generator))
                if layer.bias is not None:
                    layer.bias.zero_()
            continue
        w = config.init_scale if config.init_scale is not None else 1.0 / math.sqrt(layer.in_features)
        for p in (layer.weight, layer.bias):
            if p is None or config.init in ("default", "xavier"):
                continue
            with torch.no_grad():
                if config.init == "zero" or (config.init == "zero-except-first" and k > 0):
                    p.zero_()
                elif config.init in ("uniform", "zero-except-first"):  # Nøkland's code: weights and biases alike
                    p.copy_(torch.empty(p.shape).uniform_(-w, w, generator=generator))
                else:
                    p.copy_(torch.empty(p.shape).normal_(0.0, w, generator=generator))
    try:
        model = convert(model, config.rule, seed=seeds["feedback"], feedback_init=config.feedback_init,
                        feedback_scale=config.feedback_scale, inplace=True)
    except ValueError as err:  # the rule refuses this network (e.g. dfa without a hidden layer): a setting to change
        raise ConfigError(f"rule {config.rule!r} cannot train architecture {config.architecture!r}: {err}") from err
    try:
        learning_rule(model).configure(model, **config.parsed_rule_options())
    except ValueError as err:  # a value out of the rule's range (dtp: target_step <= 0)
        raise ConfigError(f"rule_options: {err}") from None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    frozen = {"none": [], "first": linears[:1], "hidden": linears[:-1]}[config.frozen]
    for layer in frozen:  # make_optimizer leaves out what needs no gradient
        for p in layer.parameters():
            p.requires_grad_(False)
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
    # the rule says which parameters train at which rate (dtp's inverses may have their own); none that is frozen
    try:
        groups = learning_rule(model).parameter_groups(model, config.lr, **config.parsed_rule_options())
    except ValueError as err:  # dtp: inverse_lr < 0
        raise ConfigError(f"rule_options: {err}") from None
    groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]} for group in groups]
    groups = [group for group in groups if group["params"]]
    params = [p for group in groups for p in group["params"]]
    l2 = config.weight_decay if config.weight_decay_mode == "l2" else 0.0
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=l2)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=l2)
    elif config.optimizer == "adamw":  # decoupled: w <- w - lr * weight_decay * w, apart from Adam's step
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=l2)
    elif config.optimizer == "rmsprop-graves":
        optimizer = GravesRMSprop(groups, lr=config.lr, momentum=config.momentum, weight_decay=l2)
    else:
        optimizer = torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, weight_decay=l2)
    if config.weight_decay_mode == "constant" and config.weight_decay > 0:
        decay = config.weight_decay

        @torch.no_grad()
        def constant_decay(opt, args, kwargs):  # xuexue/randombp: w <- w - lr * g - decay, biases too
            for p in params:
                p.sub_(decay)

        optimizer.register_step_post_hook(constant_decay)
    return optimizer


def make_schedule(config: Config, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch; with ``config.warmup_steps`` a :class:`~feedalign.training.optimizers.LinearWarmup`
    around it scales the learning rate of the first optimizer steps (and is stepped per epoch the same way)."""
    schedule = _epoch_schedule(config, optimizer)
    return LinearWarmup(optimizer, schedule, config.warmup_steps) if config.warmup_steps else schedule


def _epoch_schedule(config: Config, optimizer: torch.optim.Optimizer):
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.schedule_milestones(),
                                                    gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
