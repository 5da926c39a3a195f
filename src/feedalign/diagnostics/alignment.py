"""``alignment(model, x, y, loss_fn)``: how far a rule's learning signals are from backprop's.

For every ``nn.Linear`` (and ``nn.Conv2d``) layer k (forward order), with ``a_k`` its output:

- signal angle: between ``delta_k``, the gradient the rule delivers at ``a_k``, and
  ``c_k = dL/da_k``, the true gradient on the same weights and batch (from a second
  pass under :func:`feedalign.exact_gradients`); over the flattened batch, and as
  the mean of per-example angles. The output layer gets ``e = dL/dy`` under every
  rule, so its signal angle is 0 by construction.
- update angle: between the layer's update under the rule (weight and bias
  gradients together) and the true gradient of the same parameters.
- weight angle and norm ratio ``|B| / |W|``: between the layer's feedback matrix and
  the forward weights it stands in for, as the rule's
  :meth:`~feedalign.rules.LearningRule.feedback_layout` says. FA: ``B_k`` vs ``W_k``.
  DFA: ``B_k`` (out, width_k) vs ``W_L ... W_{k+1}``, the path backprop takes from the
  output to ``h_k`` without the derivative terms. IFA: ``B_1`` likewise. BP: ``W_k`` itself.

Angles are in degrees. A zero (or non-finite) vector gives NaN and the row's
``reason`` says which, never an exception.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ..convert import learning_rule, rule_of
from ..rules import exact_gradients, trainable_layers
from ..rules.base import learns_by_backprop
from .angles import angle, mean_row_angle


@dataclass
class AlignmentRow:
    """One layer's alignment. ``layer`` counts from 1 in forward order; angles in degrees."""

    layer: int
    name: str
    shape: tuple[int, ...]  # of the weight: (out_features, in_features) for nn.Linear
    signal_angle: float  # delta_k vs c_k, flattened over the batch
    signal_angle_mean: float  # mean over examples of the per-example angle
    update_angle: float  # rule's (dW, db) vs the true gradient
    weight_angle: float  # feedback matrix vs the forward weights it replaces
    norm_ratio: float  # |B| / |W| (Frobenius)
    reason: str = ""  # why values are NaN, "" if none are

    ANGLES = ("signal_angle", "signal_angle_mean", "update_angle", "weight_angle", "norm_ratio")


@dataclass
class AlignmentTable:
    """The rows of :func:`alignment`, one per linear layer, plus what they were measured on."""

    rule: str
    rows: list[AlignmentRow]
    batch_size: int
    loss: float

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> AlignmentRow:
        return self.rows[index]

    def to_dicts(self) -> list[dict]:
        """One plain dict per row (JSON-ready apart from NaN, which ``json`` writes as ``NaN``)."""
        return [{**asdict(row), "shape": list(row.shape)} for row in self.rows]

    def flat(self) -> dict[str, float]:
        """``{"signal_angle/layer1": ..., ...}``: every number of the table under one key, for loggers."""
        return {f"{key}/layer{row.layer}": getattr(row, key) for row in self.rows for key in AlignmentRow.ANGLES}

    def __str__(self) -> str:
        header = ("layer", "name", "shape", "signal", "sig/ex", "update", "weight", "|B|/|W|", "note")
        lines = [[str(r.layer), r.name or "-", "x".join(map(str, r.shape)), *(_fmt(getattr(r, k)) for k in r.ANGLES),
                  r.reason] for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        render = lambda cells: "  ".join(c.ljust(w) if i in (1, 2, 8) else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        title = (f"alignment with backprop, rule {self.rule}, batch {self.batch_size}, loss {self.loss:.4g} "
                 "(angles in degrees; sig/ex: mean per-example signal angle)")
        return "\n".join([title, render(header), *map(render, lines)])


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> AlignmentTable:
    """Measure a converted model's alignment with backprop on the batch ``(x, y)``.

    Args:
        model: any model made by :func:`feedalign.convert` (or a plain model: ``bp``).
        x: the batch, as the model takes it, e.g. (N, in_features).
        y: the targets ``loss_fn`` takes with the model output, e.g. (N,) labels.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar loss, e.g. ``F.cross_entropy``.

    Runs two forward/backward passes (the rule's, then backprop's; one for a model that
    learns by backprop, whose own update is the true gradient) and leaves no trace:
    parameters, buffers, every ``.grad`` (restored as the same tensors) and the torch RNG
    states (CPU and CUDA) are as before. Both passes start from the
    same RNG state, so dropout draws the same mask in each. The model's train/eval
    mode is used as it is. The rule's forward pass runs in its
    :meth:`~feedalign.rules.LearningRule.forward_context` with ``y``, as in training
    (a ``drtp`` model is given ``y`` as its target).
    """
    layers = trainable_layers(model)
    if not layers:
        raise ValueError(f"model has no nn.Linear or nn.Conv2d layer to measure ({type(model).__name__})")
    names = {id(m): name for name, m in model.named_modules()}
    with _preserved_state(model) as restore_rng:
        with torch.enable_grad():
            loss, rule_signals, rule_updates = _pass(model, layers, x, y, loss_fn,
                                                     learning_rule(model).forward_context(model, y))
            if learns_by_backprop(model):  # the same pass again would give the same tensors
                true_signals, true_updates = rule_signals, rule_updates
            else:
                restore_rng()  # same dropout mask in the backprop pass
                with exact_gradients(model):
                    _, true_signals, true_updates = _pass(model, layers, x, y, loss_fn, contextlib.nullcontext())
    weight_rows = _weight_alignment(model, layers)
    rows = []
    for k, layer in enumerate(layers):
        reasons = []
        signal, why = _signal_angle(rule_signals[k], true_signals[k], angle)
        reasons += [f"signal: {why}"] if why else []
        signal_mean, why_mean = _signal_angle(rule_signals[k], true_signals[k], mean_row_angle)
        reasons += [f"per-example signal: {why_mean}"] if why_mean and why_mean != why else []
        update, why = angle(rule_updates[k], true_updates[k])
        reasons += [f"update: {_name_zero(why, 'rule update', 'true gradient')}"] if why else []
        weight, ratio, why = weight_rows[k]
        reasons += [f"weight: {why}"] if why else []
        rows.append(AlignmentRow(layer=k + 1, name=names.get(id(layer), ""), shape=tuple(layer.weight.shape),
                                 signal_angle=signal, signal_angle_mean=signal_mean, update_angle=update,
                                 weight_angle=weight, norm_ratio=ratio, reason="; ".join(reasons)))
    return AlignmentTable(rule=rule_of(model), rows=rows, batch_size=int(x.shape[0]) if x.dim() else 1, loss=loss)


def _signal_angle(rule_signal, true_signal, measure) -> tuple[float, str]:
    if rule_signal is None or true_signal is None:
        missing = "the rule" if rule_signal is None else "backprop"
        return math.nan, f"no gradient reaches this layer's output under {missing}"
    value, why = measure(rule_signal, true_signal)
    return value, _name_zero(why, "rule signal", "true gradient")


def _name_zero(why: str, first: str, second: str) -> str:
    return why.replace("first vector", first).replace("second vector", second)


class _preserved_state:
    """Context: save every ``.grad``, buffer and torch RNG state of ``model``; put them back on exit.

    Yields a function that resets the RNG to the saved state (for the second pass).
    """

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())
        self.buffers = list(model.buffers())

    def __enter__(self):
        self.grads = [p.grad for p in self.params]  # the tensors themselves: restored by identity
        self.buffer_values = [b.detach().clone() for b in self.buffers]  # e.g. BatchNorm running stats
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        return self._restore_rng

    def _restore_rng(self):
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)

    def __exit__(self, *exc):
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        with torch.no_grad():
            for b, value in zip(self.buffers, self.buffer_values):
                b.copy_(value)
        self._restore_rng()
        return False


