"""Restricted Boltzmann machines trained by contrastive divergence (Hinton 2002, Neural Computation
14:1771, "Training products of experts by minimizing contrastive divergences"), and layer-wise
pre-training of an MLP with them (Hinton & Salakhutdinov 2006, Science 313:504).

A binary RBM with visible ``v`` (D,), hidden ``h`` (H,), weights ``W`` (H, D), biases ``b`` (D,),
``c`` (H,) has the energy ``E(v, h) = -v b - h c - h W v`` and ``p(v, h) = exp(-E) / Z``. Summing
out ``h`` gives the free energy

    F(v) = -v b - sum_j softplus(c_j + W_j v),       p(v) = exp(-F(v)) / Z,

and the negative log-likelihood gradient of a data set is a difference of two expectations,

    d(-log p(v))/dtheta = dF(v)/dtheta - E_{v' ~ model}[dF(v')/dtheta]

(for W: ``-(<h v^T>_data - <h v^T>_model)`` with ``h`` at its conditional mean
``p(h = 1 | v) = sigmoid(c + W v)``). CD-k replaces the model expectation by ``v_k``, the end
of a k-step block-Gibbs chain started at the data (``h ~ p(h | v)``, ``v ~ p(v | h)``, k times;
Hinton 2002 Eq. 5 and Sec. 4). Here that is the gradient of a surrogate loss,

    cd_loss(v_0) = mean_n F(v_0) - mean_n F(v_k)     (v_k held fixed),

so ``rbm.cd_loss(v, k, generator).backward()`` puts the CD-k estimate in ``.grad`` and any
``torch.optim`` optimizer takes the step: the same loop as every other model here.

Why CD is not a ``convert`` rule: ``convert`` keeps a supervised model's forward pass and changes
how the gradient of *its loss* reaches the weights. An RBM has no such loss or output: it models
``p(x)``, unsupervised, and its update comes from a Markov chain over its own states. What fits
the library is what it was used for in deep nets: pre-training a stack of layers, one RBM each,
then supervised training of the stack with any rule (:func:`pretrain_mlp`).
"""
from __future__ import annotations

import itertools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn


