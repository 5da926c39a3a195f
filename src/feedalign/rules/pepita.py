"""PEPITA, "Present the Error to Perturb the Input To modulate Activity" (Dellaferrera & Kreiman 2022, ICML,
"Error-driven Input Modulation: Solving the Credit Assignment Problem without a Backward Pass"; their code:
GiorgiaD/PEPITA, ``Tutorial_PEPITA_FullyConnectedNets_CIFAR-10.ipynb``).

No error travels backward. Two forward passes of one batch (row vectors, ``N`` rows, layers l = 1 .. L,
``h_0`` the input, ``h_l`` the output of hidden layer l, ``t`` the one-hot target):

    pass 1 (the standard one):  h_l = f(h_{l-1} W_l^T + b_l),  y = h_{L-1} W_L^T + b_L,  e = softmax(y) - t
    input modulation:           h'_0 = h_0 + e F                                 F (out_features, in_features)
    pass 2 (the modulated one): h'_l = f(h'_{l-1} W_l^T + b_l),  y',            e' = softmax(y') - t

and every layer learns from what it sees, with no weight but its own (the updates to descend):

    hidden layers (l < L):  dW_l = (h_l - h'_l)^T h'_{l-1} / N,     db_l = sum_n (h_l - h'_l) / N
    output layer:           dW_L = e'^T h'_{L-1} / N,               db_L = sum_n e' / N

These are the authors' code's updates (``delta_w = -(layers_act[l] - mod_layers_act[l]).T @ mod_input`` for
the first and hidden layers, ``-mod_error.T @ mod_layers_act[-2]`` for the last, applied as
``w += eta * delta_w / batch_size``), with ``h`` taken after the activation (and after a dropout mask that
both passes share). The paper's equations could not be read here (only its abstract): equation numbers
are not cited. The authors' networks have no biases; the bias updates above are the same rule's
(an input fixed at 1) and an extension of ours. ``F`` defaults to the authors' U[-0.05 sqrt(6/in),
0.05 sqrt(6/in)] (their notebook: ``(rand(nin, 10) * 2 * sd - sd) * 0.05`` with ``sd = sqrt(6/nin)``);
``feedback_scale`` replaces ``0.05 sqrt(6/in)``.

What it approximates: to first order in ``F``, ``h'_1 - h_1 = f'(a_1) * (e F W_1^T)``, so the first layer
learns as DFA would with the feedback ``-F W_1^T`` (a random projection through the layer's own weights);
``tests/test_pepita.py`` checks that this holds with an error of order ``|F|^2``.

How it fits ``convert`` and the user's loop (``loss.backward(); optimizer.step()``): the forward pass is pass
1, unchanged; hooks record every layer's input and route the output through one autograd Function whose
backward runs pass 2 (functionally, without the layers' hooks) and returns the updates above as the
gradients of the weights and biases; the layers' own backward is never run, and no gradient reaches the
model's input. The loss only starts the update and, by default, tells the target: for a mean-reduced
softmax cross-entropy (``F.cross_entropy``) ``t = softmax(y) - N dL/dy`` exactly (as ``drtp`` recovers it).
For any other loss give the target for the forward pass, ``with feedalign.rules.pepita.target(model, y):``
(class indices or (N, out_features) rows); the training engine does (:meth:`Pepita.forward_context`).
PEPITA's error is the softmax output's minus the target whatever loss is backpropagated. Under
:func:`feedalign.exact_gradients` the model is plain backprop.

What a model must be: an ``nn.Sequential`` of ``nn.Linear`` layers with parameter-free modules (activations,
dropout) between them, ending with an ``nn.Linear`` (``feedalign.mlp``), with at least one hidden layer.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._cut import LayerInputs
from ._target import as_rows, holding, recover
from .base import FeedbackRole, LearningRule, forward_flops, linear_stack, register, sample_feedback

DEFAULT_SCALE = 0.05  # F ~ U[-s, s] with s = 0.05 sqrt(6 / in_features), the authors' notebook


class PepitaState(LayerInputs):
    """What a ``pepita`` model carries (the root's ``_feedalign_cut``): its layers, the modules between them,
    and during a training forward pass the layers' inputs and the RNG state (so pass 2 draws pass 1's
    dropout masks)."""

    rule = "pepita"

    def __init__(self, root: nn.Module, linears: list[nn.Linear], between: list[nn.Sequential]):
        super().__init__(root, linears)
        self.between = between
        self.target = None  # given by target(); else recovered at backward
        self.random = any(isinstance(m, nn.modules.dropout._DropoutNd) for b in between for m in b.modules())
        self._rng = None

    def _start(self, root, args):
        super()._start(root, args)
        self._rng = _rng_state(args) if self._inputs is not None and self.random and root.training else None

    def _finish(self, root, args, output):
        try:
            return super()._finish(root, args, output)
        finally:
            self._rng = None  # hold no state past the forward pass

    def attach(self, root, output, inputs, params):
        target = None if self.target is None else as_rows(self.target, output.shape, output.dtype, rule="pepita")
        return _Pepita.apply(output.detach(), self, root.feedback, target, self._rng, len(inputs), *inputs, *params)


def _rng_state(args):
    """The CPU (and the input's CUDA device) RNG state, for pass 2 to draw pass 1's dropout masks again."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, device


class _Pepita(torch.autograd.Function):
    """Identity on the output ``y`` (detached); backward runs pass 2 from ``e`` and returns PEPITA's updates as the
    gradients of the weights and biases."""

    @staticmethod
    def forward(ctx, output, state, feedback, target, rng, n_layers, *tensors):
        ctx.state, ctx.n_layers, ctx.rng, ctx.has_target = state, n_layers, rng, target is not None
        ctx.save_for_backward(output, feedback, *((target,) if target is not None else ()), *tensors)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        output, feedback, *rest = ctx.saved_tensors
        target = rest.pop(0) if ctx.has_target else None
        state, n = ctx.state, ctx.n_layers
        inputs = rest[:n]
        if target is None:
            target = recover(output, error, rule="pepita")
        biases = [layer.bias for layer in state.linears]
        with _replaying(ctx.rng):
            grad_w, grad_b = pepita_updates([layer.weight.detach() for layer in state.linears],
                                            [None if b is None else b.detach() for b in biases], state.between,
                                            inputs, output, target, feedback)
        grads = [g for gw, gb, b in zip(grad_w, grad_b, biases) for g in ((gw,) if b is None else (gw, gb))]
        wanted = ctx.needs_input_grad[6 + n:]
        return (None, None, None, None, None, None, *([None] * n),
                *(g if w else None for g, w in zip(grads, wanted)))


@contextlib.contextmanager
def _replaying(rng):
    """Pass 2 under pass 1's RNG state (its dropout masks), leaving the RNG as it was."""
    if rng is None:
        yield
        return
    cpu, cuda, device = rng
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


@torch.no_grad()
def pepita_updates(weights, biases, between, inputs, output, target, feedback):
    """PEPITA's update of every layer: ``(grad_w, grad_b)``, lists in forward order (``grad_b[l]`` None without
    bias), the gradients to descend.

    ``weights[l]`` (out, in) and ``biases[l]`` of layer l (0-based); ``between[l]`` the modules from layer l's
    output to the next layer's input (f, dropout); ``inputs[l]`` (*lead, in) layer l's input in pass 1
    (``inputs[0]`` the data, ``inputs[l]`` = h_l); ``output`` (*lead, out) pass 1's y; ``target`` t, (rows, out)
    or of ``output``'s shape; ``feedback`` F (out, in_0). See the module docstring for the equations.
    """
    dtype = output.dtype
    y = output.reshape(-1, output.shape[-1])
    rows = y.shape[0]
    t = target.reshape(rows, -1).to(dtype)
    h = [x.reshape(rows, -1).to(dtype) for x in inputs]  # h[l]: pass 1's input of layer l
    error = torch.softmax(y, dim=-1) - t
    modulated = [h[0] + error.mm(feedback.to(dtype))]  # modulated[l]: pass 2's input of layer l
    for l, (w, b) in enumerate(zip(weights, biases)):
        a = F.linear(modulated[-1], w.to(dtype), None if b is None else b.to(dtype))
        if l < len(weights) - 1:
            modulated.append(between[l](a))
        else:
            modulated_error = torch.softmax(a, dim=-1) - t
    grad_w, grad_b = [], []
    for l in range(len(weights)):
        delta = modulated_error if l == len(weights) - 1 else h[l + 1] - modulated[l + 1]
        grad_w.append((delta.t().mm(modulated[l]) / rows).to(weights[l].dtype))
        grad_b.append(None if biases[l] is None else (delta.sum(0) / rows).to(biases[l].dtype))
    return grad_w, grad_b


def _state(model: nn.Module) -> PepitaState:
    state = getattr(model, "_feedalign_cut", None)
    if not isinstance(state, PepitaState):
        raise ValueError("model was not converted with rule 'pepita' (feedalign.convert(model, 'pepita'))")
    return state


@contextlib.contextmanager
def target(model: nn.Module, y: torch.Tensor):
    """Within this block the forward passes of a ``pepita`` ``model`` take ``y`` as the target: class indices
    (N,) or rows of the output's shape (N, out_features). The backward may run outside the block."""
    with holding(_state(model), "target", y, rule="pepita"):
        yield model


@register
class Pepita(LearningRule):
    """``pepita``: two forward passes, the second on the input modulated by ``e F`` (see the module docstring)."""

    name = "pepita"

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        linears, between = linear_stack(model, "pepita")
        if len(linears) < 2:
            raise ValueError("pepita needs at least one hidden layer (two nn.Linear layers); the model has "
                             f"{len(linears)}")
        first, last = linears[0], linears[-1]
        scale = DEFAULT_SCALE * math.sqrt(6.0 / first.in_features) if feedback_scale is None else feedback_scale
        model.register_buffer("feedback", sample_feedback((last.out_features, first.in_features),
                                                          fan=first.in_features, init=feedback_init, scale=scale,
                                                          generator=generator, like=first.weight))
        model._feedalign_cut = PepitaState(model, linears, between)
        return model

    def forward_context(self, model, y):
        """The target for the forward pass (:func:`target`): every loss works, not only the cross-entropy the
        target can be recovered from."""
        return target(model, y)

    def feedback_matrices(self, model):
        """``[F]``, (out_features, in_features): the projection of the error onto the input."""
        return [model.feedback]

    def feedback_layout(self, model):
        """F stands in for the whole path ``W_L ... W_1`` from the input to the output (the authors' notebook
        measures its angle to that product); it is the first layer's, the others have none."""
        n = len(_state(model).linears)
        return ([FeedbackRole(model.feedback.detach(), tuple(range(n)))]
                + [FeedbackRole(None, reason="pepita: one F, at the input") for _ in range(n - 1)])

    def step_flops(self, widths, batch):
        """Two forward passes, the modulation ``e F`` and every weight's update."""
        forward = forward_flops(widths, batch)
        return float(2 * forward + 2 * batch * widths[0] * widths[-1] + forward)
