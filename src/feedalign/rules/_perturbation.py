"""What node perturbation (``np``) and weight perturbation (``wp``) share: the noise, the loss change
they measure, the replayed forward passes, the settings, and the checks a model must pass.

Both rules estimate the gradient of the loss from how the loss changes when the network is perturbed
by Gaussian noise of standard deviation sigma (Williams 1992; for weights Jabri & Flower 1992 and
Cauwenberghs 1993, for units Fiete & Seung 2006; learning curves against gradient descent: Werfel,
Xie & Seung 2005). With ``xi ~ N(0, sigma^2 I)`` added to some quantity ``z`` that the loss depends on,

    g_hat = (1 / (K sigma^2)) sum_{k=1..K} dL_k xi_k,      dL_k = L(z + xi_k) - L(z)

and, for a loss smooth at ``z``, ``E[dL xi] = sigma^2 dL/dz + O(sigma^4)`` (Stein's lemma on the Taylor
expansion; the odd moments of xi vanish, so the quadratic term adds variance, not bias), so
``E[g_hat] -> dL/dz`` as sigma -> 0, with a variance that falls as 1/K. ``antithetic`` uses the
centred difference ``dL_k = (L(z + xi_k) - L(z - xi_k)) / 2`` instead, which cancels every even-order
term of the expansion (the quadratic term's variance among them) at twice the forward passes.

How the loop stays ``loss.backward(); optimizer.step()``: the model's forward pass is the clean one.
Its output reaches the user's loss through one autograd Function of the rule; when ``loss.backward()``
gets there with ``e = dL/dy``, the Function's backward replays the forward pass on the same input
(``root(*args, **kwargs)``, no grad) ``K`` times (``2K`` antithetic) with fresh noise and measures the
loss change of every example:

- **exact** where the rule knows the loss: the target ``y`` given to the forward pass by the rule's
  forward context (:func:`target`; ``feedalign train`` and ``compare`` do this) and a loss recognised
  from ``e`` at the clean output among the mean- or sum-reduced cross-entropy (class indices or class
  probabilities), mean squared error and binary cross-entropy with logits (one-hot targets for class
  indices), i.e. the gradient of exactly one of them at the clean output equals ``e``
  (:func:`loss_change`);
- otherwise, to first order at the output, ``dL_n = e_n . (y~_n - y_n)``: the network's response to
  the noise is still measured by a real forward pass, to every order; only the loss, which lies outside
  the model, is linearised. Exact for a loss linear in the output; for another loss it differs from the
  exact change by ``O(|y~ - y|^2)``.

The loss is taken to be a sum over examples (rows of the output; every leading dimension is a batch
dimension), the reduction included: a mean-reduced loss contributes ``l_n / N`` per example.

Noise: every training forward pass is one *draw*; the noise of draw ``d`` comes from a CPU generator
seeded by ``(perturbation_seed, d)``, two int64 buffers on the root (``perturbation_seed`` from
``convert``'s seed, ``perturbation_draws`` counting the passes), drawn in float32 and moved to the
model's device and dtype. So a seed fixes every estimate, and a state_dict, a copy or a pickled model
continues the same sequence. Only the layers (``np``) or parameters (``wp``) that learn are perturbed.

What a model must be: every parameter in an ``nn.Linear`` or ``nn.Conv2d`` (nothing else would learn),
no dropout (a replay would draw another mask) and no batch normalisation (a replay would update its
running statistics), a forward pass that depends on its input only, and one output tensor.
"""
from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sequence import has_sequence_modules
from ._target import holding
from .base import TRAINABLE, FeedbackRole, LearningRule, forward_flops, trainable_layers

DEFAULTS = {"sigma": 1e-3, "samples": 1, "antithetic": 0}


def noise_stream(seed: int, draw: int) -> int:
    """The generator seed of draw ``draw`` (from 0) of a model whose ``perturbation_seed`` is ``seed``."""
    return (seed * 1_000_003 + draw * 7_919 + 12_345) % (2 ** 63)


class PerturbationState:
    """The rule's state on a converted root (``model._feedalign_cut``): settings, the target given for
    the forward pass in progress, and whether a replay is running. ``exact_gradient`` True (under
    :func:`feedalign.exact_gradients`): the model is plain backprop."""

    exact_gradient = False

    def __init__(self, root: nn.Module, layers: list[nn.Module]):
        self.root, self.layers = root, layers
        self.sigma, self.samples, self.antithetic = DEFAULTS["sigma"], DEFAULTS["samples"], bool(DEFAULTS["antithetic"])
        self.target = None  # given by target() for the forward passes inside it
        self.replay = None  # while the backward replays the forward pass: what the rule perturbs
        self.inputs = None  # (args, kwargs) of the root's forward pass in progress

    def training_pass(self) -> bool:
        """Whether a forward pass now should build the rule's estimate (grad on, not exact, not a replay)."""
        return torch.is_grad_enabled() and not self.exact_gradient and self.replay is None

    def next_draw(self) -> int:
        draws = self.root.perturbation_draws
        draw = int(draws)
        draws += 1
        return draw

    def noise(self, draw: int, shapes: list[torch.Size], like: torch.Tensor) -> "NoiseDraw":
        generator = torch.Generator().manual_seed(noise_stream(int(self.root.perturbation_seed), draw))
        return NoiseDraw(generator, shapes, self.sigma, like)