class RBM(nn.Module):
    """A binary-binary RBM. ``weight`` (hidden, visible), ``visible_bias`` (visible,), ``hidden_bias`` (hidden,).

    Initialisation as Hinton's practical guide (UTML TR 2010-003, Sec. 8): ``W ~ N(0, 0.01^2)``, biases 0.
    """

    def __init__(self, visible: int, hidden: int):
        super().__init__()
        for name, value in (("visible", visible), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.visible, self.hidden = visible, hidden
        self.weight = nn.Parameter(torch.empty(hidden, visible))
        self.visible_bias = nn.Parameter(torch.empty(visible))
        self.hidden_bias = nn.Parameter(torch.empty(hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01)
            self.visible_bias.zero_()
            self.hidden_bias.zero_()

    def extra_repr(self) -> str:
        return f"visible={self.visible}, hidden={self.hidden}"

    def hidden_probabilities(self, v: torch.Tensor) -> torch.Tensor:
        """``p(h = 1 | v) = sigmoid(v W^T + c)``: (N, visible) -> (N, hidden)."""
        return torch.sigmoid(F.linear(v, self.weight, self.hidden_bias))

    def visible_probabilities(self, h: torch.Tensor) -> torch.Tensor:
        """``p(v = 1 | h) = sigmoid(h W + b)``: (N, hidden) -> (N, visible)."""
        return torch.sigmoid(F.linear(h, self.weight.t(), self.visible_bias))

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """``F(v) = -v b - sum_j softplus(c_j + W_j v)``: (N, visible) -> (N,)."""
        return -v.mv(self.visible_bias) - F.softplus(F.linear(v, self.weight, self.hidden_bias)).sum(1)

    forward = free_energy

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``v_k``: k steps of block Gibbs sampling from ``v`` (binary samples, (N, visible)).

        ``generator``: on ``v``'s device; None uses torch's global generator."""
        _check_k(k)
        for _ in range(k):
            h = torch.bernoulli(self.hidden_probabilities(v), generator=generator)
            v = torch.bernoulli(self.visible_probabilities(h), generator=generator)
        return v

    def cd_loss(self, v: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """The CD-k surrogate ``mean F(v) - mean F(v_k)`` of a batch ``v`` (N, visible) with entries in [0, 1]
        (binary data, or probabilities used as data); its gradient is the CD-k estimate of the mean
        negative log-likelihood gradient (Hinton 2002). Its value is not a log-likelihood."""
        self._check_data(v)
        negative = self.gibbs(v, k, generator)
        return self.free_energy(v).mean() - self.free_energy(negative).mean()

    def log_partition(self) -> torch.Tensor:
        """``log Z``, exactly, by enumerating the 2^min(visible, hidden) states of the smaller layer
        (refused beyond 2^20 states: use it on toy models only)."""
        if min(self.visible, self.hidden) > 20:
            raise ValueError(f"log_partition enumerates 2^{min(self.visible, self.hidden)} states; too many")
        if self.visible <= self.hidden:
            return torch.logsumexp(-self.free_energy(all_states(self.visible, self.weight)), 0)
        h = all_states(self.hidden, self.weight)  # sum over v of exp(-E) for each h, in closed form
        return torch.logsumexp(h.mv(self.hidden_bias) + F.softplus(F.linear(h, self.weight.t(),
                                                                             self.visible_bias)).sum(1), 0)

    def log_likelihood(self, v: torch.Tensor) -> torch.Tensor:
        """Mean ``log p(v)`` of a batch, exact (``-F(v) - log Z``, :meth:`log_partition`)."""
        self._check_data(v)
        return -self.free_energy(v).mean() - self.log_partition()

    def _check_data(self, v: torch.Tensor) -> None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"RBM data must be a tensor, got {type(v).__name__}")
        if v.dim() != 2 or v.shape[1] != self.visible:
            raise ValueError(f"RBM data must have shape (N, {self.visible}), got {tuple(v.shape)}")
        if v.numel() and not bool(((v >= 0) & (v <= 1)).all()):
            raise ValueError("RBM data must lie in [0, 1] (binary units, or probabilities used as data)")


def all_states(n: int, like: torch.Tensor) -> torch.Tensor:
    """Every binary vector of length ``n``, (2^n, n), in ``like``'s dtype and device (first unit slowest)."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=like.dtype, device=like.device)


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k (Gibbs steps) must be an int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k (Gibbs steps) must be >= 1, got {k}")


def pretrain_mlp(model: nn.Sequential, x: torch.Tensor, *, epochs: int = 1, lr: float = 0.05, k: int = 1,
                 batch_size: int = 100, momentum: float = 0.5, seed: int = 0) -> list[RBM]:
    """Greedy layer-wise pre-training of an MLP's hidden layers as RBMs (Hinton & Salakhutdinov 2006),
    in place; returns the trained RBMs.

    ``model``: an ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free activations, such as
    ``feedalign.mlp(...)``. Every ``nn.Linear`` but the last (the output, left as it is) is trained
    as an RBM with ``visible = in_features``, ``hidden = out_features`` on ``x`` (N, in) with
    entries in [0, 1] for the first, and on the previous RBM's ``p(h | v)`` for the next; then
    ``weight <- W`` and ``bias <- c``, so the layer computes ``W v + c`` and, with
    ``activation="sigmoid"``, exactly the RBM's ``p(h = 1 | v)``. Training: ``epochs`` passes of
    CD-``k`` on shuffled mini-batches of ``batch_size``, SGD with ``lr`` and ``momentum``; every
    random draw from ``seed``. Call it before ``feedalign.convert`` (or with ``inplace`` models,
    before building the optimizer: the parameters are changed in place, not replaced).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"pretrain_mlp expects an nn.Sequential (feedalign.mlp), got {type(model).__name__}")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("pretrain_mlp needs at least one hidden layer (two nn.Linear layers)")
    if any(not isinstance(m, nn.Linear) and any(True for _ in m.parameters()) for m in model):
        raise ValueError("pretrain_mlp needs nn.Linear layers with parameter-free activations between them")
    if linears[0].bias is None:
        raise ValueError("pretrain_mlp needs layers with biases (the RBM's hidden biases go there)")
    for name, value, kind in (("epochs", epochs, int), ("batch_size", batch_size, int), ("seed", seed, int)):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    for name, value in (("lr", lr), ("momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    _check_k(k)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    weight = linears[0].weight
    data = x.detach().reshape(len(x), -1).to(device=weight.device, dtype=weight.dtype)
    if data.shape[1] != linears[0].in_features:
        raise ValueError(f"x has {data.shape[1]} features per example; the first layer takes "
                         f"{linears[0].in_features}")
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    trained = []
    for layer in linears[:-1]:
        if layer.bias is None:
            raise ValueError("pretrain_mlp needs layers with biases (the RBM's hidden biases go there)")
        rbm = RBM(layer.in_features, layer.out_features).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():  # the same init stream whatever the global RNG is
            rbm.weight.copy_(torch.randn(rbm.weight.shape, generator=generator, device=weight.device) * 0.01)
        optimizer = torch.optim.SGD(rbm.parameters(), lr=lr, momentum=momentum)
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator, device=weight.device)
            for start in range(0, len(data), batch_size):
                optimizer.zero_grad()
                rbm.cd_loss(data[order[start:start + batch_size]], k, generator).backward()
                optimizer.step()
        with torch.no_grad():
            layer.weight.copy_(rbm.weight)
            layer.bias.copy_(rbm.hidden_bias)
            data = rbm.hidden_probabilities(data)
        trained.append(rbm)
    return trained
