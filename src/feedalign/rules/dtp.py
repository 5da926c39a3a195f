"""Difference target propagation (Lee, Zhang, Fischer & Bengio 2015, ECML/PKDD, arXiv 1412.7525,
"Difference Target Propagation", Algorithm 1). The paper's text could not be read here (only its
abstract), so equation numbers are left out; the steps below were checked line by line against the
authors' own code (donghyunlee/dtp, ``conti_dtp.py``: first target, difference targets, the layer
losses summed over units and averaged over rows, the inverses' loss on Gaussian-corrupted inputs),
which ``feedalign reproduce dtp`` runs with that code's settings.

A network of ``M`` layers ``h_i = f_i(h_{i-1})``, ``f_i(h) = s_i(W_i h + b_i)`` (row vectors here:
``h W_i^T``), is trained with *targets* instead of gradients:

- the top hidden layer's target is a gradient step on the loss (the paper's "first target",
  step size eta_hat)::

      hhat_{M-1} = h_{M-1} - eta_hat * dl/dh_{M-1}

  where ``l`` is the per-example loss (see "batches" below);
- every lower target comes down through a learnt approximate inverse ``g_i`` of ``f_i``, with
  the *difference* correction that makes it exact for ``hhat_i = h_i`` whatever ``g_i`` is::

      hhat_{i-1} = h_{i-1} + g_i(hhat_i) - g_i(h_i),     g_i(h) = s_{i-1}(V_i h + c_i)

- each layer ``i < M`` is trained on its layer-local loss, with its input fixed::

      L_i = || f_i(h_{i-1}) - hhat_i ||^2

  and the output layer ``M`` on the global loss itself (its gradient, as under backprop);
- each inverse ``g_i`` (``i = 2 .. M-1``) is trained on the reconstruction loss of a corrupted
  input (the paper's noise injection, epsilon ~ N(0, sigma^2))::

      L_inv_i = || g_i(f_i(h_{i-1} + epsilon)) - (h_{i-1} + epsilon) ||^2

  with ``f_i``'s parameters held fixed. The first layer needs no inverse (its input is the data).

How it fits ``convert`` and the user's loop (``loss.backward(); optimizer.step()``):

- the model is cut at every layer's input as for DFA (:mod:`._cut`), and its output goes through
  one autograd Function. Its backward receives ``e = dL/dy``, forms ``dL/dh_{M-1} = e W_M`` (the
  one place the rule reads a forward weight, as the paper's first target does), computes every
  target top-down with the *current* inverses (no gradient flows through a target: the paper
  treats targets as constants), and hands each ``h_i`` the gradient of ``L_i`` with respect to
  ``h_i``. Autograd then deposits ``dL_i/dW_i`` and ``dL_i/db_i`` in ``.grad`` of every hidden
  layer, and ``dL/dW_M`` in the output layer's;
- the reconstruction loss is built in the *forward* pass (the noise is drawn there, from a
  counter-seeded generator, so a copy or a reloaded state_dict draws the same noise) and joined to
  the same Function, whose backward gives it gradient 1: the one ``loss.backward()`` puts
  ``dL_inv_i/dV_i`` and ``dL_inv_i/dc_i`` in the inverses' ``.grad``. So one backward pass
  trains both, from the same batch and the same forward values, the order of Algorithm 1
  (inverses and forward layers from the same ``h``). ``after_step`` was the alternative; it
  would need a second forward pass and its own optimizer step, which the user's loop does not have.

Batches: ``L`` is the user's loss, taken to be mean-reduced over the ``N`` rows (every PyTorch
loss's default), so the per-example gradient is ``N e``: ``hhat_{M-1} = h_{M-1} - eta_hat N e W_M``.
Layer losses and reconstruction losses are summed over units and averaged over rows. Then the
top hidden layer's signal is ``2 eta_hat`` times backprop's, and the default
``eta_hat = 0.5`` makes that layer's update equal to backprop's: learning rates carry over.

The inverse ``g_i`` of hidden layer i (i >= 2) lives on that layer as two Parameters,
``feedback_inverse_weight`` ``V_i`` (width_{i-1}, width_i) and ``feedback_inverse_bias`` ``c_i``;
an optimizer built on ``model.parameters()`` after ``convert`` trains them with the forward
layers' learning rate. The paper uses separate rates: build the groups with
:func:`parameter_groups` (or, in the training engine, the rule option ``inverse_lr``).
``eta_hat`` and ``sigma`` are set with :func:`configure` (rule options ``target_step``, ``noise``);
the defaults (0.5, 0.1) are this library's choice. The authors' 7x240 MNIST run uses
eta_hat = 0.3277 on the batch-mean loss (0.003277 per example at batch 100) and sigma = 0.36.
The root gets two buffers, ``dtp_noise_seed`` (from ``convert``'s seed) and
``dtp_noise_draws`` (one per training forward pass), which fix every epsilon.

What a model must be: an ``nn.Sequential`` of ``nn.Linear`` layers with parameter-free modules
between them (the activations ``s_i``; ``feedalign.mlp`` builds these), ending with its output
``nn.Linear``. ``g_i`` uses the modules that produce ``h_{i-1}`` as its nonlinearity.
Under :func:`feedalign.exact_gradients` the model is backprop and the inverses get no gradient.
"""
from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._cut import HiddenCut, find_cut
from .base import FeedbackRole, LearningRule, linear_stack, register, sample_feedback, trainable_layers