def _pass(model, layers, x, y, loss_fn, context):
    """One forward/backward on fresh ``.grad`` fields: loss, the gradient at each ``a_k``, each layer's update."""
    outputs = [None] * len(layers)
    signals = [None] * len(layers)

    def store(k, grad):
        signals[k] = grad.detach()  # overwrite: a rule may compute the same gradient twice (IFA)

    def record(k, module, args, output):
        if not torch.is_grad_enabled():
            return  # not the measured pass: a rule replaying the forward pass inside its backward (np, wp)
        if outputs[k] is not None:
            raise ValueError(f"layer {k + 1} ({type(module).__name__}) ran twice in one forward pass; "
                             "alignment needs each layer once")
        outputs[k] = output
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(functools.partial(store, k))

    handles = [layer.register_forward_hook(functools.partial(record, k)) for k, layer in enumerate(layers)]
    for p in model.parameters():
        p.grad = None
    try:
        with context:
            output = model(x)
        loss = loss_fn(output, y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    updates = []
    for layer in layers:
        parts = [p for p in (layer.weight, layer.bias) if p is not None]
        updates.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                  for p in parts]).detach())
    return loss.item(), signals, updates


# -- weight alignment ------------------------------------------------------------------------
def _weight_alignment(model, layers) -> list[tuple[float, float, str]]:
    """(angle, |B|/|W|, reason) per layer: each feedback matrix against the forward weights it replaces."""
    n = len(layers)
    try:
        roles = learning_rule(model).feedback_layout(model)
    except ValueError as err:  # a rule that cannot say (yet): the angles of the signals still stand
        return [(math.nan, math.nan, f"no feedback matrices ({err})")] * n
    weights = [layer.weight.detach() for layer in layers]
    result = []
    for role in roles:
        if role.matrix is None:
            result.append((math.nan, math.nan, f"no feedback matrix ({role.reason})"))
            continue
        b, w = role.matrix.detach(), _path(weights, role.replaces)
        if w is None or w.shape != b.shape:
            result.append((math.nan, math.nan, f"feedback matrix {tuple(b.shape)} stands in for no matrix of its "
                                               f"shape (a path through Conv2d layers, or shapes that differ)"))
            continue
        value, why = angle(b, w)
        w_norm = w.norm().item()
        ratio = b.norm().item() / w_norm if w_norm > 0 else math.nan
        result.append((value, ratio, _name_zero(why, "feedback matrix is zero", "forward weights are zero")))
    return result


def _path(weights, replaces) -> torch.Tensor | None:
    """``W_{r[-1]} ... W_{r[0]}`` for ``replaces = r``: the linear path a feedback matrix stands in for
    (None where it runs through a Conv2d kernel, which is no matrix)."""
    if len(replaces) == 1:
        return weights[replaces[0]]
    if any(weights[j].dim() != 2 for j in replaces):
        return None
    path = weights[replaces[-1]]
    for j in reversed(replaces[:-1]):
        path = path @ weights[j]
    return path
