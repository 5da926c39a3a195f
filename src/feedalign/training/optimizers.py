"""Optimizers a paper used that ``torch.optim`` has only approximately, and the linear learning-rate warm-up."""
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


class LinearWarmup:
    """Linear learning-rate warm-up before any epoch schedule: optimizer step ``n`` (from 1) of the first ``steps``
    runs at ``lr * n / steps``, with ``lr`` what ``schedule`` set; from step ``steps + 1`` on, at ``lr`` itself.

    The warm-up as Goyal et al. 2017 (arXiv 1706.02677, Sec. 2.2: from a small rate to the target in equal steps)
    and the transformer recipes use it (Vaswani et al. 2017, 4000 steps; Dosovitskiy et al. 2021, 10k steps), except
    that the first step takes ``lr / steps``, not 0 (a step at rate 0 would change nothing).

    It acts through the optimizer's step hooks: before a step it scales each group's rate, after it puts the
    scheduled rate back, so the epoch schedule (``schedule``, stepped by :meth:`step` once per epoch) never sees a
    warmed rate and the rates in a checkpoint are the schedule's. The steps taken are in :meth:`state_dict`, with the
    schedule's, so a resumed run warms up exactly as an uninterrupted one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule, steps: int):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"warm-up steps must be a positive int, got {steps!r}")
        self.optimizer, self.schedule, self.steps, self.taken = optimizer, schedule, steps, 0
        self._scheduled: list | None = None
        self._hooks = (optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after))

    def factor(self, n: int) -> float:
        """The multiplier of optimizer step ``n`` (from 1)."""
        return n / self.steps if n <= self.steps else 1.0

    def _before(self, optimizer, args, kwargs) -> None:
        self.taken += 1
        if self.taken <= self.steps:
            self._scheduled = [group["lr"] for group in optimizer.param_groups]
            factor = self.factor(self.taken)
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor

    def _after(self, optimizer, args, kwargs) -> None:
        if self._scheduled is not None:
            for group, lr in zip(optimizer.param_groups, self._scheduled):
                group["lr"] = lr
            self._scheduled = None

    def step(self) -> None:
        """The end of an epoch: step the epoch schedule."""
        self.schedule.step()

    def get_last_lr(self) -> list[float]:
        return self.schedule.get_last_lr()

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "warmup_steps": self.steps, "warmup_taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        if state.get("warmup_steps") != self.steps:
            raise ValueError(f"checkpoint's warm-up is over {state.get('warmup_steps')!r} steps, this run's over "
                             f"{self.steps}")
        self.schedule.load_state_dict(state["schedule"])
        self.taken = int(state["warmup_taken"])
