"""Direct Random Target Projection (Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892,
"Learning without feedback: fixed random learning signals allow for feedforward
training of deep neural networks", Eq. 4 and Fig. 1d).

Every hidden layer k receives a fixed random projection of the *target*, not of
the error: with ``t`` the one-hot target (row vectors) its pre-activation signal is
``delta a_k = (t B_k / N) * f'(a_k)``, ``B_k`` of shape (out_features, width_k), N the
batch size (so that hidden updates have the scale of a mean-reduced loss, as the
output layer's do). The sign is that of Frenkel's code (ChFrenkel/
DirectRandomTargetProjection, ``function.py``: ``labels.mm(B)``); for a zero-mean B
it is immaterial. The output layer gets the ordinary gradient. Hidden signals come
from one fused matmul ``t @ feedback`` as in DFA, and Conv2d layers are cut the same
way (:mod:`.dfa`), and so are ``taps`` (block outputs; Launay et al. 2020); ``feedalign.mlp``
stacks train through DFA's fused path (:mod:`.fast`) with ``t / N`` in place of ``e``.

Where the target comes from, keeping ``loss.backward(); optimizer.step()``:

- by default it is recovered from the output error. For the softmax cross-entropy
  with mean reduction (``F.cross_entropy``, ``nn.CrossEntropyLoss()``),
  ``e = dL/dy = (softmax(y) - t) / N``, so ``t = softmax(y) - N e`` exactly (label
  smoothing gives the smoothed target). The recovered t is checked to be a
  distribution (entries in [0, 1] up to rounding); it is not for other losses or
  reductions, and backward then raises a ValueError.
- for any other loss, give it explicitly for the forward pass:
  ``with feedalign.rules.drtp.target(model, y): loss = criterion(model(x), y)``
  (class indices or a (N, out_features) target). The backward may run outside
  the block: the target is captured at forward time.

Trade-off: recovery keeps the user's loop untouched but ties DRTP to one loss;
the context works for every loss at the price of one line in the loop.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from ._cut import find_cut, spread
from .base import register, trainable_layers
from .dfa import DirectRule, DirectSignals, _checked_feedback, install_direct_feedback, materialize_feedback


def recover_target(output: torch.Tensor, error: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``t = softmax(y) - N e``, the target of a mean-reduced softmax cross-entropy; checked. ``N`` is
    ``rows`` (the batch of one member of stacked models, each with its own mean), else every row
    of ``y``; ``t`` then has the shape of ``error``, else (rows, out)."""
    if rows is not None:
        flat_y, flat_e, n = output, error, rows
    else:
        flat_y, flat_e = output.reshape(-1, output.shape[-1]), error.reshape(-1, error.shape[-1])
        n = flat_y.shape[0]
    t = torch.softmax(flat_y.to(flat_e.dtype), dim=-1) - flat_e * n
    tolerance = 1e-3 if t.dtype in (torch.float32, torch.float64) else 2e-2
    bounds = torch.aminmax(t) if t.numel() else None  # one kernel, not four: a check at every step
    if bounds is not None and not (float(bounds.min) > -tolerance and float(bounds.max) < 1 + tolerance):
        raise ValueError("drtp could not recover a target from the output error: the loss is not a mean-reduced "
                         "softmax cross-entropy of the model output. Give it explicitly: "
                         "`with feedalign.rules.drtp.target(model, y): loss = ...`")
    return t


class _DirectTargetProjection(torch.autograd.Function):
    """Identity on ``y``; backward sends ``e`` to ``y`` and ``t B_k / N`` to each hidden ``h_k``."""

    @staticmethod
    def forward(ctx, output, feedback, widths, target, *hidden):
        ctx.save_for_backward(feedback, output.detach() if target is None else target)
        ctx.recover = target is None
        ctx.widths, ctx.n_lead = widths, output.dim() - 1
        ctx.hidden_shapes = [h.shape for h in hidden]
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        feedback, saved = ctx.saved_tensors
        t = recover_target(saved, error) if ctx.recover else saved.to(error.dtype)
        signals = (t / t.shape[0]).mm(feedback).split(ctx.widths, dim=1)
        return (error, None, None, None,
                *(spread(s, shape, ctx.n_lead) for s, shape in zip(signals, ctx.hidden_shapes)))


def _one_hot(target: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``target`` (class indices, or of the output's ``shape``) as (N, out_features) rows of ``dtype``."""
    classes = shape[-1]
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if target.shape != shape[:-1]:
            raise ValueError(f"drtp target of class indices must have shape {tuple(shape[:-1])}, "
                             f"got {tuple(target.shape)}")
        return F.one_hot(target.long(), classes).reshape(-1, classes).to(dtype)
    if target.shape != shape:
        raise ValueError(f"drtp target must be class indices or of the output's shape {tuple(shape)}, "
                         f"got {tuple(target.shape)}")
    return target.detach().reshape(-1, classes).to(dtype)


def _attach(root, output, hidden, preactivations):
    materialize_feedback(root)
    feedback = _checked_feedback(root, output.shape[-1])
    cut = find_cut(root)
    given = getattr(cut, "target", None)
    target = None if given is None else _one_hot(given, output.shape, output.dtype)
    return _DirectTargetProjection.apply(output, feedback, cut.widths, target, *hidden)


class _TargetSignals(DirectSignals):
    """The fused path: DFA's (:class:`~feedalign.rules.dfa.DirectSignals`) with ``s = t / N`` in place
    of ``e``; ``t`` the one-hot target given by :func:`target` at forward time (an input of the
    node), else recovered from ``y`` and ``e`` as the general path does."""

    needs_output = True  # for recovery

    def inputs(self, plan, input):
        feedback = _checked_feedback(plan.root, plan.linears[-1].out_features)
        given = getattr(find_cut(plan.root), "target", None)
        if given is None:
            return [feedback]
        shape = torch.Size((*input.shape[:-1], plan.linears[-1].out_features))
        return [feedback, _one_hot(given, shape, plan.linears[-1].weight.dtype)]

    def direct_source(self, output, error, inputs):
        """``t / N`` (N the rows of one model's batch: ``error`` is (N, out), or (M, N, out) for stacked members)."""
        rows = error.shape[-2]
        if len(inputs) == 1:
            t = recover_target(output, error, rows if error.dim() == 3 else None)
        else:
            t = inputs[1].to(error.dtype).view_as(error)
        return t / rows


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the forward passes of a ``drtp`` ``model`` use ``y`` as the target.

    ``y``: class indices (N,) or a target of the output's shape (N, out_features).
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"drtp target must be a tensor, got {type(y).__name__}")
    cut = find_cut(model)
    previous = getattr(cut, "target", None)
    cut.target = y
    try:
        yield model
    finally:
        cut.target = previous


@register
class DirectRandomTargetProjection(DirectRule):
    """``drtp``. Default feedback as DFA's: B_k ~ U[-1/sqrt(width_k), 1/sqrt(width_k)]."""

    name = "drtp"

    def convert(self, model, *, generator, feedback_init, feedback_scale, taps=None):
        layers = trainable_layers(model)
        install_direct_feedback(model, layers, _attach, generator=generator, feedback_init=feedback_init,
                                feedback_scale=feedback_scale, taps=taps)
        if taps is None and all(isinstance(layer, nn.Linear) for layer in layers):
            fused.install(model, layers, self.fused_signals())
        return model

    def fused_signals(self):
        return _TargetSignals()

    def forward_context(self, model, y):
        """The forward pass projects ``y`` itself (:func:`target`): every loss works, not only
        the cross-entropy the target can be recovered from."""
        return target(model, y)
