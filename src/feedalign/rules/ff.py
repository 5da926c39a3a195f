"""Forward-forward (Hinton 2022, "The Forward-Forward Algorithm: Some Preliminary Investigations",
arXiv 2212.13345), the supervised MNIST version of its Section 3.3.

Two forward passes instead of a forward and a backward one: a *positive* pass on real data and a
*negative* pass on data that should be rejected. Every hidden layer k has its own objective on its own
activity ``h_k`` (row vectors, batch of N): its goodness

    G_k(h) = sum_j h_{k,j}^2                                       (the paper's sum of squared activities)

should be high for positive data and low for negative data: the probability that an input is positive is
the logistic of goodness minus a threshold (Section 2). Here the goodness enters per unit,
``p = sigma(G_k / width_k - theta)``: the paper's ``sigma(G_k - theta_k)`` with ``theta_k = theta width_k``
and the logit divided by the width, as common reimplementations do (the logit ``G_k - theta_k`` itself spans
hundreds on a 500-unit layer, so the logistic saturates on most examples; in one short check here, 200 Adam
steps of a 784-500-500-10 network, the per-unit logit classified 15 % of validation images right and the summed
one 2 %: early, and one run). Its loss is the logistic loss of that classification, averaged over the batch:

    L_k = mean_n softplus(theta - G_k(h_k^+_n) / width_k) + mean_n softplus(G_k(h_k^-_n) / width_k - theta)

and layer k's update is ``dL_k/dW_k, dL_k/db_k`` alone. Nothing crosses layers: the input of layer k+1
is layer k's activity *normalised to a fixed length* and detached, ``u_{k+1} = h_k / rms(h_k)`` (the
paper divides by the length, "layer normalization" without subtracting the mean, so that the next layer
cannot read the goodness of this one; dividing by the root mean square instead of the length is that
normalisation times the constant sqrt(width), which keeps an input unit's scale at 1).

Supervised data (Section 3.3): the label is written into the first C input features (C classes: the
first 10 pixels of an MNIST image, which are black) as a one-of-C code. Positive data is the image with
its own label; negative data the same image with a wrong label (here drawn uniformly among the C - 1
wrong ones). Classification, as the paper does it: run the network once with each label and pick the label
with the highest goodness accumulated over every hidden layer but the first (over the only one for a
network with one hidden layer); the scores returned are ``sum_k (G_k / width_k - theta)``, the summed
log-odds. The paper's quicker alternative: one pass with a *neutral* label (1/C in every
label feature) and a linear softmax classifier on the normalised hidden activities, trained alongside.

Which parts of this were read in the paper's own text: none in this session (its text could not be
retrieved here). The settings above (goodness = sum of squares, the logistic of goodness minus threshold,
length normalisation between layers, the label in the first 10 pixels, wrong-label negatives, accumulated
goodness over all but the first hidden layer, the neutral-label softmax alternative) are as the paper is
summarised by several independent reimplementations; the threshold's value and how the wrong label is
chosen are not stated in what was available (here: ``theta = threshold``, 2 per unit by default as in
those reimplementations, and uniform wrong labels).

How it keeps ``loss.backward(); optimizer.step()``: ``convert(mlp, "ff")`` returns a
:class:`ForwardForwardNetwork` on the MLP's ``nn.Linear`` layers (the same parameters): the hidden layers
(with the MLP's activations between them; the paper's are ReLUs) are the forward-forward layers, the last
``nn.Linear`` is the softmax readout (on the last hidden layer's normalised activity only; the paper's
reads every hidden layer but the first). Its forward pass in training mode returns the readout's logits
on the neutral-label pass; ``loss.backward()`` then deposits

- in each hidden layer, the gradient of its own goodness loss ``dL_k/dW_k`` (the positive and negative
  passes run inside backward, on the batch of the forward pass), whatever the loss (it only chooses the
  readout's gradient below);
- in the readout, the gradient of the user's loss with respect to it (a linear classifier on detached
  features: its own local gradient, as the paper trains its softmax).

The labels come from the forward context (:func:`target`, which :meth:`ForwardForward.forward_context`
gives the training loop: any loss then works), else they are recovered from the output error of a
mean-reduced softmax cross-entropy (``t = softmax(y) - N e``, as drtp does; its argmax is the label).
In eval mode the forward pass returns the classifier's scores (accumulated goodness by default; the
readout's logits with ``softmax=1``), without grad, so accuracy is ``argmax`` as for every model.

Under :func:`feedalign.exact_gradients` the training-mode forward is the plain differentiable one, so
backward gives the true gradient of the loss of the network's training output (the readout on the
neutral pass, through every layer and normalisation): the diagnostics' update angle is the angle between
forward-forward's update and that gradient. There is no feedback matrix (:meth:`feedback_layout` says so)
and no signal at a layer's output that stands in for backprop's, so the signal angles are NaN.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ._target import holding, recover
from .base import FeedbackRole, LearningRule, forward_flops, register

# added to the mean square before its root: a layer whose units are all off normalises to zeros, not NaN
_NORM_EPS = 1e-12


def goodness(h: torch.Tensor) -> torch.Tensor:
    """``G(h) = sum_j h_j^2`` per row: (..., width) -> (...)."""
    return h.square().sum(-1)


def goodness_loss(positive: torch.Tensor, negative: torch.Tensor, theta: float) -> torch.Tensor:
    """One layer's loss on its activities for positive (N, width) and negative (M, width) data:
    ``mean softplus(theta - G+/width) + mean softplus(G-/width - theta)``, minus the log-probability that each
    is classified right by ``sigma(G/width - theta)``, ``theta`` per unit."""
    width = positive.shape[-1]
    return (F.softplus(theta - goodness(positive) / width).mean()
            + F.softplus(goodness(negative) / width - theta).mean())


def normalize(h: torch.Tensor) -> torch.Tensor:
    """``h / rms(h)`` per row: the direction of the activity vector, at length sqrt(width)."""
    return h * torch.rsqrt(h.square().mean(-1, keepdim=True) + _NORM_EPS)


class _ForwardForward(torch.autograd.Function):
    """Forward: the readout's logits on the neutral pass (no grad). Backward, given ``e = dL/dy`` (N, C):
    the gradients of :meth:`ForwardForwardNetwork.local_loss` (each hidden layer's goodness loss on the
    positive and negative passes of the batch, plus ``sum(readout(features) * e)``), one per parameter.
    The input gets none: no signal goes below the first layer."""

    @staticmethod
    def forward(ctx, x, network, labels, *params):
        with torch.no_grad():
            features = network.features(network.embed(x, None))
            logits = network.readout(features)
        ctx.network = network
        ctx.has_labels = labels is not None
        ctx.save_for_backward(x, features, logits, *(() if labels is None else (labels,)))
        return logits

    @staticmethod
    def backward(ctx, error):
        x, features, logits, *given = ctx.saved_tensors
        network = ctx.network
        error = error.reshape(logits.shape).to(logits.dtype)
        if given:
            labels = given[0]
        else:
            labels = recover(logits, error, rule="ff", what="the labels").argmax(-1)
        params = network.parameter_list()
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[3:]) if need]
        with torch.enable_grad():
            loss = network.local_loss(x, labels, network.draw_negatives(labels), features=features, error=error)
            grads = iter(torch.autograd.grad(loss, wanted, allow_unused=True))
        out = []
        for p, need in zip(params, ctx.needs_input_grad[3:]):
            g = next(grads) if need else None
            out.append(torch.zeros_like(p) if need and g is None else g)
        return (None, None, None, *out)


class ForwardForwardNetwork(nn.Module):
    """A forward-forward network ``in -> hidden ... -> classes``; see the module docstring.

    Args:
        hidden: the hidden ``nn.Linear`` layers, forward order (the forward-forward layers).
        activations: one module per hidden layer, applied to its output (e.g. ``nn.ReLU()``).
        readout: the ``nn.Linear`` from the last hidden layer to the C classes (the softmax readout).
        threshold: ``theta``, the goodness per unit (mean square) at which p = 1/2, > 0.
        softmax: classify (in eval mode) by the readout on the neutral pass instead of accumulated goodness.
        seed: where the wrong labels of the negative data are drawn from (with the draw count).

    ``forward(x)``: x (*, in_features) -> (*, C). Training mode: the readout's logits on the neutral pass
    (with grad: backward deposits the forward-forward update); eval mode: the classifier's scores, without
    grad (with it only under :func:`feedalign.exact_gradients`).
    """

    def __init__(self, hidden, activations, readout: nn.Linear, *, threshold: float = 2.0, softmax: bool = False,
                 seed: int = 0):
        super().__init__()
        hidden, activations = list(hidden), list(activations)
        if not hidden:
            raise ValueError("ff needs at least one hidden layer: the last nn.Linear is the readout, the ones "
                             "before it learn by goodness")
        if len(activations) != len(hidden):
            raise ValueError(f"ff needs one activation per hidden layer; got {len(activations)} for {len(hidden)}")
        chain = [*hidden, readout]
        for k, (a, b) in enumerate(zip(chain[:-1], chain[1:])):
            if a.out_features != b.in_features:
                raise ValueError(f"layers {k + 1} and {k + 2} do not chain: {a.out_features} outputs feed "
                                 f"{b.in_features} inputs")
        if readout.out_features < 2:
            raise ValueError(f"ff classifies: the readout needs at least 2 classes, got {readout.out_features}")
        if hidden[0].in_features < readout.out_features:
            raise ValueError(f"ff writes the label into the first {readout.out_features} input features; the input "
                             f"has only {hidden[0].in_features}")
        self.hidden = nn.ModuleList(hidden)
        self.activations = nn.ModuleList(activations)
        self.readout = readout
        self.threshold, self.softmax = float(threshold), bool(softmax)
        self.register_buffer("negative_seed", torch.tensor(int(seed), dtype=torch.int64))
        self.register_buffer("negative_draws", torch.tensor(0, dtype=torch.int64))  # negative passes so far
        self.exact_gradient = False  # feedalign.exact_gradients: the plain differentiable forward
        self.labels = None  # the labels of the next training forward passes (see target())

    @property
    def classes(self) -> int:
        return self.readout.out_features

    @property
    def sizes(self) -> list[int]:
        return [self.hidden[0].in_features] + [layer.out_features for layer in self.hidden] + [self.classes]

    def extra_repr(self) -> str:
        return (f"sizes={self.sizes}, threshold={self.threshold} per unit, "
                f"classify={'softmax readout' if self.softmax else 'accumulated goodness'}")

    def parameter_list(self) -> list[torch.Tensor]:
        """Every parameter, in ``parameters()`` order (the order _ForwardForward passes them)."""
        return list(self.parameters())

    def embed(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``x`` (N, in) with its first C features replaced by the one-of-C code of ``labels`` (N,);
        None: the neutral label, 1/C in each."""
        c = self.classes
        if labels is None:
            code = x.new_full((x.shape[0], c), 1.0 / c)
        else:
            code = F.one_hot(labels.long(), c).to(x.dtype)
        return torch.cat([code, x[:, c:]], dim=1)

    def activities(self, u: torch.Tensor) -> list[torch.Tensor]:
        """The hidden activities ``h_1 .. h_L`` (each (N, width_k)) of the input ``u`` (N, in); differentiable."""
        out = []
        for k, (layer, act) in enumerate(zip(self.hidden, self.activations)):
            h = act(layer(u if k == 0 else normalize(out[-1])))
            out.append(h)
        return out

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """What the readout reads: the last hidden activity, normalised."""
        return normalize(self.activities(u)[-1])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier scores (N, C): readout logits on the neutral pass, or ``sum_k (G_k - theta_k)`` with each
        label over the hidden layers but the first (the only one, for one hidden layer)."""
        if self.softmax:
            return self.readout(self.features(self.embed(x, None)))
        n, c = x.shape[0], self.classes
        labels = torch.arange(c, device=x.device).repeat_interleave(n)  # label-major: row l*n + i
        acts = self.activities(self.embed(x.repeat(c, 1), labels))
        scored = range(1, len(acts)) if len(acts) > 1 else range(1)
        total = sum(goodness(acts[k]) / acts[k].shape[-1] - self.threshold for k in scored)
        return total.reshape(c, n).t()

    def negative_labels(self, labels: torch.Tensor, draw: int) -> torch.Tensor:
        """Wrong labels for ``labels`` (N,), uniform over the C - 1 others: the ``draw``-th draw of this model
        (a function of its ``negative_seed`` and ``draw`` only, so copies and reloaded models draw the same)."""
        generator = torch.Generator().manual_seed((int(self.negative_seed) * 1_000_003 + int(draw)) % (2 ** 63))
        shift = torch.randint(1, self.classes, (labels.shape[0],), generator=generator).to(labels.device)
        return (labels.long() + shift) % self.classes

    def draw_negatives(self, labels: torch.Tensor) -> torch.Tensor:
        """The next draw of :meth:`negative_labels`; counts it."""
        negatives = self.negative_labels(labels, int(self.negative_draws))
        self.negative_draws += 1
        return negatives

    def local_loss(self, x: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor, *,
                   features: torch.Tensor | None = None, error: torch.Tensor | None = None,
                   on_layer=None) -> torch.Tensor:
        """``sum_k L_k`` on the positive (``labels``) and negative (``negatives``) passes of ``x`` (N, in), each
        layer's input detached (its gradient reaches its own parameters only); plus, given the readout's
        ``features`` (N, width_L) and ``error`` (N, C), ``sum(readout(features) * error)``, whose gradient is the
        readout's share of the user's loss.

        The layers are applied functionally (``F.linear`` on their parameters), not called as modules: these
        passes run inside backward, where a module's forward hooks (the diagnostics') expect the forward pass.
        ``on_layer(k, input, output)``, if given, sees each hidden layer's input (2N, in_k; positive rows first)
        and pre-activation output as they are made."""
        n = x.shape[0]
        u = torch.cat([self.embed(x, labels), self.embed(x, negatives)])
        total = x.new_zeros(())
        for k, (layer, act) in enumerate(zip(self.hidden, self.activations)):
            u = u.detach()  # no gradient goes below this layer
            a = F.linear(u, layer.weight, layer.bias)
            if on_layer is not None:
                on_layer(k, u, a)
            h = act(a)
            total = total + goodness_loss(h[:n], h[n:], self.threshold)
            u = normalize(h)
        if error is not None:
            total = total + (F.linear(features.detach(), self.readout.weight, self.readout.bias) * error).sum()
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if not self.training:
            with contextlib.nullcontext() if self.exact_gradient else torch.no_grad():
                return self.scores(flat).reshape(*lead, -1)
        params = self.parameter_list()
        if self.exact_gradient or not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return self.readout(self.features(self.embed(flat, None))).reshape(*lead, -1)
        labels = None if self.labels is None else _labels(self.labels, flat.shape[0], self.classes)
        return _ForwardForward.apply(flat, self, labels, *params).reshape(*lead, -1)


def _labels(y: torch.Tensor, n: int, classes: int) -> torch.Tensor:
    """Class indices (*,) or a (*, classes) target (its argmax) -> (n,) class indices."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"ff labels must be a tensor, got {type(y).__name__}")
    y = y.detach()
    if y.is_floating_point():
        if y.shape[-1] != classes:
            raise ValueError(f"ff target must be class indices or of shape ({n}, {classes}), got {tuple(y.shape)}")
        y = y.argmax(-1)
    y = y.reshape(-1).long()
    if y.shape[0] != n:
        raise ValueError(f"ff labels must have {n} entries (one per example), got {y.shape[0]}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"ff labels must be class indices in [0, {classes}), got values from {int(y.min())} "
                         f"to {int(y.max())}")
    return y


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the training forward passes of an ``ff`` ``model`` take ``y`` (class indices (N,),
    or a (N, C) target whose argmax is the class) as the labels of the positive data; backward may run
    outside the block (they are captured at forward time)."""
    if not isinstance(model, ForwardForwardNetwork):
        raise ValueError(f"target needs a model converted with 'ff', got {type(model).__name__}")
    with holding(model, "labels", y, rule="ff"):
        yield model


def from_mlp(model: nn.Module, *, seed: int = 0) -> ForwardForwardNetwork:
    """A :class:`ForwardForwardNetwork` on an MLP: an ``nn.Sequential`` of ``nn.Linear`` layers with
    parameter-free modules (activations) between them and the output ``nn.Linear`` last (``feedalign.mlp``).
    The same layer modules: the parameters stay the model's."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"ff converts an MLP (an nn.Sequential of nn.Linear layers and activations), got "
                         f"{type(model).__name__}")
    linears, between, current = [], [], []
    for child in model:
        if type(child) is nn.Linear:
            if linears:
                between.append(current)
            linears.append(child)
            current = []
        elif isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"ff converts an MLP of nn.Linear layers; found {type(child).__name__} "
                             "(convolutional networks are not supported)")
        elif any(True for _ in child.parameters()) or not linears:
            raise ValueError(f"ff converts an MLP of nn.Linear layers with parameter-free activations between them; "
                             f"{type(child).__name__} is {'before the first layer' if not linears else 'a layer'} "
                             "it cannot train")
        else:
            current.append(child)
    if current:
        raise ValueError("ff needs the output nn.Linear last (its readout); the MLP ends with "
                         f"{type(current[-1]).__name__}")
    if len(linears) < 2:
        raise ValueError("ff needs a hidden layer: the last nn.Linear is the readout, the ones before it learn "
                         "by goodness")
    activations = [nn.Sequential(*mods) if len(mods) != 1 else mods[0] for mods in between]
    return ForwardForwardNetwork(linears[:-1], activations, linears[-1], seed=seed)


