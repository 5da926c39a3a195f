"""A layered energy-based network that settles to equilibrium: the model of equilibrium propagation
(Scellier & Bengio 2017, "Equilibrium Propagation: Bridging the Gap between Energy-Based Models
and Backpropagation", Front. Comput. Neurosci. 11:24, arXiv 1602.05179) and of contrastive
Hebbian learning (Movellan 1991; Xie & Seung 2003).

Layers ``s_0 = x -> s_1 -> ... -> s_L = y`` with symmetric connections between adjacent layers:
``W_k`` (the ``weight`` of ``layers[k]``, shape (width_{k+1}, width_k)) couples ``s_k`` and
``s_{k+1}`` both ways; ``b_{k+1}`` (its ``bias``) is the bias of ``s_{k+1}``. The paper's
Hopfield-like energy, cost and total energy (Section 2; equation numbers not checked here), batched over rows:

    E(s) = 1/2 sum_{k>=1} |s_k|^2 - sum_k rho(s_{k+1}) . W_k rho(s_k) - sum_{k>=1} b_k . rho(s_k)
    F(s) = E(s) + beta C(y),        C = 1/2 |y - d|^2

with ``rho`` the hard sigmoid ``clip(., 0, 1)`` and the input clamped (``s_0 = x``). The input
enters as ``x`` itself where the paper writes ``rho(x)``: the same for inputs in [0, 1] (MNIST
pixels, the paper's case), and standardized inputs are not cut at 0. The states follow the
gradient dynamics ``ds/dt = -dF/ds``, discretised as in the authors' code
(bscellier/Towards-a-Biologically-Plausible-Backprop, model.py): one step is

    s_k <- clip(s_k + epsilon * (rho'(s_k) (W_{k-1} rho(s_{k-1}) + W_k^T rho(s_{k+1}) + b_k) - s_k), 0, 1)

for every k >= 1 at once, so states stay in [0, 1] where ``rho(s) = s`` and ``rho' = 1``:
projected gradient descent on F over the box. A phase is a fixed number of such steps.

Initial states: **fresh**, all zeros, at every forward pass. The authors' code keeps
*persistent particles* (each training example's last free state, reused next epoch), which
needs example indices that a minibatch loop does not give; fresh states need more free steps
for the same accuracy, hence larger default ``n_free`` (:func:`paper_settings`).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..models.sequence import has_sequence_modules
from ._target import as_rows, holding, recover


def hard_sigmoid(s: torch.Tensor) -> torch.Tensor:
    """The paper's rho: ``clip(s, 0, 1)``."""
    return s.clamp(0.0, 1.0)


def paper_settings(hidden_layers: int) -> dict:
    """Relaxation settings for a network with ``hidden_layers`` hidden layers: epsilon and the
    number of steps of the weakly clamped phase as in the authors' code (train_model.py: 0.5;
    4, 6, 8 steps for 1, 2, 3 hidden layers). Free steps: the authors' 20, 150, 500 start from
    persistent states; ours start from zero, so the free phase gets at least 50 steps per
    hidden layer (checked: the output moves by < 1e-4 over the last steps on MNIST at init)."""
    n_free = {0: 20, 1: 50, 2: 150}.get(hidden_layers, 500)
    n_clamped = {0: 4, 1: 4, 2: 6}.get(hidden_layers, 8)
    return {"epsilon": 0.5, "n_free": n_free, "n_clamped": n_clamped}


