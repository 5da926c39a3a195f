"""Direct Kolen-Pollack (Webster, Choi & Ahn 2021, "Learning the Connections in Direct Feedback
Alignment", ICLR 2021 submission, openreview zgGmAx9ZcY; their code: webstah/dkp-gist).

DFA (:mod:`.dfa`, Nøkland 2016) whose direct feedback matrices *learn* with the Kolen-Pollack rule
(Kolen & Pollack 1994; Akrout et al. 2019, NeurIPS, :mod:`.kp`). Row vectors, ``e = dL/dy`` (N, out) the
output error, ``h_k = f(a_k)`` (N, w_k) the output of hidden layer k, ``W_L`` (out, w_K) the output layer:

    hidden signal (DFA):    delta a_k = (e B_k) * f'(a_k)                          B_k (out, w_k)
    forward weights:        dW_k = -eta delta a_k^T h_{k-1} - lambda W_k,        dW_L = -eta e^T h_K - lambda W_L
    feedback (DKP):         dB_k = -eta e^T h_k - lambda B_k

B_k connects the output to h_k, so the forward weight it stands for is a connection from h_k to the
output. For the last hidden layer that connection exists: it is ``W_L``, and ``e^T h_K`` is exactly
``W_L``'s gradient, so ``B_K`` gets ``W_L``'s update, weight decay included (Kolen-Pollack on the output
layer), and ``B_K - W_L`` shrinks by ``(1 - eta lambda)`` every plain SGD step: ``B_K`` converges to ``W_L``
and the last hidden layer's signal to backprop's. For k < K no weight of the network maps h_k to the
output: ``e^T h_k`` is the gradient that a direct linear connection ``D_k`` from ``h_k`` to the output
(``y = ... + h_k D_k^T``, evaluated at ``D_k = 0``) would receive. B_k is such a connection trained by the
network's own output error and forgetting its random start geometrically,

    B_k(t) = (1 - eta lambda)^t B_k(0) - eta sum_{s<t} (1 - eta lambda)^(t-1-s) e_s^T h_k,s     (plain SGD),

so it learns how h_k moves the output, in place of the product ``W_L ... W_{k+1}`` of the linear path
(which DFA's diagnostics compare it with). The update is local: the output error and the layer's own
activity, no forward weight read.

Source of the update: the authors' code (webstah/dkp-gist, ``utils/gradfunctions.py``, DKP branch)
gives the backward weights the gradient ``grad_at_output^T @ layer_output`` (``e^T h_k``, with ``h_k``
after the activation, where their DFA hook sits) and trains them with weight decay (``main.py``: Adam at
1e-4, decay 1e-6, beside SGD with Nesterov momentum for the forward weights). The paper's own equations
were not readable here (only its abstract): equation numbers are not cited, and the convergence of
``B_K`` to ``W_L`` above is derived from that update, not quoted.

Design: DFA's machinery unchanged (the cut, the fused ``feedback`` (out, sum of widths) on the root,
:class:`~.dfa.DirectSignals`), with ``feedback`` an ``nn.Parameter`` whose gradient, on the general and
the fused path alike, is :func:`~.dfa.direct_feedback_gradient` ``e^T [h_1 ... h_K]``. As in ``kp``, the
user's loop is unchanged: an optimizer built on ``model.parameters()`` *after* ``convert`` holds the B_k
and gives them the forward weights' learning rate, momentum and weight decay. The geometric convergence
needs weight decay (without it ``B_K - W_L`` stays constant) and the same optimizer settings for both;
with a separate optimizer for the feedback (as the authors' code) B_K follows W_L's gradients but not its
exact trajectory. Excluding ``feedback`` from the optimizer gives DFA. Under
:func:`feedalign.exact_gradients` B receives no gradient.

Scope: the feedback must exist when the optimizer is built, so every layer after the first must be
``nn.Linear`` (a Conv2d's feedback is sized only by the first forward pass, see :mod:`.dfa`) and taps are
not taken; the authors' convolutional networks are not covered.
"""
from __future__ import annotations

from torch import nn

from .base import register, trainable_layers
from .dfa import DirectFeedbackAlignment, DirectSignals, direct_feedback_gradient


class DirectKolenPollackSignals(DirectSignals):
    """DFA's fused signals, and ``e^T [h_1 ... h_K]`` as the gradient of the trained ``feedback``.

    :meth:`signals` has ``e`` and the hidden outputs; :meth:`input_grads`, called next in the same
    backward pass, hands over what it computed."""

    def __init__(self):
        super().__init__()
        self._feedback_grad = None

    def one_hidden(self, inputs):
        return False  # the one-hidden-layer node gives no gradient to the feedback

    def signals(self, step, error, inputs):
        deltas = super().signals(step, error, inputs)
        self._feedback_grad = direct_feedback_gradient(error, step.stack if step.stack is not None else step.hidden)
        return deltas

    def input_grads(self, plan, grad_weights, inputs):
        grad, self._feedback_grad = self._feedback_grad, None
        return [grad]


@register
class DirectKolenPollack(DirectFeedbackAlignment):
    """``dkp``: DFA's B_k (drawn as ``dfa`` draws them) trained by the user's optimizer with the
    gradient ``e^T h_k``. Build the optimizer after ``convert``. MLPs (``nn.Linear`` after the first layer)."""

    name = "dkp"
    takes_taps = False

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        layers = trainable_layers(model)
        later = [type(layer).__name__ for layer in layers[1:] if not isinstance(layer, nn.Linear)]
        if later:
            raise ValueError(f"dkp needs nn.Linear layers after the first (got {later[0]}): its trained feedback must "
                             "exist when the optimizer is built, and a Conv2d's is sized only by the first forward")
        model = super().convert(model, generator=generator, feedback_init=feedback_init, feedback_scale=feedback_scale)
        feedback = model._buffers.pop("feedback")
        model.register_parameter("feedback", nn.Parameter(feedback))
        return model

    def fused_signals(self):
        return DirectKolenPollackSignals()

    def step_flops(self, widths, batch):
        """DFA's, and one matmul (out, N) x (N, sum of hidden widths) for the feedback's gradient."""
        return super().step_flops(widths, batch) + float(2 * batch * widths[-1] * sum(widths[1:-1]))
