"""Direct Feedback Alignment (Nøkland 2016, NeurIPS, Eq. 3 and Fig. 1c).

With ``e = dL/dy`` the gradient of the loss at the network output, every hidden
layer k receives ``e B_k`` in place of its backpropagated gradient, so its
pre-activation signal is ``delta a_k = (e B_k) * f'(a_k)`` (row vectors; the paper
writes ``(B_k e) ⊙ f'(a_k)`` with column vectors). ``B_k`` is fixed and random, of
shape (out_features, width_k). The output layer's gradients are the ordinary ones.

All ``B_k`` live side by side in one buffer ``feedback`` of shape
(out_features, sum of widths) on the model's root, so that every hidden signal
comes from ONE matmul ``e @ feedback``.

Convolutions: every ``nn.Conv2d`` but the first is cut at its input too; its B_k
has shape (out_features, C*H*W) and ``e B_k`` is reshaped to the feature map
(N, C, H, W). As C*H*W depends on the input size, a model with Conv2d layers
draws its ``feedback`` on the first forward pass (from a seed drawn at convert
time, so the same ``convert`` seed gives the same B); ``feedback_matrices`` and
``state_dict`` have it from then on, and ``load_state_dict`` before any forward
takes the saved one.

Residual, attention and recurrent models (``taps``): Launay, Poli, Boniface & Krzakala
2020 ("Direct Feedback Alignment Scales to Modern Deep Learning Tasks and
Architectures", NeurIPS, Sec. 3) project the error to the output of each block, not
into the internals of a residual stream, and backpropagate it inside the block.
``convert(model, "dfa", taps=["blocks.0", "blocks.1"])`` names those outputs; each tap
output ``h_k`` receives ``e B_k`` (:class:`~feedalign.rules._cut.TapCut`), with one B_k for
all positions (tokens) when the model sets ``feedalign_share_positions = True``. A tapped
``feedalign.models.sequence.LSTM``/``GRU`` is cut at every layer's output, and each layer's
recurrence is cut, so every time step's hidden state ``h_t`` receives ``e B_{k,t}``
(recurrent DFA; see :class:`~feedalign.models.sequence.RecurrentLayer`). A model with
attention or recurrent modules needs taps (a model built by feedalign may carry
defaults in its ``feedalign_taps`` attribute).
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from . import fused
from ..models.sequence import LSTM, GRU, RecurrentLayer, has_sequence_modules
from ._cut import HiddenCut, TapCut, find_cut, spread
from .base import FeedbackRole, LearningRule, forward_flops, register, sample_feedback, trainable_layers


class _DirectFeedback(torch.autograd.Function):
    """Identity on the output ``y``; backward sends ``e`` to ``y`` and ``e B_k`` to each hidden ``h_k``.

    A ``feedback`` that requires grad (dkp's, a Parameter) receives :func:`direct_feedback_gradient`
    ``e^T [h_1 ... h_K]``; only then are the ``h_k`` saved."""

    @staticmethod
    def forward(ctx, output, feedback, widths, *hidden):
        ctx.trains_feedback = ctx.needs_input_grad[1]
        ctx.save_for_backward(feedback, *(hidden if ctx.trains_feedback else ()))
        ctx.widths, ctx.n_lead = widths, output.dim() - 1
        ctx.hidden_shapes = [h.shape for h in hidden]
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        feedback, *hidden = ctx.saved_tensors
        flat = error.reshape(-1, error.shape[-1])
        signals = flat.mm(feedback).split(ctx.widths, dim=1)
        grad_feedback = None
        if ctx.trains_feedback:
            grad_feedback = direct_feedback_gradient(flat, [h.reshape(len(flat), -1) for h in hidden])
        return (error, grad_feedback, None,
                *(spread(s, shape, ctx.n_lead) for s, shape in zip(signals, ctx.hidden_shapes)))


def direct_feedback_gradient(error: torch.Tensor, hidden) -> torch.Tensor:
    """``e^T [h_1 ... h_K]``: the outer products of the output error ``e`` (N, out) with every hidden
    output ``h_k`` (N, w_k), side by side as the fused ``feedback`` (out, sum of widths) lays out the B_k.
    ``hidden`` a list of (N, w_k), or one (K, N, w) stack; with stacked members every tensor has a leading
    member dimension (e (M, N, out), h_k (M, N, w_k)). The gradient dkp gives its B_k."""
    if isinstance(hidden, torch.Tensor):  # (K, N, w) -> (K, out, w) in one matmul -> (out, K*w)
        per_layer = torch.matmul(error.mT, hidden)
        return per_layer.transpose(0, 1).reshape(error.shape[-1], -1)
    return torch.cat([torch.matmul(error.mT, h) for h in hidden], dim=-1)


class DirectSignals(fused.StackedSignals):
    """The fused path of every direct rule: each hidden ``delta_k = (z B_k) * f'(a_k)`` from one
    matmul ``z @ feedback``; with a (K, N, w) stack, one ``bmm`` with the feedback seen as
    (K, out, w) straight into that layout. ``z`` (N, out) is :meth:`direct_source`: the output error
    ``e`` for DFA (drtp projects the target instead)."""

    def __init__(self):
        self._stacked = (None, None)  # (key, tensor): see _stacked_feedback

    def inputs(self, plan, input):
        """``[feedback]``, then whatever :meth:`direct_source` reads."""
        return [_checked_feedback(plan.root, plan.linears[-1].out_features)]

    def one_hidden(self, inputs):
        return True  # delta_1 = (z B_1) * f'(a_1)

    def one_hidden_matrix(self, plan, inputs):
        return inputs[0], 1.0

    def signals(self, step, error, inputs):
        feedback = inputs[0]
        signal = self.direct_source(step.output, error, inputs)
        if step.stack is not None:
            k, n = len(step.hidden), signal.shape[0]
            deltas = torch.bmm(signal.expand(k, n, signal.shape[1]), self._stacked_feedback(feedback, k))
            step.times_derivatives(deltas)
            return deltas
        deltas, outs = step.empty()
        for l, part in enumerate(torch.matmul(signal, feedback).split([h.shape[-1] for h in step.hidden], dim=-1)):
            step.times_derivative(l, part, outs[l])
        return deltas

    def _stacked_feedback(self, feedback, k):
        """The (out, K*w) ``feedback`` as a contiguous (K, out, w) copy, remade only when the buffer
        changes (``load_state_dict``, ``.to()``)."""
        key = (feedback.data_ptr(), feedback._version, feedback.dtype, feedback.device)
        if self._stacked[0] != key:
            self._stacked = (key, feedback.view(feedback.shape[0], k, -1).transpose(0, 1).contiguous())
        return self._stacked[1]


def _checked_feedback(root, out_features):
    feedback = root.feedback  # read once: Module's attribute fallback is a visible cost of a small step
    if out_features != feedback.shape[-2]:
        raise ValueError(f"the direct feedback expects outputs of size {feedback.shape[-2]}, got {out_features}")
    return feedback


def _attach(root, output, hidden, preactivations):
    materialize_feedback(root)
    return _DirectFeedback.apply(output, _checked_feedback(root, output.shape[-1]), find_cut(root).widths, *hidden)


class DirectRule(LearningRule):
    """What ``dfa`` and ``drtp`` share: one B_k (out_features, width_k) per hidden layer k, side by side
    in the root's buffer ``feedback``, each carrying a signal from the output straight to h_k."""

    takes_taps = True
    # attach(root, output, hidden, preactivations) -> the output routed through the rule's Function
    attach: ClassVar[Callable]

    def convert(self, model, *, generator, feedback_init, feedback_scale, taps=None):
        layers = trainable_layers(model)
        install_direct_feedback(model, layers, self.attach, generator=generator, feedback_init=feedback_init,
                                feedback_scale=feedback_scale, taps=taps)
        if taps is None and all(isinstance(layer, nn.Linear) for layer in layers):
            fused.install(model, layers, self.fused_signals())
        return model

    def feedback_matrices(self, model: nn.Module) -> list[torch.Tensor]:
        """One B_k per hidden layer (per tap with ``taps``), forward order, each (out_features, width_k):
        views of ``model.feedback``."""
        materialize_feedback(model)  # a Conv2d model: raises if no forward pass has sized it yet
        return list(model.feedback.split(find_cut(model).widths, dim=1))

    def feedback_layout(self, model):
        """B_k stands in for ``W_L ... W_{k+1}``, the linear path from h_k to the output; the output layer has none."""
        if isinstance(find_cut(model), TapCut):  # B_k stands in for the map from a block output, not a layer's
            return [FeedbackRole(None, reason="dfa/drtp with taps: the feedback is per tap, not per layer")
                    for _ in trainable_layers(model)]
        blocks = self.feedback_matrices(model)
        n = len(blocks) + 1
        return ([FeedbackRole(b, tuple(range(k + 1, n))) for k, b in enumerate(blocks)]
                + [FeedbackRole(None, reason="output layer")])

    def step_flops(self, widths, batch):
        """Forward, every weight gradient, and ONE matmul (N, out) x (out, sum of hidden widths) for all signals."""
        return float(2 * forward_flops(widths, batch) + 2 * batch * widths[-1] * sum(widths[1:-1]))


@register
class DirectFeedbackAlignment(DirectRule):
    """``dfa``. Default feedback: B_k ~ U[-1/sqrt(width_k), 1/sqrt(width_k)], as ``ErrorFeedback.lua``
    of Nøkland's code (anokland/dfa-torch); ``feedback_scale`` sets one scale for all layers."""

    name = "dfa"

    attach = staticmethod(_attach)

    # Learning-rate factors DFA's papers apply to the recipe BP trains a family with.
    RECIPE_LR: ClassVar[dict[str, tuple[float, str]]] = {
        # lightonai/dfa-scales-to-modern-deep-learning, natural-language-processing/run_experiments.sh: BP trains its
        # transformer with the Noam schedule (4000 warm-up steps, a peak of 512^-0.5 * 4000^-0.5 = 7.0e-4), DFA with
        # Adam at 5e-5 (or 1e-4 decayed on plateaus): a tenth of BP's peak rate (Launay et al. 2020, NeurIPS).
        "transformer": (0.1, "Launay et al. 2020 (NeurIPS; their code's run_experiments.sh): DFA trains transformers at "
                             "about a tenth of BP's peak learning rate (Adam 5e-5 against Noam's 7e-4)"),
        # jsalbert/biotorch benchmark_configs/cifar10/resnet_20/sgd: DFA at lr 0.001 where BP and FA take 0.1.
        "resnet": (0.01, "BioTorch's ResNet-20 benchmark (Sanfiz & Akrout 2021, benchmark_configs/cifar10/resnet_20): "
                         "DFA at lr 0.001 where BP takes 0.1"),
    }

    def adjust_recipe(self, family, settings):
        if family not in self.RECIPE_LR:
            return {}
        factor, why = self.RECIPE_LR[family]
        return {"lr": (float(f"{settings['lr'] * factor:.12g}"), why)}  # 3e-3 * 0.1 is 3e-4, not 3.0000000000000003e-4

    def fused_signals(self):
        return DirectSignals()


def install_direct_feedback(model, layers, attach, *, generator, feedback_init, feedback_scale,
                            taps=None) -> HiddenCut:
    """Cut ``model`` at the input of every layer in ``layers`` but the first (or at the outputs of
    the submodules named in ``taps``) and give the root the fused buffer ``feedback``
    (out_features, sum of widths), now or (with Conv2d layers or taps) on the first forward
    pass. Shared by ``dfa`` and ``drtp``."""
    if not isinstance(layers[-1], nn.Linear):
        raise ValueError(f"the last trainable layer must be nn.Linear (the output), got {type(layers[-1]).__name__}")
    if taps is not None:
        cut = TapCut(model, expand_taps(model, taps), layers, attach,
                     share_positions=bool(getattr(model, "feedalign_share_positions", False)))
    elif has_sequence_modules(model):
        raise ValueError("dfa/drtp on a model with attention or recurrent modules need the cut points: "
                         "convert(model, rule, taps=[...]) with the names of the blocks whose outputs receive "
                         "the projected error (Launay et al. 2020), e.g. the transformer blocks or the LSTM")
    else:
        cut = HiddenCut(model, layers, attach)
    cut.feedback_spec = dict(init=feedback_init, scale=feedback_scale)
    model._feedalign_cut = cut
    if cut.ready:
        model.register_buffer("feedback", _draw(cut, layers[-1], generator))
    else:
        cut.feedback_spec["seed"] = int(torch.randint(2 ** 62, (1,), generator=generator))
        model.register_buffer("feedback", None)
        model._register_load_state_dict_pre_hook(_take_saved_feedback, with_module=True)
    return cut


def expand_taps(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every tap; a feedalign LSTM/GRU becomes its layers, and every tapped
    recurrent layer cuts its recurrence (recurrent DFA: the error reaches every time step)."""
    taps = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, (nn.LSTM, nn.GRU, nn.MultiheadAttention)):
            raise ValueError(f"tap {name!r} is a torch {type(module).__name__}; convert swaps it for feedalign's "
                             "module first (feedalign.models.sequence.swap_sequence_modules)")
        layers = ([(f"{name}.layers.{k}", layer) for k, layer in enumerate(module.layers)]
                  if isinstance(module, (LSTM, GRU)) else [(name, module)])
        for _, layer in layers:
            if isinstance(layer, RecurrentLayer):
                layer.cut_recurrence = True
        taps.extend(layers)
    seen = [name for name, _ in taps]
    if len(set(seen)) != len(seen):
        raise ValueError(f"taps name the same module twice: {seen}")
    return taps


def _draw(cut, output_layer, generator):
    out_features, spec = output_layer.out_features, cut.feedback_spec
    blocks = [sample_feedback((out_features, width), fan=width, init=spec["init"], scale=spec["scale"],
                              generator=generator, like=output_layer.weight) for width in cut.widths]
    return torch.cat(blocks, dim=1)


def materialize_feedback(root) -> None:
    """Draw the root's ``feedback`` once the cut knows every size (first forward of a Conv2d model)."""
    if root.feedback is None:
        cut = find_cut(root)
        root.feedback = _draw(cut, cut.linears[-1], torch.Generator().manual_seed(cut.feedback_spec["seed"]))


def _take_saved_feedback(module, state_dict, prefix, *args):
    key = prefix + "feedback"
    if module.feedback is None and key in state_dict:
        module.feedback = torch.empty_like(state_dict[key])