def noise_stream(seed: int, draw: int) -> int:
    """The generator seed of draw number ``draw`` (from 0) of a model whose ``dtp_noise_seed`` is ``seed``."""
    return (seed * 1_000_003 + draw) % (2 ** 63)


def draw_noise(root: nn.Module, shapes: list[torch.Size], sigma: float, like: torch.Tensor) -> list[torch.Tensor]:
    """epsilon for one training forward pass, one N(0, sigma^2) tensor per shape, drawn on the CPU in float32
    from the root's ``dtp_noise_seed`` and ``dtp_noise_draws``; counts the draw."""
    generator = torch.Generator().manual_seed(noise_stream(int(root.dtp_noise_seed), int(root.dtp_noise_draws)))
    root.dtp_noise_draws += 1
    return [(torch.randn(shape, generator=generator) * sigma).to(like) for shape in shapes]


class _DifferenceTargets(torch.autograd.Function):
    """Identity on the output ``y``; backward sends ``e`` to ``y``, ``dL_i/dh_i`` to each hidden ``h_i``
    (the targets above), and 1 to the reconstruction loss."""

    @staticmethod
    def forward(ctx, output, reconstruction, cut, *hidden):
        ctx.cut = cut
        ctx.save_for_backward(*hidden)
        ctx.has_reconstruction = reconstruction is not None
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        hidden = ctx.saved_tensors
        signals = target_signals(ctx.cut, error, hidden)
        ones = torch.ones((), dtype=error.dtype, device=error.device) if ctx.has_reconstruction else None
        return (error, ones, None, *signals)


@torch.no_grad()
def target_signals(cut: HiddenCut, error: torch.Tensor, hidden) -> list[torch.Tensor]:
    """``dL_i/dh_i = (2/N)(h_i - hhat_i)`` for every hidden layer, from ``e = dL/dy`` and the ``h_i``."""
    flat = [h.reshape(-1, h.shape[-1]) for h in hidden]
    e = error.reshape(-1, error.shape[-1]).to(flat[-1].dtype)
    n = e.shape[0]
    # d_i = hhat_i - h_i, top-down; the top one is the gradient step on the per-example loss N e
    step = -cut.target_step * n * e.mm(cut.linears[-1].weight.to(e.dtype))
    steps = [step]
    for k in range(len(flat) - 2, -1, -1):  # g of layer k+1 (0-based) maps its output h_{k+1} to h_k
        step = _inverse(cut, k + 1, flat[k + 1] + step) - _inverse(cut, k + 1, flat[k + 1])
        steps.append(step)
    steps.reverse()
    return [(-2.0 / n * d).reshape(h.shape) for d, h in zip(steps, hidden)]