@register
class ForwardForward(LearningRule):
    """``ff``: see the module docstring."""

    name = "ff"
    replaces_model = True
    options = {"threshold": "goodness threshold per unit: p(positive) = sigmoid(mean square - threshold) (default 2)",
               "softmax": "1: classify by the softmax readout on the neutral-label pass; 0 (default): by the "
                          "goodness accumulated over the hidden layers but the first, one pass per label"}

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
        return from_mlp(model, seed=seed)

    def configure(self, model, **options):
        if "threshold" in options:
            if not options["threshold"] > 0:
                raise ValueError(f"ff threshold must be positive, got {options['threshold']}")
            model.threshold = float(options["threshold"])
        if "softmax" in options:
            if options["softmax"] not in (0.0, 1.0):
                raise ValueError(f"ff softmax must be 0 or 1, got {options['softmax']}")
            model.softmax = bool(options["softmax"])

    def forward_context(self, model, y):
        """The training forward pass takes ``y`` as the labels of the positive data (:func:`target`): any
        loss works, not only the cross-entropy they can be recovered from."""
        return target(model, y)

    def feedback_layout(self, model):
        return [FeedbackRole(None, reason="forward-forward sends no signal between layers")
                for _ in range(len(model.hidden) + 1)]

    def step_flops(self, widths, batch):
        """The neutral pass through every layer, the positive and negative passes through the hidden layers
        (2N rows) and their weight gradients, and the readout's weight gradient; no input gradients."""
        hidden = forward_flops(widths[:-1], batch)
        return float(forward_flops(widths, batch) + 4 * hidden + 2 * batch * widths[-2] * widths[-1])
