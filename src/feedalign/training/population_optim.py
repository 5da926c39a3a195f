"""Optimizers for population training: a torch optimizer's update for every member at once.

Parameters are stacked, (N, ...) with member i in slice i; the learning rate and L2 weight
decay are (N,) tensors, one value per member (``lr_i = 0`` freezes member i, a diverged
run). Each class does, slice by slice, what its ``torch.optim`` (or feedalign) counterpart
does for one member's parameter, and :meth:`PopulationOptimizer.member_state` gives member
i's slice of a parameter's state in that optimizer's own format, so a member's checkpoint
resumes as a separate run. tests/test_population.py checks each against its counterpart in
float64, member by member. ``torch.optim`` itself cannot serve here: it has one learning rate per
parameter group, and a member is a slice of a parameter, not a group.
"""
from __future__ import annotations

import abc

import torch


class PopulationOptimizer(abc.ABC):
    """Per-member ``lr`` and ``weight_decay`` (N,) over stacked ``params``; a subclass gives
    :meth:`_update` (one parameter's step from its gradient) and :meth:`member_state`."""

    def __init__(self, params, lr: torch.Tensor, *, weight_decay: torch.Tensor | None = None):
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay if weight_decay is not None and bool((weight_decay != 0).any()) else None
        self.state: list[dict] = [{} for _ in self.params]
        self._index = {id(p): k for k, p in enumerate(self.params)}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every ``.grad`` (as ``torch.optim``'s default; ``set_to_none=False`` zeroes them instead)."""
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One step from every parameter's ``.grad``, which it consumes: an update may write into the
        gradient (saving a pass over the stacked tensor, which outgrows the CPU's cache) and then drops
        it (``.grad`` is None afterwards)."""
        for k, p in enumerate(self.params):
            if p.grad is not None:
                self._update(k, p, p.grad)
                p.grad = None

    @torch.no_grad()
    def step_linear(self, layers) -> None:
        """One step of stacked linear layers from their signals, no ``.grad`` formed: for each
        ``(weight, bias, delta, input)`` (delta (N, B, out), input (N, B, in)) the weight's gradient is
        ``delta^T input`` (N, out, in) and the bias's ``sum_B delta`` (N, out)."""
        for weight, bias, delta, input in layers:
            self._update(self._index[id(weight)], weight, torch.bmm(delta.mT, input))
            if bias is not None:
                self._update(self._index[id(bias)], bias, delta.sum(1))

    def member_state(self, p: torch.Tensor, i: int) -> dict:
        """Member i's slice of the state of stacked parameter ``p``, as the member's own torch
        optimizer keeps it (empty before ``p``'s first step)."""
        state = self.state[self._index[id(p)]]
        return self._member_state(state, i) if state else {}

    @abc.abstractmethod
    def _member_state(self, state: dict, i: int) -> dict:
        """Member i's slice of a (non-empty) parameter state, in the counterpart optimizer's format."""

    @abc.abstractmethod
    def _update(self, k: int, p: torch.Tensor, grad: torch.Tensor) -> None:
        """One step of stacked parameter ``p`` (index k) from its gradient ``grad``, which it may write into."""

    def _per_member(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(N,) values shaped to broadcast over ``p`` (N, ...)."""
        return values.view((-1,) + (1,) * (p.dim() - 1))

    def _decayed(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``grad + wd_i p`` (L2 weight decay as torch optimizers add it), written into ``grad``."""
        return grad if self.weight_decay is None else grad.addcmul_(p, self._per_member(self.weight_decay, p))


class PopulationSGD(PopulationOptimizer):
    """``torch.optim.SGD`` (dampening 0): ``g = grad + wd_i p``; ``buf = g`` (first step) else
    ``momentum buf + g``; ``g = g + momentum buf`` (Nesterov) else ``buf``; ``p -= lr_i g``."""

    def __init__(self, params, lr: torch.Tensor, *, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: torch.Tensor | None = None):
        super().__init__(params, lr, weight_decay=weight_decay)
        self.momentum, self.nesterov = float(momentum), nesterov

    @torch.no_grad()
    def step_linear(self, layers) -> None:
        """As :meth:`PopulationOptimizer.step_linear`; with momentum (not Nesterov), after the first step the
        weight-gradient GEMM accumulates straight into the momentum buffer, ``buf = momentum buf +
        delta^T input``: the stacked weights outgrow the CPU's cache, and this takes two passes over
        them, not four."""
        rest = []
        for weight, bias, delta, input in layers:
            buf = self.state[self._index[id(weight)]].get("momentum_buffer")
            if buf is None or self.nesterov:
                rest.append((weight, bias, delta, input))
                continue
            buf.baddbmm_(delta.mT, input, beta=self.momentum)
            if self.weight_decay is not None:
                buf.addcmul_(weight, self._per_member(self.weight_decay, weight))
            weight.addcmul_(buf, self._per_member(self.lr, weight), value=-1)
            if bias is not None:
                self._update(self._index[id(bias)], bias, delta.sum(1))
        super().step_linear(rest)

    def _update(self, k, p, grad):
        g = self._decayed(p, grad)
        if self.momentum:
            buf = self.state[k].get("momentum_buffer")
            if buf is None:
                buf = self.state[k]["momentum_buffer"] = g.clone()
            elif self.nesterov:
                buf.mul_(self.momentum).add_(g)
            else:  # buf = momentum buf + g in one pass, into g, which becomes the buffer (the old one's memory
                # serves the next gradient)
                buf = self.state[k]["momentum_buffer"] = g.add_(buf, alpha=self.momentum)
            g = g.add(buf, alpha=self.momentum) if self.nesterov else buf
        p.addcmul_(g, self._per_member(self.lr, p), value=-1)

    def _member_state(self, state, i):
        return {"momentum_buffer": state["momentum_buffer"][i].clone()}


class PopulationAdam(PopulationOptimizer):
    """``torch.optim.Adam`` (betas 0.9, 0.999, eps 1e-8; L2 weight decay): ``m = lerp(m, g, 1 - b1)``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= lr_i / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(self, params, lr, *, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay=None):
        super().__init__(params, lr, weight_decay=weight_decay)
        self.betas, self.eps = betas, eps

    def _update(self, k, p, grad):
        g = self._decayed(p, grad)
        state = self.state[k]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        beta1, beta2 = self.betas
        state["step"] += 1
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(self.eps)
        step_size = self._per_member(self.lr, p) / (1 - beta1 ** state["step"])
        p.addcdiv_(state["exp_avg"] * step_size, denom, value=-1)

    def _member_state(self, state, i):
        return {"step": torch.tensor(float(state["step"])), "exp_avg": state["exp_avg"][i].clone(),
                "exp_avg_sq": state["exp_avg_sq"][i].clone()}


class PopulationRMSprop(PopulationOptimizer):
    """``torch.optim.RMSprop`` (alpha 0.99, eps 1e-8, not centred): ``v = alpha v + (1 - alpha) g^2``;
    ``buf = momentum buf + g / (sqrt(v) + eps)``, ``p -= lr_i buf`` (without momentum
    ``p -= lr_i g / (sqrt(v) + eps)``)."""

    def __init__(self, params, lr, *, momentum: float = 0.0, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay=None):
        super().__init__(params, lr, weight_decay=weight_decay)
        self.momentum, self.alpha, self.eps = float(momentum), alpha, eps

    def _update(self, k, p, grad):
        g = self._decayed(p, grad)
        state = self.state[k]
        if not state:
            state.update(step=0, square_avg=torch.zeros_like(p))
            if self.momentum:
                state["momentum_buffer"] = torch.zeros_like(p)
        state["step"] += 1
        state["square_avg"].mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
        avg = state["square_avg"].sqrt().add_(self.eps)
        lr = self._per_member(self.lr, p)
        if self.momentum:
            state["momentum_buffer"].mul_(self.momentum).addcdiv_(g, avg)
            p.addcmul_(state["momentum_buffer"], lr, value=-1)
        else:
            p.addcdiv_(g * lr, avg, value=-1)

    def _member_state(self, state, i):
        member = {"step": torch.tensor(float(state["step"])), "square_avg": state["square_avg"][i].clone()}
        if self.momentum:
            member["momentum_buffer"] = state["momentum_buffer"][i].clone()
        return member


class PopulationGravesRMSprop(PopulationOptimizer):
    """:class:`feedalign.training.optimizers.GravesRMSprop` (decay 0.95, stabilizer 1e-3 inside the root):
    ``n = d n + (1 - d) g^2``, ``gbar = d gbar + (1 - d) g``,
    ``delta = momentum delta - lr_i g / sqrt(n - gbar^2 + stabilizer)``, ``p += delta``."""

    def __init__(self, params, lr, *, momentum: float = 0.9, decay: float = 0.95, stabilizer: float = 1e-3,
                 weight_decay=None):
        super().__init__(params, lr, weight_decay=weight_decay)
        self.momentum, self.decay, self.stabilizer = float(momentum), decay, stabilizer

    def _update(self, k, p, grad):
        g = self._decayed(p, grad)
        state = self.state[k]
        if not state:
            state.update(square_avg=torch.zeros_like(p), grad_avg=torch.zeros_like(p), delta=torch.zeros_like(p))
        n, gbar, delta = state["square_avg"], state["grad_avg"], state["delta"]
        n.mul_(self.decay).addcmul_(g, g, value=1 - self.decay)
        gbar.mul_(self.decay).add_(g, alpha=1 - self.decay)
        root = n.addcmul(gbar, gbar, value=-1).add_(self.stabilizer).sqrt_()
        delta.mul_(self.momentum).addcdiv_(g * self._per_member(self.lr, p), root, value=-1)
        p.add_(delta)

    def _member_state(self, state, i):
        return {name: tensor[i].clone() for name, tensor in state.items()}


def make_population_optimizer(config, params, lr: torch.Tensor, weight_decay: torch.Tensor) -> PopulationOptimizer:
    """The population counterpart of ``feedalign.training.build.make_optimizer`` for ``config``
    (L2 weight decay; ``lr`` and ``weight_decay`` (N,) per member)."""
    if config.optimizer == "sgd":
        return PopulationSGD(params, lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=weight_decay)
    if config.optimizer == "adam":
        return PopulationAdam(params, lr, weight_decay=weight_decay)
    if config.optimizer == "rmsprop-graves":
        return PopulationGravesRMSprop(params, lr, momentum=config.momentum, weight_decay=weight_decay)
    if config.optimizer == "rmsprop":
        return PopulationRMSprop(params, lr, momentum=config.momentum, weight_decay=weight_decay)
    raise ValueError(f"no population optimizer for {config.optimizer!r}")