def _inverse(cut: HiddenCut, k: int, h: torch.Tensor) -> torch.Tensor:
    """``g(h) = s(V h + c)`` of layer k (0-based, k >= 1): from its output back to its input, through the
    modules that produce its input."""
    layer = cut.linears[k]
    return cut.between[k - 1](F.linear(h, layer.feedback_inverse_weight.to(h.dtype),
                                       layer.feedback_inverse_bias.to(h.dtype)))


def _forward_layer(cut: HiddenCut, k: int, h: torch.Tensor) -> torch.Tensor:
    """``f(h) = s(W h + b)`` of layer k (0-based), its parameters held fixed."""
    layer = cut.linears[k]
    bias = None if layer.bias is None else layer.bias.detach()
    return cut.between[k](F.linear(h, layer.weight.detach(), bias))


def reconstruction_loss(cut: HiddenCut, hidden, noise) -> torch.Tensor | None:
    """``sum_k mean_rows ||g_k(f_k(h_{k-1} + eps)) - (h_{k-1} + eps)||^2`` over the layers with an inverse
    (k = 1 .. M-2, 0-based; ``h_{k-1} = hidden[k-1]``); None if there are none."""
    total = None
    for k in range(1, len(cut.linears) - 1):
        h = hidden[k - 1].detach()
        corrupted = (h + noise[k - 1]).reshape(-1, h.shape[-1])
        error = _inverse(cut, k, _forward_layer(cut, k, corrupted)) - corrupted
        term = error.square().sum(1).mean()
        total = term if total is None else total + term
    return total


def _record_output(cut, layer, args, output):
    if cut._hidden is not None and torch.is_grad_enabled():
        cut.last_output = output


def _attach(root, output, hidden, preactivations):
    cut = find_cut(root)
    last, cut.last_output = cut.last_output, None
    if last is not output:
        raise ValueError("dtp needs the model's output to be its last nn.Linear's output (the top target is a "
                         "gradient step through that layer)")
    reconstruction = None
    if len(cut.linears) > 2:
        noise = draw_noise(root, [h.shape for h in hidden[:len(cut.linears) - 2]], cut.noise, hidden[0])
        reconstruction = reconstruction_loss(cut, hidden, noise)
        if not reconstruction.requires_grad:
            reconstruction = None  # inverses frozen: nothing to train
    return _DifferenceTargets.apply(output, reconstruction, cut, *hidden)


def configure(model: nn.Module, *, target_step: float | None = None, noise: float | None = None) -> nn.Module:
    """Set a ``dtp`` model's ``target_step`` (eta_hat, > 0) and ``noise`` (sigma, >= 0); returns ``model``.

    They are settings of the model object (kept by ``copy.deepcopy`` and ``torch.save(model)``), not of
    its ``state_dict``."""
    cut = _dtp_cut(model)
    for name, value, kind in (("target_step", target_step, "positive"), ("noise", noise, "non-negative")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value) or value < 0 or (kind == "positive" and value == 0):
            raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
        setattr(cut, name, float(value))
    return model


def _dtp_cut(model: nn.Module) -> HiddenCut:
    cut = getattr(model, "_feedalign_cut", None)
    if not (isinstance(cut, HiddenCut) and hasattr(cut, "target_step")):
        raise ValueError("model was not converted with rule 'dtp' (feedalign.convert(model, 'dtp'))")
    return cut


