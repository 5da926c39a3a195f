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
from torch import nn

from ._cut import find_cut, spread
from ._target import as_rows, holding, recover
from .base import register
from .dfa import DirectRule, DirectSignals, _checked_feedback, materialize_feedback


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
        t = recover(saved, error) if ctx.recover else saved.to(error.dtype)
        signals = (t / t.shape[0]).mm(feedback).split(ctx.widths, dim=1)
        return (error, None, None, None,
                *(spread(s, shape, ctx.n_lead) for s, shape in zip(signals, ctx.hidden_shapes)))


def _attach(root, output, hidden, preactivations):
    materialize_feedback(root)
    feedback = _checked_feedback(root, output.shape[-1])
    cut = find_cut(root)
    given = getattr(cut, "target", None)
    target = None if given is None else as_rows(given, output.shape, output.dtype, rule="drtp")
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
        return [feedback, as_rows(given, shape, plan.linears[-1].weight.dtype, rule="drtp")]

    def direct_source(self, output, error, inputs):
        """``t / N`` (N the rows of one model's batch: ``error`` is (N, out), or (M, N, out) for stacked members)."""
        rows = error.shape[-2]
        if len(inputs) == 1:
            t = recover(output, error, rows if error.dim() == 3 else None)
        else:
            t = inputs[1].to(error.dtype).view_as(error)
        return t / rows


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the forward passes of a ``drtp`` ``model`` use ``y`` as the target.

    ``y``: class indices (N,) or a target of the output's shape (N, out_features).
    """
    with holding(find_cut(model), "target", y, rule="drtp"):
        yield model


@register
class DirectRandomTargetProjection(DirectRule):
    """``drtp``. Default feedback as DFA's: B_k ~ U[-1/sqrt(width_k), 1/sqrt(width_k)]."""

    name = "drtp"

    attach = staticmethod(_attach)

    def fused_signals(self):
        return _TargetSignals()

    def forward_context(self, model, y):
        """The forward pass projects ``y`` itself (:func:`target`): every loss works, not only
        the cross-entropy the target can be recovered from."""
        return target(model, y)
