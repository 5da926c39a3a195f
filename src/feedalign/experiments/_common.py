"""Helpers the experiments share: angles, plotting, data, and a small training loop.

The loop is local to the experiments (rather than ``feedalign.training.train``)
because several experiments need what a generic run does not give: a frozen first
layer, training the output layer only, per-step probes of the update direction,
and evaluation on a budget counted in examples seen. It is the plain loop
``loss = criterion(model(x), y); loss.backward(); optimizer.step()`` on a model made
by :func:`feedalign.convert`, so every update is the rule's real autograd one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import feedalign


class DataUnavailable(RuntimeError):
    """The dataset an experiment needs cannot be loaded here (not fetched, or no loader yet)."""


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors taken as flat vectors (90 if either is zero)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 90.0
    return float(torch.rad2deg(torch.arccos(torch.clamp(a @ b / (na * nb), -1.0, 1.0))))


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def mean_std_band(ax, x, curves, label, **kwargs):
    """Plot the mean of ``curves`` (seeds x points) against ``x`` with a ±std band."""
    curves = np.asarray(curves, dtype=float)
    mean, std = curves.mean(0), curves.std(0)
    line, = ax.plot(x, mean, label=label, **kwargs)
    if len(curves) > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


# -- data -------------------------------------------------------------------------------

def load_data(name: str, *, seed: int = 0, validation_size: int = 10000, n_train: int | None = None,
              n_val: int | None = None, n_test: int | None = None):
    """``feedalign.data.load(name)`` cut to the sizes asked for (first rows of each split).

    Raises :class:`DataUnavailable` when the data layer cannot give the dataset here.
    """
    try:
        from feedalign import data as data_module
        load = data_module.load
    except (ImportError, AttributeError) as err:
        raise DataUnavailable(f"feedalign.data.load is not available ({err})") from None
    try:
        splits = load(name, validation_size=validation_size, seed=seed)
    except Exception as err:  # not fetched, no network: the experiment cannot run here
        raise DataUnavailable(f"cannot load {name!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                              f" (run `feedalign data fetch {name}`)") from None

    def cut(x, y, n):
        x = x.reshape(len(x), -1).float()
        return (x, y) if n is None else (x[:n], y[:n])

    train = cut(splits.train_x, splits.train_y, n_train)
    val = cut(splits.val_x, splits.val_y, n_val)
    test = cut(splits.test_x, splits.test_y, n_test)
    return {"train": train, "val": val, "test": test, "num_classes": int(splits.num_classes),
            "input_size": int(train[0].shape[1]), "name": name}


# -- models -----------------------------------------------------------------------------

def build_model(architecture: str, activation: str, rule: str, *, seed: int, init: str = "default",
                init_scale: float | None = None, feedback_scale: float | None = None,
                feedback_init: str = "uniform") -> nn.Module:
    """``feedalign.mlp`` with a chosen forward init, converted to ``rule``.

    ``init``: ``default`` (PyTorch's), ``uniform`` (U[-s, s], s = init_scale or
    1/sqrt(fan_in), biases too), ``scaled`` (U[-a, a], a = init_scale * sqrt(3/fan_in): weight variance
    init_scale^2/fan_in in every layer, biases zero), ``gaussian`` or ``zero`` (weights and biases zero, as Nøkland's
    code does for FA and DFA with tanh).
    """
    torch.manual_seed(10_000 + seed)
    net = feedalign.mlp(architecture, activation=activation)
    with torch.no_grad():
        for layer in net:
            if not isinstance(layer, nn.Linear):
                continue
            if init == "zero":
                layer.weight.zero_()
                layer.bias.zero_()
            elif init == "uniform":
                s = init_scale if init_scale is not None else 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-s, s)
                layer.bias.uniform_(-s, s)
            elif init == "scaled":  # U[-a, a], a = gain * sqrt(3 / fan_in) (variance gain^2 / fan_in), biases zero
                a = (init_scale if init_scale is not None else 1.0) * math.sqrt(3.0 / layer.in_features)
                layer.weight.uniform_(-a, a)
                layer.bias.zero_()
            elif init == "gaussian":  # truncated normal N(0, s^2) cut at 2s, biases zero (xuexue/randombp)
                nn.init.trunc_normal_(layer.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
                layer.bias.zero_()
            elif init != "default":
                raise ValueError(f"unknown init {init!r}")
    return feedalign.convert(net, rule, seed=seed, feedback_scale=feedback_scale, feedback_init=feedback_init)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def classification_loss(kind: str, output: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if kind == "cross_entropy":
        return F.cross_entropy(output, target)
    onehot = F.one_hot(target, num_classes).to(output.dtype)
    if kind == "bce":  # sigmoid outputs, binary cross-entropy (Nøkland's code), summed over classes
        return F.binary_cross_entropy_with_logits(output, onehot, reduction="sum") / len(output)
    if kind == "mse":
        return 0.5 * ((output - onehot) ** 2).sum(1).mean()
    raise ValueError(f"unknown loss {kind!r}")


@torch.no_grad()
def evaluate(model, x, y, loss_kind, num_classes, batch_size=2000) -> tuple[float, float]:
    """(mean loss, error %) of ``model`` on ``(x, y)``."""
    total_loss, wrong = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        total_loss += float(classification_loss(loss_kind, out, y[i:i + batch_size], num_classes)) * len(out)
        wrong += int((out.argmax(1) != y[i:i + batch_size]).sum())
    return total_loss / len(x), 100.0 * wrong / len(x)


def train_classifier(data: dict, *, architecture: str, activation: str, rule: str, seed: int, epochs: float,
                     lr: float, optimizer: str = "sgd", momentum: float = 0.0, batch_size: int = 64,
                     loss: str = "cross_entropy", weight_decay: float = 0.0, init: str = "default",
                     init_scale: float | None = None, feedback_scale: float | None = None,
                     feedback_init: str = "uniform", trainable: str = "all", evals: int = 10,
                     eval_train: int = 2000) -> tuple[nn.Module, dict]:
    """Train a converted MLP on ``data`` (see :func:`load_data`); return the model and its history.

    ``trainable``: ``all``, ``output`` (only the last layer learns: "shallow" learning)
    or ``not-first`` (the first layer stays at its random init). ``epochs`` may be
    fractional. The history holds ``evals + 1`` points: examples seen, training loss
    and error (on the first ``eval_train`` training examples), validation loss and
    error; ``test_error`` is measured once at the end.
    """
    model = build_model(architecture, activation, rule, seed=seed, init=init, init_scale=init_scale,
                        feedback_scale=feedback_scale, feedback_init=feedback_init)
    layers = linears(model)
    frozen = {"all": [], "output": layers[:-1], "not-first": layers[:1]}[trainable]
    for layer in frozen:
        for p in layer.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = data["train"], data["val"], data["test"]
    k = data["num_classes"]
    n = len(train_x)
    total_steps = max(1, int(round(epochs * n / batch_size)))
    eval_at = set(np.linspace(0, total_steps, evals + 1).round().astype(int).tolist())
    generator = torch.Generator().manual_seed(20_000 + seed)
    history = {"examples": [], "train_loss": [], "train_error": [], "val_loss": [], "val_error": []}

    def record(step):
        model.eval()
        tl, te = evaluate(model, train_x[:eval_train], train_y[:eval_train], loss, k)
        vl, ve = evaluate(model, val_x, val_y, loss, k)
        model.train()
        history["examples"].append(step * batch_size)
        for name, value in (("train_loss", tl), ("train_error", te), ("val_loss", vl), ("val_error", ve)):
            history[name].append(value if math.isfinite(value) else float("nan"))

    start = time.perf_counter()
    step, order, position = 0, torch.randperm(n, generator=generator), 0
    record(0)
    while step < total_steps:
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=generator), 0
        idx = order[position:position + batch_size]
        position += batch_size
        opt.zero_grad(set_to_none=True)
        value = classification_loss(loss, model(train_x[idx]), train_y[idx], k)
        value.backward()
        opt.step()
        step += 1
        if step in eval_at:
            record(step)
    _, test_error = evaluate(model, test_x, test_y, loss, k)
    history["test_error"] = test_error
    history["seconds"] = time.perf_counter() - start
    return model, history