def inverse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``V_i`` and ``c_i`` of a ``dtp`` model, forward order (weight, bias per layer)."""
    return [p for layer in _dtp_cut(model).linears[1:-1]
            for p in (layer.feedback_inverse_weight, layer.feedback_inverse_bias)]


def parameter_groups(model: nn.Module, lr: float, inverse_lr: float) -> list[dict]:
    """Optimizer parameter groups for a ``dtp`` model: the forward layers at ``lr``, the inverses at
    ``inverse_lr`` (the paper trains them at their own rate)::

        torch.optim.SGD(dtp.parameter_groups(model, lr=0.01, inverse_lr=0.001), momentum=0.9)

    Parameters with ``requires_grad`` False are left out.
    """
    inverses = inverse_parameters(model)
    for name, value in (("lr", lr), ("inverse_lr", inverse_lr)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    inverse_ids = {id(p) for p in inverses}
    forward = [p for p in model.parameters() if id(p) not in inverse_ids and p.requires_grad]
    return [{"params": forward, "lr": float(lr)},
            {"params": [p for p in inverses if p.requires_grad], "lr": float(inverse_lr)}]


@register
class DifferenceTargetPropagation(LearningRule):
    """``dtp``: targets through learnt inverses. ``V_i`` is drawn as FA's feedback (U[-1/sqrt(fan_in),
    1/sqrt(fan_in)] by default, fan_in = width_i, from ``convert``'s seed), ``c_i = 0``. The defaults
    ``target_step = 0.5``, ``noise = 0.1`` are set with :func:`configure`."""

    name = "dtp"
    options = {"target_step": "eta_hat, the first target's step on the per-example loss (default 0.5)",
               "noise": "sigma of the inverses' corruption noise (default 0.1)",
               "inverse_lr": "learning rate of the inverses V_i, c_i (default: the forward layers' lr)"}

    def configure(self, model, **options):
        configure(model, target_step=options.get("target_step"), noise=options.get("noise"))

    def parameter_groups(self, model, lr, **options):
        if "inverse_lr" not in options:
            return super().parameter_groups(model, lr)
        return parameter_groups(model, lr, options["inverse_lr"])

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ValueError("dtp supports nn.Linear layers only (no inverse is defined for nn.Conv2d here)")
        linears, between = linear_stack(model, "dtp")
        cut = HiddenCut(model, linears, _attach)  # refuses a model without a hidden layer
        for layer in linears[1:-1]:  # g_i for every hidden layer but the first: V_i (in, out), c_i (in,)
            weight = sample_feedback((layer.in_features, layer.out_features), fan=layer.out_features,
                                     init=feedback_init, scale=feedback_scale, generator=generator, like=layer.weight)
            trainable = layer.weight.requires_grad
            layer.feedback_inverse_weight = nn.Parameter(weight, requires_grad=trainable)
            layer.feedback_inverse_bias = nn.Parameter(torch.zeros_like(weight[:, 0]), requires_grad=trainable)
        device = linears[0].weight.device
        model.register_buffer("dtp_noise_seed",
                              torch.tensor(int(torch.randint(2 ** 62, (1,), generator=generator)), device=device))
        model.register_buffer("dtp_noise_draws", torch.zeros((), dtype=torch.int64, device=device))
        cut.between, cut.target_step, cut.noise, cut.last_output = between, 0.5, 0.1, None
        linears[-1].register_forward_hook(functools.partial(_record_output, cut))
        model._feedalign_cut = cut
        return model

    def feedback_matrices(self, model):
        """The inverses' weights ``V_i`` (width_{i-1}, width_i), i = 2 .. M-1: Parameters, trained."""
        return [layer.feedback_inverse_weight for layer in _dtp_cut(model).linears[1:-1]]

    def feedback_layout(self, model):
        """Layer i's target reaches its input through ``g_i``, linearly ``V_i``: so ``V_i^T`` (W_i's shape)
        stands where ``W_i`` stands for backprop. The ideal inverse's ``V_i`` is a pseudo-inverse of
        ``W_i``, not its transpose, so this weight angle measures something else than FA's. The first
        layer has no inverse; the output layer's error reaches its input through ``W_M`` itself."""
        layers = trainable_layers(model)
        roles = [FeedbackRole(None, reason="first layer: its input is the data, no inverse")]
        roles += [FeedbackRole(v.detach().t(), (k + 1,)) for k, v in enumerate(self.feedback_matrices(model))]
        roles.append(FeedbackRole(layers[-1].weight.detach(), (len(layers) - 1,)))
        return roles
