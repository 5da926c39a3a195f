"""A fast path for the common case: an ``nn.Sequential`` of ``nn.Linear`` layers and known
element-wise activations (``feedalign.mlp`` builds exactly these).

The general path of every rule is plain autograd: one graph node per layer and
activation, a custom Function per FA layer, hooks at every DFA/IFA cut. On small
layers that bookkeeping, not arithmetic, is what a step costs. Here the whole stack
is ONE autograd Function whose backward computes every signal and weight gradient
itself, and batches the work that does not depend on other layers:

- all hidden outputs live in one (K, N, w) tensor when the hidden widths are equal;
- DFA's hidden signals come from one batched matmul ``e @ B_k`` straight into that
  layout, and ``f'`` of every hidden layer is then one fused element-wise op;
- the gradients of the hidden-to-hidden weights, ``dW_k = delta_k^T h_{k-1}``, are
  one ``bmm`` over the K - 1 layers on CUDA (one launch instead of K - 1); on the
  CPU, K - 1 ``mm`` calls measured faster (see ``_StackFunction.backward``).

On the CPU plain autograd is not far from this (``feedalign bench``, 2 cores): most
of DFA's gain over BP is the matmuls it skips. The single node matters most where
per-op overhead does (many small layers, GPUs).

The user's loop does not change: the Function takes every weight and bias as an
input, so autograd puts (and accumulates) their gradients in ``.grad``. The model
keeps its modules, parameters, buffers and ``state_dict``; only its class becomes
:class:`FastSequential`, a subclass of ``nn.Sequential`` whose forward takes this
path when it can and the general one otherwise (no grad, ``exact_gradients()``,
hooks on the layers, mixed dtypes or devices, ``model.fast_path = False``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

_aten = torch.ops.aten

# ``grad * f'(a)`` written with h = f(a), into ``out``: the fused kernels autograd itself
# runs for these modules, so both paths give the same bits. ReLU: 1 where h > 0.
_BACKWARDS = {
    nn.Tanh: lambda grad, h, m, out: _aten.tanh_backward.grad_input(grad, h, grad_input=out),
    nn.Sigmoid: lambda grad, h, m, out: _aten.sigmoid_backward.grad_input(grad, h, grad_input=out),
    nn.ReLU: lambda grad, h, m, out: _aten.threshold_backward.grad_input(grad, h, 0, grad_input=out),
    nn.LeakyReLU: lambda grad, h, m, out: _aten.leaky_relu_backward.grad_input(
        grad, h, m.negative_slope, True, grad_input=out),
    nn.Identity: lambda grad, h, m, out: out if grad is out else out.copy_(grad),
}


class Plan:
    """What the fast path needs to know about a converted Sequential.

    ``linears`` in forward order, ``activations[k]`` the module after ``linears[k]``
    (``None`` for none), ``rule`` one of ``"bp"`` (the backward matrices are the
    weights), ``"fa"`` (each layer's ``feedback``), ``"dfa"``, ``"ifa"`` (the root's
    ``feedback``). Holds modules, never tensors, so ``.to()`` and ``.double()`` are seen.
    """

    def __init__(self, root: nn.Sequential, linears: list[nn.Linear], activations: list, rule: str):
        self.root, self.linears, self.activations, self.rule = root, linears, activations, rule
        widths = [layer.out_features for layer in linears[:-1]]
        self.stacked = len(set(widths)) == 1  # hidden outputs in one (K, N, w) tensor
        self.activate_ = [_forward_kernel(a) for a in activations]  # f in place, or None
        self._stacked_feedback = (None, None)  # (key, tensor): see stacked_feedback
        # The layers' hook dicts and their sizes now (DFA/IFA's own cut hooks included):
        # a hook added later means someone watches a layer, so it must run as a module.
        modules = [m for m in (*linears, *activations) if m is not None]
        self._hook_dicts = [d for m in modules for d in (m._forward_pre_hooks, m._forward_hooks,
                                                         m._backward_hooks, m._backward_pre_hooks)]
        self._hook_sizes = list(map(len, self._hook_dicts))

    def stacked_feedback(self, feedback: torch.Tensor) -> torch.Tensor:
        """DFA's (out, K*w) ``feedback`` as a contiguous (K, out, w) copy, remade only when the
        buffer changes (``load_state_dict``, ``.to()``)."""
        key = (feedback.data_ptr(), feedback._version, feedback.dtype, feedback.device)
        if self._stacked_feedback[0] != key:
            k = len(self.linears) - 1
            copy = feedback.view(feedback.shape[0], k, -1).transpose(0, 1).contiguous()
            self._stacked_feedback = (key, copy)
        return self._stacked_feedback[1]

    def applies(self, input) -> bool:
        """True when the fast path computes exactly what the general path would."""
        if not (torch.is_grad_enabled() and isinstance(input, torch.Tensor) and input.dim() >= 1):
            return False
        if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks or torch.is_autocast_enabled()):
            return False
        weight = self.linears[0].weight
        if input.dtype != weight.dtype or input.device != weight.device or not input.dtype.is_floating_point:
            return False
        if list(map(len, self._hook_dicts)) != self._hook_sizes:
            return False
        return all(layer.weight.dtype == weight.dtype and layer.weight.device == weight.device
                   for layer in self.linears)

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        linears = self.linears
        weights = [layer.weight for layer in linears]
        biases = [layer.bias for layer in linears]
        if self.rule == "fa":
            backward = [layer.feedback for layer in linears]
        elif self.rule in ("dfa", "ifa"):
            backward = [self.root.feedback]
            if self.root.feedback.shape[0] != linears[-1].out_features:
                raise ValueError(f"{self.rule.upper()} feedback expects outputs of size "
                                 f"{self.root.feedback.shape[0]}, got {linears[-1].out_features}")
        else:
            backward = []
        if input.dim() == 2:
            return _StackFunction.apply(input, self, len(linears), *weights, *biases, *backward)
        flat = input.reshape(-1, input.shape[-1])  # leading dimensions are batch dimensions
        output = _StackFunction.apply(flat, self, len(linears), *weights, *biases, *backward)
        return output.reshape(*input.shape[:-1], output.shape[-1])


class _StackFunction(torch.autograd.Function):
    """The whole stack ``a_l = h_{l-1} W_l^T + b_l``, ``h_l = f(a_l)``, ``y = a_L`` as one node.

    Backward, with ``e = dL/dy`` (row vectors, ``D_l = f'(a_l)``):

    - ``bp``:  ``delta_l = (delta_{l+1} W_{l+1}) * D_l``
    - ``fa``:  ``delta_l = (delta_{l+1} B_{l+1}) * D_l``
    - ``dfa``: ``delta_l = (e B_l) * D_l``, every ``e B_l`` from one matmul ``e @ feedback``
    - ``ifa``: ``delta_1 = (e B_1) * D_1``, ``delta_l = (delta_{l-1} W_l^T) * D_l``

    then ``dW_l = delta_l^T h_{l-1}`` and ``db_l = sum_n delta_l``, with ``delta_L = e``.
    The input gets ``delta_1 W_1`` (``delta_1 B_1`` under FA), as in the general path.
    """

    @staticmethod
    def forward(ctx, input, plan, n_layers, *tensors):
        weights, biases = tensors[:n_layers], tensors[n_layers:2 * n_layers]
        n, k = input.shape[0], n_layers - 1
        if plan.stacked:
            hidden = input.new_empty((k, n, weights[0].shape[0]))
            outs = hidden.unbind(0)
        else:
            outs = [input.new_empty((n, w.shape[0])) for w in weights[:-1]]
            hidden = None
        h = input
        for w, b, out, activate_ in zip(weights, biases, outs, plan.activate_):
            if b is None:
                torch.mm(h, w.t(), out=out)
            else:
                torch.addmm(b, h, w.t(), out=out)
            if activate_ is not None:
                activate_(out)
            h = out
        output = F.linear(h, weights[-1], biases[-1])
        ctx.plan, ctx.n_layers = plan, n_layers
        ctx.save_for_backward(input, *(outs if hidden is None else (hidden,)), *tensors)
        return output

    @staticmethod
    def backward(ctx, error):
        plan, n_layers = ctx.plan, ctx.n_layers
        saved = ctx.saved_tensors
        input = saved[0]
        n_hidden_saved = 1 if plan.stacked else n_layers - 1
        hidden = saved[1:1 + n_hidden_saved]
        tensors = saved[1 + n_hidden_saved:]
        weights, biases, back = tensors[:n_layers], tensors[n_layers:2 * n_layers], tensors[2 * n_layers:]
        k = n_layers - 1
        error = error.contiguous()
        stacked = plan.stacked
        hs = hidden[0].unbind(0) if stacked else hidden
        deltas = _signals(plan, error, weights, back, hs, hidden[0] if stacked else None)

        grad_weights = [None] * n_layers
        grad_biases = [None] * n_layers
        needs = ctx.needs_input_grad  # (input, plan, n_layers, *weights, *biases, *back)
        grad_weights[-1] = error.t().mm(hs[-1])
        if biases[-1] is not None:
            grad_biases[-1] = error.sum(0)
        delta_list = deltas.unbind(0) if plan.stacked else deltas
        grad_weights[0] = delta_list[0].t().mm(input)
        if k > 1:
            if plan.stacked and input.is_cuda:  # the K - 1 hidden-to-hidden layers in one bmm
                grad_weights[1:k] = deltas[1:].transpose(1, 2).bmm(hidden[0][:-1]).unbind(0)
            else:
                # On the CPU one bmm is no faster than K - 1 mm's (1 thread, 98 layers of
                # 240: 9.3 ms against 8.9), and autograd then copies each slice again to
                # make it a .grad of its own (1.5 ms): it never keeps a view of shared storage.
                for l in range(1, k):
                    grad_weights[l] = delta_list[l].t().mm(hs[l - 1])
        if any(b is not None for b in biases[:k]):  # layers without bias are dropped below
            grad_biases[:k] = deltas.sum(1).unbind(0) if plan.stacked else [d.sum(0) for d in delta_list]
        grad_input = None
        if needs[0]:
            first = back[0] if plan.rule == "fa" else weights[0]
            grad_input = delta_list[0].mm(first)
        grad_weights = [g if needs[3 + l] else None for l, g in enumerate(grad_weights)]
        grad_biases = [g if needs[3 + n_layers + l] else None for l, g in enumerate(grad_biases)]
        return (grad_input, None, None, *grad_weights, *grad_biases, *([None] * len(back)))


def _signals(plan, error, weights, back, hs, stack):
    """Every hidden layer's pre-activation signal ``delta_l``: one (K, N, w) tensor when
    ``stack`` (every h_l in one (K, N, w) tensor) is given, else a list of (N, w_l).
    ``f'`` is applied by the same fused kernel autograd uses; in sequential rules layer
    by layer, while each signal is still in cache."""
    rule, k, n = plan.rule, len(hs), error.shape[0]
    activations = plan.activations[:k]
    if rule == "dfa" and stack is not None:
        # e @ feedback straight into the (K, N, w) layout: a bmm with the feedback seen as
        # (K, out, w), then f' of every layer in one op (3x faster than 100 strided slices).
        deltas = torch.bmm(error.expand(k, n, error.shape[1]), plan.stacked_feedback(back[0]))
        if activations[0] is not None and all(type(a) is type(activations[0]) for a in activations):
            _BACKWARDS[type(activations[0])](deltas, stack, activations[0], deltas)
            return deltas
        for l, activation in enumerate(activations):
            if activation is not None:
                _BACKWARDS[type(activation)](deltas[l], hs[l], activation, deltas[l])
        return deltas
    if stack is not None:
        deltas = error.new_empty((k, n, hs[0].shape[1]))
        outs = deltas.unbind(0)
    else:
        outs = [error.new_empty(h.shape) for h in hs]
        deltas = outs

    def times_derivative(l, grad):  # outs[l] = grad * f'(a_l)
        activation = activations[l]
        if activation is None:
            if grad is not outs[l]:
                outs[l].copy_(grad)
        else:
            _BACKWARDS[type(activation)](grad, hs[l], activation, outs[l])

    if rule == "dfa":
        signal = error.mm(back[0])  # (N, sum of widths): every e B_l from one matmul
        for l, part in enumerate(signal.split([h.shape[1] for h in hs], dim=1)):
            times_derivative(l, part)
        return deltas
    if rule == "ifa":
        grad = error.mm(back[0])
        for l in range(k):
            if l > 0:
                grad = torch.mm(outs[l - 1], weights[l].t(), out=outs[l])
            times_derivative(l, grad)
        return deltas
    matrices = back if rule == "fa" else weights  # bp: the forward weights
    signal = error
    for l in range(k - 1, -1, -1):
        times_derivative(l, torch.mm(signal, matrices[l + 1], out=outs[l]))
        signal = outs[l]
    return deltas


def _forward_kernel(activation):
    """``f`` in place, or None for none."""
    kind = type(activation)
    if activation is None or kind is nn.Identity:
        return None
    if kind is nn.Tanh:
        return torch.tanh_
    if kind is nn.Sigmoid:
        return torch.sigmoid_
    if kind is nn.ReLU:
        return torch.relu_
    if kind is nn.LeakyReLU:
        return functools.partial(F.leaky_relu_, negative_slope=activation.negative_slope)
    raise TypeError(f"no fast-path kernel for {kind.__name__}")  # plan_for admits only the kinds above


class FastSequential(nn.Sequential):
    """``nn.Sequential`` that trains through :class:`_StackFunction` when it can.

    Set ``model.fast_path = False`` to force the general (per-layer autograd) path.
    """

    exact_gradient = False  # set by feedalign.exact_gradients(): the general path, plain backprop
    fast_path = True

    def forward(self, input):
        plan = self.__dict__.get("_feedalign_plan")
        if plan is not None and self.fast_path and not self.exact_gradient and plan.applies(input):
            return plan(input)
        return super().forward(input)

    def _get_name(self):
        return "Sequential"


def plan_for(model: nn.Module, linears: list[nn.Linear]) -> list | None:
    """The activations between ``linears`` if ``model`` is a plain stack the fast path handles, else None."""
    if type(model) is not nn.Sequential:
        return None
    modules = list(model)
    if not modules or modules[0] is not linears[0] or not isinstance(modules[-1], nn.Linear):
        return None
    if len({id(layer) for layer in linears}) != len(linears):
        return None  # a layer used twice
    activations: list = []
    for m in modules:
        if isinstance(m, nn.Linear):
            activations.append(None)
        elif type(m) in _BACKWARDS and activations and activations[-1] is None:
            activations[-1] = m
        else:
            return None
    if [m for m in modules if isinstance(m, nn.Linear)] != linears:
        return None
    return activations


def install(model: nn.Module, linears: list[nn.Linear], rule: str) -> bool:
    """Give ``model`` the fast path for ``rule`` if it is a plain stack; returns whether it did."""
    activations = plan_for(model, linears)
    if activations is None:
        return False
    model.__class__ = FastSequential
    model._feedalign_plan = Plan(model, linears, activations, rule)
    return True


def uses_fast_path(output: torch.Tensor) -> bool:
    """Whether ``output`` came out of the fast path (its grad_fn is the stack Function)."""
    node = output.grad_fn
    if node is not None and type(node).__name__ == "ViewBackward0":  # inputs with extra batch dims
        node = node.next_functions[0][0]
    return node is not None and type(node).__name__ == "_StackFunctionBackward"