def relax(x: torch.Tensor, states: list[torch.Tensor], weights, biases, steps: int, epsilon: float, *,
          nudge: torch.Tensor | None = None, clamp_output: torch.Tensor | None = None,
          cost: tuple[float, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``steps`` steps of the projected gradient dynamics of F from ``states`` (s_1 .. s_L, each (N, width)).

    ``nudge``: (N, width_L), the output force ``beta dC/dy`` (held fixed through the phase);
    ``clamp_output``: (N, width_L), the output held at this value (CHL's clamped phase);
    ``cost``: ``(beta, d)``, the paper's own nudge ``beta (y - d)`` at the current output (the dynamics
    of F with C = 1/2 |y - d|^2), for checking the linearised nudge against it.
    Differentiable in ``weights``/``biases`` (autograd may run through it); returns new tensors.
    """
    input_drive = x @ weights[0].t()  # the input is clamped: its drive is the same every step
    if biases[0] is not None:
        input_drive = input_drive + biases[0]
    top = len(states) - 1
    for _ in range(steps):
        rhos = [None] + [hard_sigmoid(s) for s in states]
        new = []
        for k, s in enumerate(states):  # s = s_{k+1}
            if k == 0:
                drive = input_drive
            else:
                drive = rhos[k] @ weights[k].t()
                if biases[k] is not None:
                    drive = drive + biases[k]
            if k < top:
                drive = drive + rhos[k + 2] @ weights[k + 1]
            inside = ((s >= 0) & (s <= 1)).to(s.dtype)  # rho'(s)
            force = inside * drive - s
            if k == top and nudge is not None:
                force = force - nudge
            if k == top and cost is not None:
                force = force - cost[0] * (s - cost[1])
            new.append(hard_sigmoid(s + epsilon * force))
        if clamp_output is not None:
            new[top] = clamp_output
        states = new
    return states


def correlations(x: torch.Tensor, states: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(-dE/dW_k, -dE/db_{k+1})`` summed over the batch: ``(rho(s_{k+1})^T rho(s_k), sum rho(s_{k+1}))``
    (``rho(s_0) = x``)."""
    rhos = [x] + [hard_sigmoid(s) for s in states]
    return [(rhos[k + 1].t() @ rhos[k], rhos[k + 1].sum(0)) for k in range(len(states))]


class _Equilibrium(torch.autograd.Function):
    """Forward: the free phase from zero states; returns the output state ``y = s_L^0``.

    Backward, given ``e = dL/dy`` (N, width_L), returns as the gradient of every ``W_k, b_k``:

    - ``"eqprop"`` (Scellier & Bengio 2017, Section 3, Theorem 1): the weakly clamped phase
      runs ``n_clamped`` steps from the free state with the output force ``beta N e`` (the
      linearisation at the free fixed point of the cost, whose per-example gradient is
      ``N e`` for a batch-mean loss), and the gradient is
      ``-(1 / (beta N)) [rho(s_{k+1}^beta)^T rho(s_k^beta) - rho(s_{k+1}^0)^T rho(s_k^0)]``
      (biases likewise), which tends to ``dL/dW`` at the free fixed point as beta -> 0;
    - ``"chl"`` (Movellan 1991; Xie & Seung 2003): the output is clamped to the target
      ``d`` and the hidden layers relax ``n_clamped`` steps from the free state; the gradient is
      ``-(1/N) [rho(s^clamped) rho(s^clamped)^T - rho(s^0) rho(s^0)^T]``. The target is the one
      given with :func:`target` at forward time, or recovered from ``e`` for a mean-reduced
      softmax cross-entropy (as drtp does);
    - under :func:`feedalign.exact_gradients` (``exact_gradient`` True): the true gradient of the
      loss at the free fixed point, by recurrent backprop: autograd through ``n_free`` steps of
      the free dynamics started at the (converged) free state, i.e. the truncated Neumann series
      of implicit differentiation.

    The input gets no gradient: it is clamped.
    """

    @staticmethod
    def forward(ctx, x, network, target, *params):
        weights, biases = network._split(params)
        with torch.no_grad():
            states = relax(x, network.zero_states(x), weights, biases, network.n_free, network.epsilon)
        ctx.network = network
        ctx.exact = network.exact_gradient
        ctx.phase = network.phase
        ctx.beta, ctx.epsilon, ctx.n_clamped, ctx.n_free = network.beta, network.epsilon, network.n_clamped, network.n_free
        ctx.has_target = target is not None
        ctx.save_for_backward(x, *(target,) if target is not None else (), *states, *params)
        ctx.n_states = len(states)
        return states[-1].clone()

    @staticmethod
    def backward(ctx, error):
        saved = list(ctx.saved_tensors)
        x = saved.pop(0)
        target = saved.pop(0) if ctx.has_target else None
        states, params = saved[:ctx.n_states], saved[ctx.n_states:]
        network = ctx.network
        weights, biases = network._split(params)
        error = error.reshape(states[-1].shape).to(states[-1].dtype)
        n = x.shape[0]
        if ctx.exact:
            grads = _recurrent_backprop(x, states, params, network, error, ctx.n_free, ctx.epsilon)
        elif ctx.phase == "eqprop":
            nudged = relax(x, states, weights, biases, ctx.n_clamped, ctx.epsilon, nudge=ctx.beta * n * error)
            grads = _contrast(x, nudged, states, scale=-1.0 / (ctx.beta * n))
        else:
            if target is None:
                target = recover(states[-1], error, rule="chl")
            clamped = relax(x, states[:-1] + [target], weights, biases, ctx.n_clamped, ctx.epsilon,
                            clamp_output=target)
            grads = _contrast(x, clamped, states, scale=-1.0 / n)
        flat = []
        for k in range(len(weights)):
            flat.append(grads[k][0])
            if biases[k] is not None:
                flat.append(grads[k][1])
        flat = [g if need else None for g, need in zip(flat, ctx.needs_input_grad[3:])]
        return (None, None, None, *flat)


def _contrast(x, second, first, scale):
    return [(scale * (a - b), scale * (c - d))
            for (a, c), (b, d) in zip(correlations(x, second), correlations(x, first))]


def _recurrent_backprop(x, states, params, network, error, steps, epsilon):
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in params]
        weights, biases = network._split(leaves)
        out = relax(x, [s.detach() for s in states], weights, biases, steps, epsilon)[-1]
        grads = torch.autograd.grad(out, leaves, error, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    paired, i = [], 0
    for b in biases:
        paired.append((grads[i], grads[i + 1] if b is not None else None))
        i += 2 if b is not None else 1
    return paired


class EnergyNetwork(nn.Module):
    """Layered energy network ``sizes[0] -> ... -> sizes[-1]``; see the module docstring.

    Args:
        layers: the ``nn.Linear`` connections, forward order (``layers[k]`` couples s_k and s_{k+1});
            ``bias=False`` layers give their layer no bias.
        phase: ``"eqprop"`` (weakly clamped second phase) or ``"chl"`` (fully clamped).
        epsilon: step size of the discretised dynamics, in (0, 1].
        n_free, n_clamped: steps of the free and of the second phase.
        beta: nudging strength (eqprop), > 0.

    ``forward(x)``: x (*, sizes[0]) -> the free-phase output state (*, sizes[-1]), in [0, 1].
    With grad enabled, ``loss.backward()`` puts the rule's contrastive update into the
    parameters' ``.grad`` (see :class:`_Equilibrium`); without grad it only settles.
    """

    def __init__(self, layers, *, phase: str = "eqprop", epsilon: float = 0.5, n_free: int = 50,
                 n_clamped: int = 4, beta: float = 1.0):
        super().__init__()
        layers = list(layers)
        if not layers or not all(type(layer) is nn.Linear for layer in layers):
            raise ValueError("an energy network is built from nn.Linear layers only (no Conv2d or other layers)")
        for k, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            if a.out_features != b.in_features:
                raise ValueError(f"layers {k + 1} and {k + 2} do not chain: {a.out_features} outputs feed "
                                 f"{b.in_features} inputs")
        if phase not in ("eqprop", "chl"):
            raise ValueError(f"phase must be 'eqprop' or 'chl'; got {phase!r}")
        for name, value in (("n_free", n_free), ("n_clamped", n_clamped)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not (isinstance(epsilon, (int, float)) and 0 < epsilon <= 1):
            raise ValueError(f"epsilon must be in (0, 1]; got {epsilon!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite positive number; got {beta!r}")
        self.layers = nn.ModuleList(layers)
        self.phase, self.epsilon, self.n_free, self.n_clamped, self.beta = phase, float(epsilon), n_free, n_clamped, float(beta)
        self.exact_gradient = False  # feedalign.exact_gradients: the true gradient at the free fixed point
        self.target = None  # CHL's target for the next forward passes (see target())

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    def extra_repr(self) -> str:
        return (f"sizes={self.sizes}, phase={self.phase!r}, rho=hard_sigmoid, epsilon={self.epsilon}, "
                f"n_free={self.n_free}, n_clamped={self.n_clamped}" + (f", beta={self.beta}" if self.phase == "eqprop" else ""))

    def _params(self) -> list[torch.Tensor]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]

    def _split(self, params):
        weights, biases, i = [], [], 0
        for layer in self.layers:
            weights.append(params[i])
            i += 1
            if layer.bias is not None:
                biases.append(params[i])
                i += 1
            else:
                biases.append(None)
        return weights, biases

    def zero_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.new_zeros(x.shape[0], width) for width in self.sizes[1:]]

    def settle(self, x: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        """The free phase without grad: states s_1 .. s_L after ``steps`` (default ``n_free``) steps from zero."""
        params = [p.detach() for p in self._params()]
        with torch.no_grad():
            return relax(x, self.zero_states(x), *self._split(params), self.n_free if steps is None else steps,
                         self.epsilon)

    def energy(self, x: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
        """E(s) per example, (N,)."""
        e = sum(0.5 * (s * s).sum(1) for s in states)
        for (w_term, b_term) in [(rho_out.mul(rho_in @ layer.weight.t()).sum(1),
                                  0 if layer.bias is None else (rho_out * layer.bias).sum(1))
                                 for layer, rho_in, rho_out in zip(self.layers, [x] + [hard_sigmoid(s) for s in states[:-1]],
                                                                   [hard_sigmoid(s) for s in states])]:
            e = e - w_term - b_term
        return e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        params = self._params()
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return self.settle(flat)[-1].reshape(*lead, -1)
        target = None if self.target is None else as_rows(self.target, torch.Size((*lead, self.sizes[-1])), flat.dtype, rule="chl")
        out = _Equilibrium.apply(flat, self, target, *params)
        return out.reshape(*lead, -1)


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the forward passes of a ``chl`` (or ``eqprop``) ``model`` capture ``y`` as the
    target (class indices (N,) or (N, out_features)); CHL clamps its output to it. EP ignores it (its
    nudge is the output error)."""
    if not isinstance(model, EnergyNetwork):
        raise ValueError(f"target needs a model converted with 'eqprop' or 'chl', got {type(model).__name__}")
    with holding(model, "target", y, rule="chl"):
        yield model


def from_mlp(model: nn.Module, phase: str) -> EnergyNetwork:
    """An :class:`EnergyNetwork` on ``model``'s ``nn.Linear`` layers (the same modules: its parameters
    stay the model's), with :func:`paper_settings` for its depth. The model's activations are not
    used: the energy's rho is the hard sigmoid."""
    layers = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            layers.append(m)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"{phase} builds an energy network from an MLP's nn.Linear layers; found {type(m).__name__} "
                             "(convolutional networks are not supported)")
        elif any(True for _ in m.parameters(recurse=False)):
            raise ValueError(f"{phase} builds an energy network from an MLP's nn.Linear layers; {type(m).__name__} has "
                             "parameters that would not take part in it")
    if has_sequence_modules(model):
        raise ValueError(f"{phase} builds an energy network from an MLP's nn.Linear layers; attention and recurrent "
                         "modules are not supported")
    return EnergyNetwork(layers, phase=phase, **paper_settings(len(layers) - 1))
