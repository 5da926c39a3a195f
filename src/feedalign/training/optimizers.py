"""Optimizers a paper used that ``torch.optim`` has only approximately."""
from __future__ import annotations

import torch


class GravesRMSprop(torch.optim.Optimizer):
    """Centred RMSprop with momentum as in Graves 2013 (arXiv 1308.0850, eqs. 38-41) and in Lee et al.'s DTP
    code (donghyunlee/dtp, ``util.rms_prop``), per parameter ``w`` with gradient ``g``::

        n     <- decay n     + (1 - decay) g^2
        gbar  <- decay gbar  + (1 - decay) g
        delta <- momentum delta - lr g / sqrt(n - gbar^2 + stabilizer)
        w     <- w + delta

    ``torch.optim.RMSprop(centered=True)`` adds its eps outside the root, ``sqrt(n - gbar^2) + eps``; here the
    stabilizer sits inside it, which bounds the first steps' size by ``lr / sqrt(stabilizer)``. Defaults: the DTP
    code's decay 0.95, momentum 0.9, stabilizer 1e-3. ``weight_decay`` adds ``weight_decay * w`` to ``g``.
    """

    def __init__(self, params, lr: float = 1e-3, decay: float = 0.95, momentum: float = 0.9,
                 stabilizer: float = 1e-3, weight_decay: float = 0.0):
        for name, value, low, high in (("lr", lr, 0.0, None), ("decay", decay, 0.0, 1.0),
                                       ("momentum", momentum, 0.0, 1.0), ("stabilizer", stabilizer, 0.0, None),
                                       ("weight_decay", weight_decay, 0.0, None)):
            if not (value >= low and (high is None or value < high)):
                raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), got {value!r}")
        if stabilizer == 0.0:
            raise ValueError("stabilizer must be positive (it keeps the root away from 0)")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, stabilizer=stabilizer,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay, momentum = group["decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                    state["grad_avg"] = torch.zeros_like(p)
                    state["delta"] = torch.zeros_like(p)
                n, gbar, delta = state["square_avg"], state["grad_avg"], state["delta"]
                n.mul_(decay).addcmul_(g, g, value=1 - decay)
                gbar.mul_(decay).add_(g, alpha=1 - decay)
                root = n.addcmul(gbar, gbar, value=-1).add_(group["stabilizer"]).sqrt_()
                delta.mul_(momentum).addcdiv_(g, root, value=-group["lr"])
                p.add_(delta)
        return loss