class NoiseDraw:
    """The noise of one draw: ``next()`` gives one perturbation, a N(0, sigma^2) tensor per shape."""

    def __init__(self, generator, shapes, sigma, like):
        self.generator, self.shapes, self.sigma, self.like = generator, shapes, sigma, like

    def next(self) -> list[torch.Tensor]:
        return [(torch.randn(shape, generator=self.generator) * self.sigma).to(self.like.device, self.like.dtype)
                for shape in self.shapes]


def install(root: nn.Module, rule_name: str, generator: torch.Generator) -> PerturbationState:
    """Check ``root`` (see the module docstring), give it the seed buffers, the state and the input capture."""
    if has_sequence_modules(root):
        raise ValueError(f"{rule_name} supports feedforward stacks of nn.Linear/nn.Conv2d layers, each run once per "
                         "forward pass; attention and recurrent modules are not supported")
    layers = trainable_layers(root)
    owned = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
    for name, module in root.named_modules():
        if isinstance(module, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)):
            raise ValueError(f"{rule_name} replays the forward pass with noise, which {type(module).__name__} "
                             f"({name or 'the root'}) would change by itself; remove it")
        for pname, param in module.named_parameters(recurse=False):
            if id(param) not in owned:
                raise ValueError(f"{rule_name} perturbs nn.Linear/nn.Conv2d layers only; {name}.{pname} of "
                                 f"{type(module).__name__} would not learn")
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    root.register_buffer("perturbation_seed", torch.tensor(seed, dtype=torch.int64))
    root.register_buffer("perturbation_draws", torch.tensor(0, dtype=torch.int64))
    state = PerturbationState(root, layers)
    root._feedalign_cut = state
    root.register_forward_pre_hook(_capture_inputs, with_kwargs=True)
    return state


def _capture_inputs(root, args, kwargs):
    state = root._feedalign_cut
    if state.training_pass():
        state.inputs = (args, kwargs)
    return None


def replay(state: PerturbationState, what, run) -> torch.Tensor:
    """``run()`` (a forward pass of the root on the captured input) without grad, with ``state.replay = what``."""
    state.replay = what
    try:
        with torch.no_grad():
            output = run()
    finally:
        state.replay = None
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"the model returned {type(output).__name__} when replayed; it must return one tensor")
    return output


# -- the loss change ---------------------------------------------------------------------------------------------

def _float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _per_example_losses(output: torch.Tensor, target: torch.Tensor):
    """``[(name, terms, gradient)]``: for every loss this target could belong to, ``terms(y)`` (N,) and the
    gradient of their sum at ``y`` (analytic), for a 2-D output (N, C). Empty if the target fits none."""
    n, classes = output.shape
    if not target.is_floating_point() and not target.is_complex() and target.shape == (n,):
        if int(target.min()) < 0 or int(target.max()) >= classes:
            return []
        onehot = F.one_hot(target.long(), classes).to(output.dtype)
    elif target.is_floating_point() and target.shape == output.shape:
        onehot = target.detach().to(output.dtype)
    else:
        return []
    cross_entropy = lambda y: -(onehot * torch.log_softmax(y, -1)).sum(-1)  # noqa: E731
    squared = lambda y: (y - onehot).square().sum(-1)  # noqa: E731
    binary = lambda y: F.binary_cross_entropy_with_logits(y, onehot, reduction="none").sum(-1)  # noqa: E731
    ce_grad = torch.softmax(output, -1) * onehot.sum(-1, keepdim=True) - onehot
    out = []
    for name, terms, grad, mean_over in (("cross_entropy", cross_entropy, ce_grad, n),
                                         ("mse", squared, 2 * (output - onehot), n * classes),
                                         ("bce", binary, torch.sigmoid(output) - onehot, n * classes)):
        for reduction, scale in (("mean", 1.0 / mean_over), ("sum", 1.0)):
            out.append((f"{name} ({reduction})", lambda y, t=terms, s=scale: t(y) * s, grad * scale))
    return out


def loss_change(output: torch.Tensor, error: torch.Tensor, target: torch.Tensor | None):
    """``(how, change)``: ``change(y~)`` is the loss change of every example (the output's leading shape,
    float64) from the clean ``output`` to the perturbed ``y~``; ``how`` names the loss it measured
    ("cross_entropy (mean)", ...) or "linearised" (``e . (y~ - y)``, see the module docstring)."""
    clean, e = _float(output.detach()), _float(error.detach()).reshape(output.shape)
    if target is not None and output.dim() == 2 and output.shape[0] > 0:
        scale = float(e.abs().max())
        tolerance = 1e-6 if output.dtype == torch.float64 else 1e-3 if output.dtype == torch.float32 else 3e-2
        for how, terms, grad in _per_example_losses(clean, target.to(clean.device)):
            if scale > 0 and float((grad - e).abs().max()) <= tolerance * scale:
                base = terms(clean)
                return how, lambda y, terms=terms, base=base: terms(_float(y)) - base
    return "linearised", lambda y: (e * (_float(y) - clean)).sum(-1)


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the forward passes of an ``np``/``wp`` ``model`` take ``y`` (class indices (N,) or a
    target of the output's shape) as the target, so the backward measures the exact loss change where it
    recognises the loss (see :func:`loss_change`)."""
    with holding(_state(model), "target", y, rule="np/wp"):
        yield model


def _state(model: nn.Module) -> PerturbationState:
    state = getattr(model, "_feedalign_cut", None)
    if not isinstance(state, PerturbationState):
        raise ValueError("model was not converted with a perturbation rule (feedalign.convert(model, 'np' or 'wp'))")
    return state


def estimate(state: PerturbationState, draw: int, shapes: list[torch.Size], like: torch.Tensor, run, change,
             combine) -> list[torch.Tensor]:
    """``(1 / (K sigma^2)) sum_k combine(dL_k, xi_k)`` for each perturbed tensor, ``dL_k`` the loss change of
    every example under perturbation ``xi_k`` (``run(xi)`` gives the perturbed output), centred when
    ``antithetic``. Accumulated in at least float32."""
    noise = state.noise(draw, shapes, like)
    dtype = torch.promote_types(like.dtype, torch.float32)
    totals = [torch.zeros(shape, dtype=dtype, device=like.device) for shape in shapes]
    for _ in range(state.samples):
        xi = noise.next()
        dl = change(run(xi))
        if state.antithetic:
            dl = (dl - change(run([-t for t in xi]))) / 2
        for total, t in zip(totals, xi):
            total += combine(dl, t).to(dtype)
    return [(total / (state.samples * state.sigma ** 2)).to(like.dtype) for total in totals]


# -- settings ----------------------------------------------------------------------------------------------------

def configure(model: nn.Module, *, sigma: float | None = None, samples: int | None = None,
              antithetic: bool | None = None) -> nn.Module:
    """Set an ``np``/``wp`` model's ``sigma`` (> 0), ``samples`` (K, a positive integer) and ``antithetic``
    (centred differences: True/False, or 1/0); returns ``model``. Settings of the model object (kept by
    ``copy.deepcopy`` and ``torch.save(model)``), not of its ``state_dict``."""
    state = _state(model)
    if sigma is not None:
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
            raise TypeError(f"sigma must be a number, got {type(sigma).__name__} {sigma!r}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite positive number, got {sigma!r}")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, numbers.Real):
            raise TypeError(f"samples must be a positive integer, got {type(samples).__name__} {samples!r}")
        if not (math.isfinite(samples) and samples >= 1 and float(samples).is_integer()):
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if antithetic is not None and not (isinstance(antithetic, numbers.Real) and antithetic in (0, 1)):
        raise ValueError(f"antithetic must be 0 or 1 (True or False), got {antithetic!r}")
    if sigma is not None:
        state.sigma = float(sigma)
    if samples is not None:
        state.samples = int(samples)
    if antithetic is not None:
        state.antithetic = bool(antithetic)
    return model


class PerturbationRule(LearningRule):
    """What ``np`` and ``wp`` share as rules: their options, target context, layout and cost."""

    options = {"sigma": f"standard deviation of the perturbation (default {DEFAULTS['sigma']:g})",
               "samples": f"perturbations K averaged per step (default {DEFAULTS['samples']})",
               "antithetic": "1: centred differences (L(+xi) - L(-xi)) / 2, two passes per sample; "
                             f"0: forward differences L(+xi) - L (default {DEFAULTS['antithetic']})"}

    def configure(self, model, **options):
        configure(model, sigma=options.get("sigma"), samples=options.get("samples"),
                  antithetic=options.get("antithetic"))

    def forward_context(self, model, y):
        """The target ``y`` for the forward pass (:func:`target`): the exact loss change where the loss is known."""
        return target(model, y)

    def feedback_layout(self, model):
        return [FeedbackRole(None, reason=f"{self.name} sends no error back: it correlates a measured loss change "
                                          "with its own noise")] * len(trainable_layers(model))

    def step_flops(self, widths, batch):
        """The clean forward pass, ``K`` perturbed ones (``2K`` antithetic) and the rule's own products
        (:meth:`estimate_flops`)."""
        passes = 1 + DEFAULTS["samples"] * (2 if DEFAULTS["antithetic"] else 1)
        return float(passes * forward_flops(widths, batch) + self.estimate_flops(widths, batch))

    def estimate_flops(self, widths, batch) -> float:
        return 0.0


__all__ = ["PerturbationRule", "PerturbationState", "configure", "estimate", "install", "loss_change", "replay",
           "target", "TRAINABLE"]
