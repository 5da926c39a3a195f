"""The fused path: a plain stack of ``nn.Linear`` layers and element-wise activations (what
``feedalign.mlp`` builds) trained through ONE autograd node instead of one per layer.

A rule's general path is plain autograd: a node per layer and activation, a custom Function per
FA-type layer, hooks at every DFA/IFA cut. On small layers that bookkeeping, not arithmetic, is what a
step costs. Here the whole stack is one :class:`torch.autograd.Function` whose backward computes every
signal and weight gradient itself and batches what does not depend on other layers:

- when the hidden widths are equal, all hidden outputs live in one (K, N, w) tensor and so do their
  signals; a rule can fill them in one batched op (DFA: one ``bmm`` for every ``e @ B_k``), and ``f'``
  of every hidden layer is one element-wise op;
- the hidden-to-hidden weight gradients ``dW_k = delta_k^T h_{k-1}`` are one ``bmm`` where threads or
  a GPU can split it.

This module is only the runner: the forward pass, the weight and bias gradients, the batching. What a
rule sends to each hidden layer is its :class:`StackedSignals`, which lives in the rule's own module
beside its general path and is tested against the same float64 references.

**Members.** The runner is generic over a leading member dimension: :func:`stack_members` turns N
converted models of one architecture into one model whose every parameter and buffer is the members'
tensors stacked, (N, ...), and the same node then trains all N at once (input (N, B, in), output
(N, B, out); ``baddbmm`` where one model has ``addmm``). A rule's signals are written with ``matmul``
and ``.mT``, so they serve one model and N alike; population training
(:mod:`feedalign.training.population`) needs no code of its own for any rule.

The user's loop does not change: the Function takes every weight and bias as an input, so autograd
puts (and accumulates) their gradients in ``.grad``. The model keeps its modules, parameters, buffers
and ``state_dict``; only its class becomes :class:`FusedSequential`, an ``nn.Sequential`` whose forward
takes this path when it can and the general one otherwise (no grad, ``exact_gradients()``, hooks on
the layers, mixed dtypes or devices, ``model.fused = False``). Under ``torch.compile`` dynamo traces
the node like any autograd Function.
"""
from __future__ import annotations

import abc
import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

_aten = torch.ops.aten

# ``out = grad * f'(a)`` written with h = f(a), into ``out``: the fused kernels autograd
# itself runs for these modules, so both paths give the same bits. ReLU: 1 where h > 0.
_tanh_backward = _aten.tanh_backward.grad_input
_sigmoid_backward = _aten.sigmoid_backward.grad_input
_threshold_backward = _aten.threshold_backward.grad_input
_leaky_relu_backward = _aten.leaky_relu_backward.grad_input


def _tanh(grad, h, out):
    return _tanh_backward(grad, h, grad_input=out)


def _sigmoid(grad, h, out):
    return _sigmoid_backward(grad, h, grad_input=out)


def _relu(grad, h, out):
    return _threshold_backward(grad, h, 0, grad_input=out)


def _leaky_relu(negative_slope, grad, h, out):
    return _leaky_relu_backward(grad, h, negative_slope, True, grad_input=out)


def _copy_into(grad, h, out):
    return out if grad is out else out.copy_(grad)


# module-level functions (LeakyReLU's slope bound by a partial), so a whole saved model, which holds its
# plan, still pickles
_BACKWARDS = {nn.Tanh: _tanh, nn.Sigmoid: _sigmoid, nn.ReLU: _relu, nn.LeakyReLU: _leaky_relu, nn.Identity: _copy_into}


def derivative_kernel(activation):
    """``(grad, h, out) -> out`` with ``out = grad * f'(a)`` given ``h = f(a)`` (``grad`` may be ``out``);
    ``activation`` None is the identity."""
    if activation is None:
        return _copy_into
    if type(activation) is nn.LeakyReLU:
        return functools.partial(_leaky_relu, activation.negative_slope)
    return _BACKWARDS[type(activation)]


def scaled_matmul(signal: torch.Tensor, matrix: torch.Tensor, scale, out: torch.Tensor) -> torch.Tensor:
    """``out = s (signal @ matrix)``; ``s`` a float goes into the GEMM's alpha (no pass over ``matrix`` or
    ``out``), a tensor (a population's per-member scales, (N, 1, 1)) multiplies the product."""
    if isinstance(scale, torch.Tensor):
        return torch.matmul(signal, matrix, out=out).mul_(scale)
    if scale == 1.0:
        return torch.matmul(signal, matrix, out=out)
    if signal.dim() == 2:  # beta=0: out is only written, never read
        return torch.addmm(out, signal, matrix, beta=0, alpha=scale, out=out)
    return torch.baddbmm(out, signal, matrix, beta=0, alpha=scale, out=out)


class StackedSignals(abc.ABC):
    """A rule's backward on the fused path: the pre-activation signal of every hidden layer at once.

    Row vectors; ``e = dL/dy`` (N, out), ``h_l`` the output of hidden layer l, ``D_l = f'(a_l)``.
    The runner then computes ``dW_l = delta_l^T h_{l-1}``, ``db_l = sum_n delta_l``
    (``delta_L = e``) and the input gradient ``delta_1 M`` with ``M`` from :meth:`input_matrix`.
    With members (:func:`stack_members`) every tensor has a leading member dimension: ``e`` (M, N, out),
    weights and feedback (M, ...); a rule that writes its products with ``matmul`` and ``.mT`` serves both.
    """

    #: whether :meth:`signals` reads the stack's output ``y`` (``step.output``, (N, out)); saved only then
    needs_output = False

    def inputs(self, plan: "Plan", input: torch.Tensor) -> list[torch.Tensor]:
        """Tensors the rule's backward reads besides weights and biases, made inputs of the node:
        saved for backward (an in-place change before it raises, as in autograd) and given the
        gradients of :meth:`input_grads`. Called at every forward with the stack's ``input``
        (..., in). Default: none."""
        return []

    @abc.abstractmethod
    def signals(self, step: "Backward", error: torch.Tensor, inputs: list[torch.Tensor]):
        """Every ``delta_l`` (l = 1 .. K, the hidden layers): ``step.empty()``'s layout, filled."""

    def one_hidden(self, inputs: list[torch.Tensor]) -> bool:
        """Whether, on a stack with ONE hidden layer, the rule's signal is ``delta_1 = s (z M') * f'(a_1)`` with
        ``(M', s)`` from :meth:`one_hidden_matrix`, ``z`` from :meth:`direct_source` and, for ``inputs`` that need
        one, the gradient :meth:`input_grads` gives from ``dW_1, dW_2``; the stack then runs as the
        one-hidden-layer node :class:`_OneHiddenFunction`.
        Default: False."""
        return False

    def one_hidden_matrix(self, plan: "Plan", inputs: list[torch.Tensor]) -> tuple[torch.Tensor, float] | None:
        """``(M', s)`` of :meth:`one_hidden`, asked for at backward time (so a B that follows W sees the W
        of that step); ``s`` a float goes into the GEMM's alpha. Asked only where :meth:`one_hidden` is True
        (a rule that says True overrides this); the default, None, is never asked for."""
        return None

    def direct_source(self, output: torch.Tensor | None, error: torch.Tensor,
                      inputs: list[torch.Tensor]) -> torch.Tensor:
        """The signal ``z`` (N, out) a rule projects into the hidden layers, from the stack's output ``y``
        (where :attr:`needs_output`, else None), ``e`` and :meth:`inputs`. Default ``e``."""
        return error

    def input_matrix(self, step: "Backward", inputs: list[torch.Tensor]) -> torch.Tensor:
        """The (width_1, in) matrix that carries ``delta_1`` to the stack's input; asked for only when
        the input needs a gradient. Default ``W_1``: rules that change only the hidden signals."""
        return step.weights[0]

    def input_grads(self, plan: "Plan", grad_weights: list[torch.Tensor],
                    inputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The gradients of :meth:`inputs`, given every ``dW_l``. Default: none."""
        return [None] * len(inputs)


class Backward:
    """What one backward pass of the stack gives a rule's :meth:`StackedSignals.signals`.

    ``weights`` (W_1 .. W_L), ``plan.linears`` (the layers), ``hidden`` (h_1 .. h_K, each
    (N, w_l)), ``stack`` (every h_l in one (K, N, w) tensor when the hidden widths are
    equal, else None), ``output`` (the stack's output y, (N, out), when the rule's
    :attr:`StackedSignals.needs_output`, else None).
    """

    def __init__(self, plan, weights, hidden, stack, output=None):
        self.plan, self.weights, self.hidden, self.stack, self.output = plan, weights, hidden, stack, output
        self.activations = plan.activations[:len(hidden)]
        self.slices = None  # the K slices of the (K, N, w) tensor empty() made, so the runner need not unbind it again

    def empty(self):
        """``(deltas, outs)``: a fresh (K, N, w) tensor and its K slices if stacked, else a list of (N, w_l) twice."""
        if self.stack is not None:
            deltas = torch.empty_like(self.stack)
            self.slices = (deltas, deltas.unbind(0))
            return self.slices
        outs = [torch.empty_like(h) for h in self.hidden]
        return outs, outs

    def times_derivative(self, l: int, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = grad * f'(a_l)`` (``grad`` may be ``out``), with the kernel autograd would use."""
        return self.plan.derivative_[l](grad, self.hidden[l], out)

    def times_derivatives(self, deltas) -> None:
        """``delta_l *= f'(a_l)`` in place for every hidden layer; one op when stacked with one activation kind."""
        first = self.activations[0]
        if self.stack is not None and first is not None and all(_same_kind(a, first) for a in self.activations):
            self.plan.derivative_[0](deltas, self.stack, deltas)  # one op, not K strided ones
            return
        hidden, derivative_ = self.hidden, self.plan.derivative_
        for l, delta in enumerate(deltas.unbind(0) if self.stack is not None else deltas):
            derivative_[l](delta, hidden[l], delta)


class Plan:
    """What the fused path needs to know about a converted Sequential.

    ``linears`` in forward order, ``activations[k]`` the module after ``linears[k]``
    (``None`` for none), ``signals`` the rule's :class:`StackedSignals`, ``members`` the size of the
    leading member dimension of a stacked model (:func:`stack_members`), else None. Holds modules,
    never tensors, so ``.to()`` and ``.double()`` are seen.
    """

    def __init__(self, root: nn.Sequential, linears: list[nn.Linear], activations: list, signals: StackedSignals,
                 members: int | None = None):
        self.root, self.linears, self.activations, self.signals = root, linears, activations, signals
        self.members = members
        widths = [layer.out_features for layer in linears[:-1]]
        # hidden outputs in one (K, N, w) tensor; a stacked model keeps a list of (M, N, w_l)
        self.stacked = len(set(widths)) == 1 and members is None
        self.activate_ = [_forward_kernel(a) for a in activations]  # f in place, or None
        # out = grad * f'(a) from h = f(a): each layer's kernel bound once, not looked up per step
        self.derivative_ = [derivative_kernel(a) for a in activations]
        # whether the rule projects a source of its own (not e): asked at backward only then
        self.own_source = type(signals).direct_source is not StackedSignals.direct_source
        # The layers' hook dicts and their sizes now (DFA/IFA's own cut hooks included): a hook
        # added later means someone watches a layer, so it must run as a module. torch has no
        # public way to ask a module for its hooks.
        modules = [m for m in (*linears, *activations) if m is not None]
        self._hook_dicts = [d for m in modules for d in (m._forward_pre_hooks, m._forward_hooks,
                                                         m._backward_hooks, m._backward_pre_hooks)]
        self._hook_sizes = tuple(map(len, self._hook_dicts))
        # The root's own hooks now: DFA/IFA/DRTP's cut hooks, which do nothing when the layers do not
        # run as modules; while they are the only ones, FusedSequential.__call__ skips them (and
        # Module.__call__'s hook machinery, a visible share of a small network's step).
        self._root_hook_dicts = (root._forward_pre_hooks, root._forward_hooks, root._backward_hooks,
                                 root._backward_pre_hooks)
        self._root_hook_sizes = tuple(map(len, self._root_hook_dicts))

    def bare_root(self) -> bool:
        """Whether the root has no hooks but those it had when the plan was made."""
        return tuple(map(len, self._root_hook_dicts)) == self._root_hook_sizes

    def tensors_for(self, input) -> tuple[list, list] | None:
        """The layers' ``(weights, biases)`` when the fused path computes exactly what the general
        path would for ``input``, else None. Reads parameters from ``_parameters``: ``Module``'s
        attribute fallback is a visible cost of a small network's step."""
        if self.members is not None:
            return self._member_tensors(input)
        if not (torch.is_grad_enabled() and isinstance(input, torch.Tensor) and input.dim() >= 1):
            return None
        if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks or torch.is_autocast_enabled()):
            return None
        if tuple(map(len, self._hook_dicts)) != self._hook_sizes:
            return None
        dtype, device = input.dtype, input.device
        if not dtype.is_floating_point:
            return None
        weights = [layer._parameters.get("weight") for layer in self.linears]
        for weight in weights:  # None: a parametrized weight (torch.nn.utils.parametrize); the general path has it
            if weight is None or weight.dtype is not dtype or weight.device != device:
                return None
        return weights, [layer._parameters.get("bias") for layer in self.linears]

    def _member_tensors(self, input) -> tuple[list, list]:
        """A stacked model has no general path (its layers' weights are (M, out, in)): its input must fit."""
        weight = self.linears[0].weight
        if not (isinstance(input, torch.Tensor) and input.dim() == 3 and input.shape[0] == self.members
                and input.dtype == weight.dtype and input.device == weight.device):
            got = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"a model of {self.members} stacked members takes input (members={self.members}, batch, "
                             f"{weight.shape[-1]}) of its dtype and device; got {got}")
        return [layer.weight for layer in self.linears], [layer.bias for layer in self.linears]

    @torch.no_grad()
    def member_forward(self, input: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Stacked members without autograd: ``(y, state)`` for input (M, N, in); ``state`` is what
        :meth:`member_signals` reads. For a step that takes its weight gradients as products of
        its own (population SGD adds ``delta^T h`` straight into its momentum)."""
        weights, biases = self._member_tensors(input)
        inputs = self.signals.inputs(self, input)
        _, outs, output = _forward(self, input, weights, biases)
        return output, (input, outs, output, weights, inputs)

    @torch.no_grad()
    def member_signals(self, state: tuple, error: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(delta_l, h_{l-1})`` for every layer (``delta_L = error = dL/dy``, (M, N, out); ``h_0`` the input):
        the rule's signals, of which ``dW_l = delta_l^T h_{l-1}`` and ``db_l = sum_n delta_l``."""
        input, outs, output, weights, inputs = state
        step = Backward(self, weights, outs, None, output if self.signals.needs_output else None)
        deltas = self.signals.signals(step, error, inputs)
        return list(zip([*deltas, error], [input, *outs]))

    def __call__(self, input: torch.Tensor, weights: list, biases: list) -> torch.Tensor:
        """The stack's output through one fused node; ``weights, biases`` from :meth:`tensors_for`."""
        inputs = self.signals.inputs(self, input)
        if (len(weights) == 2 and input.dim() == 2 and not input.requires_grad and self.activations[0] is not None
                and self.members is None and self.signals.one_hidden(inputs)):
            return _OneHiddenFunction.apply(input, self, weights[0], biases[0], weights[1], biases[1], *inputs)
        return _StackFunction.apply(input, self, len(self.linears), len(inputs), *weights, *biases, *inputs)


def _affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out = h W^T + b``: ``addmm`` for one model, ``baddbmm`` for stacked members ((M, N, in), (M, out, in))."""
    if h.dim() == 2:
        return torch.mm(h, weight.t(), out=out) if bias is None else torch.addmm(bias, h, weight.t(), out=out)
    if bias is None:
        return torch.bmm(h, weight.mT, out=out)
    return torch.baddbmm(bias.unsqueeze(1), h, weight.mT, out=out)


def _forward(plan: Plan, flat: torch.Tensor, weights, biases):
    """The stack's forward on 2-D (or stacked members' 3-D) ``flat``: ``(hidden, outs, output)``, the hidden
    outputs as one (K, N, w) tensor (``plan.stacked``, else None), as a list of h_1 .. h_K, and y."""
    lead, k = flat.shape[:-1], len(weights) - 1
    if plan.stacked:
        hidden = flat.new_empty((k, *lead, weights[0].shape[-2]))
        outs = hidden.unbind(0)
    else:
        outs = [flat.new_empty((*lead, w.shape[-2])) for w in weights[:-1]]
        hidden = None
    h = flat
    one = flat.dim() == 2
    for w, b, out, activate_ in zip(weights, biases, outs, plan.activate_):
        if one and b is not None:
            torch.addmm(b, h, w.t(), out=out)
        else:
            _affine(h, w, b, out)
        if activate_ is not None:
            activate_(out)
        h = out
    output = F.linear(h, weights[-1], biases[-1]) if flat.dim() == 2 else _affine(
        h, weights[-1], biases[-1], h.new_empty((*lead, weights[-1].shape[-2])))
    return hidden, outs, output


class _StackFunction(torch.autograd.Function):
    """The whole stack ``a_l = h_{l-1} W_l^T + b_l``, ``h_l = f(a_l)``, ``y = a_L`` as one node.

    One model: leading dimensions of the input beyond the last are batch dimensions. Stacked members:
    input (M, N, in), every product batched over M. Backward: the rule's ``delta_l``
    (:class:`StackedSignals`), then ``dW_l = delta_l^T h_{l-1}`` and ``db_l = sum_n delta_l`` with
    ``delta_L = e``, and the input gradient ``delta_1 M``.
    """

    @staticmethod
    def forward(ctx, input, plan, n_layers, n_inputs, *tensors):
        weights, biases = tensors[:n_layers], tensors[n_layers:2 * n_layers]
        members = plan.members is not None
        flat = input if input.dim() == 2 or members else input.reshape(-1, input.shape[-1])
        hidden, outs, output = _forward(plan, flat, weights, biases)
        ctx.plan, ctx.n_layers, ctx.input_shape = plan, n_layers, input.shape
        if plan.signals.needs_output:
            ctx.save_for_backward(flat, output, *(outs if hidden is None else (hidden,)), *tensors)
        else:
            ctx.save_for_backward(flat, *(outs if hidden is None else (hidden,)), *tensors)
        return output if input.dim() == 2 or members else output.reshape(*input.shape[:-1], output.shape[-1])

    @staticmethod
    def backward(ctx, error):
        # Kept lean: on small networks every Python op here shows in the step time.
        plan, n_layers = ctx.plan, ctx.n_layers
        k = n_layers - 1
        input, *saved = ctx.saved_tensors
        output = saved.pop(0) if plan.signals.needs_output else None
        if plan.stacked:
            stack = saved[0]
            hs = stack.unbind(0)
            tensors = saved[1:]
        else:
            stack, hs, tensors = None, saved[:k], saved[k:]
        weights, biases, inputs = tensors[:n_layers], tensors[n_layers:2 * n_layers], tensors[2 * n_layers:]
        if plan.members is None and error.dim() != 2:
            error = error.reshape(-1, error.shape[-1])
        if not error.is_contiguous():
            error = error.contiguous()
        step = Backward(plan, weights, hs, stack, output)
        deltas = plan.signals.signals(step, error, inputs)

        needs = ctx.needs_input_grad  # (input, plan, n_layers, n_inputs, *weights, *biases, *inputs)
        grad_weights = [None] * n_layers
        if plan.stacked:
            made = step.slices  # the slices of the tensor empty() gave the rule, if it filled that one
            delta_list = made[1] if made is not None and made[0] is deltas else deltas.unbind(0)
        else:
            delta_list = deltas
        grad_weights[-1] = torch.matmul(error.mT, hs[-1])
        grad_weights[0] = torch.matmul(delta_list[0].mT, input)
        if k > 1:
            # The K - 1 hidden-to-hidden layers in one bmm on a GPU and with more than one CPU thread:
            # there the threads split the layers, where each small mm alone parallelises badly. With
            # one thread it is no faster, and autograd then copies each slice to make it a .grad of
            # its own (it never keeps a view of shared storage).
            if plan.stacked and (input.is_cuda or torch.get_num_threads() > 1):
                grad_weights[1:k] = deltas[1:].transpose(1, 2).bmm(stack[:-1]).unbind(0)
            else:
                for l in range(1, k):
                    grad_weights[l] = torch.matmul(delta_list[l].mT, hs[l - 1])
        grad_biases = [None] * n_layers
        if biases[-1] is not None:
            grad_biases[-1] = error.sum(-2)
        if any(b is not None for b in biases[:k]):  # layers without bias are dropped below
            if not plan.stacked:
                grad_biases[:k] = [d.sum(-2) for d in delta_list]
            elif k > 1:
                grad_biases[:k] = deltas.sum(1).unbind(0)
            else:
                grad_biases[0] = deltas.sum(1)[0]
        grad_input = None
        if needs[0]:
            grad_input = torch.matmul(delta_list[0], plan.signals.input_matrix(step, inputs)).reshape(ctx.input_shape)
        grad_inputs = [g if needs[4 + 2 * n_layers + i] else None
                       for i, g in enumerate(plan.signals.input_grads(plan, grad_weights, inputs))] if inputs else []
        if not all(needs[4:4 + 2 * n_layers]):
            grad_weights = [g if needs[4 + l] else None for l, g in enumerate(grad_weights)]
            grad_biases = [g if needs[4 + n_layers + l] else None for l, g in enumerate(grad_biases)]
        return (grad_input, None, None, None, *grad_weights, *grad_biases, *grad_inputs)


class _OneHiddenFunction(torch.autograd.Function):
    """``h = f(x W_1^T + b_1)``, ``y = h W_2^T + b_2`` as one node, for rules whose hidden signal is
    ``delta_1 = s (z M') * f'(a_1)`` (:meth:`StackedSignals.one_hidden`, ``z`` the rule's
    :meth:`~StackedSignals.direct_source`): FA-type rules (``M = B_2``), DFA, IFA and drtp (``M = B_1``).
    Backward: ``dW_2 = e^T h``, ``db_2 = sum_n e``, ``dW_1 = delta_1^T x``, ``db_1 = sum_n delta_1``, and for the
    rule's inputs the gradients :meth:`StackedSignals.input_grads` gives them (kp's B: its W's); no input
    gradient (taken only for 2-D inputs that need none). The same kernels as :class:`_StackFunction`,
    fewer Python steps, for the one-hidden-layer networks whose step is well under a millisecond.
    """

    @staticmethod
    def forward(ctx, input, plan, w1, b1, w2, b2, *inputs):
        hidden = torch.addmm(b1, input, w1.t()) if b1 is not None else input.mm(w1.t())
        if plan.activate_[0] is not None:  # None: nn.Identity
            plan.activate_[0](hidden)
        output = F.linear(hidden, w2, b2)
        ctx.plan, ctx.inputs = plan, len(inputs)
        ctx.save_for_backward(input, hidden, *((output,) if plan.signals.needs_output else ()), *inputs)
        return output

    @staticmethod
    def backward(ctx, error):
        plan = ctx.plan
        input, hidden, *inputs = ctx.saved_tensors
        output = inputs.pop(0) if plan.signals.needs_output else None
        if not error.is_contiguous():
            error = error.contiguous()
        matrix, scale = plan.signals.one_hidden_matrix(plan, inputs)
        signal = plan.signals.direct_source(output, error, inputs) if plan.own_source else error
        # beta=0: hidden, of delta's shape, is only a placeholder input, never read
        delta = signal.mm(matrix) if scale == 1.0 else torch.addmm(hidden, signal, matrix, beta=0, alpha=scale)
        plan.derivative_[0](delta, hidden, delta)
        needs = ctx.needs_input_grad  # (input, plan, w1, b1, w2, b2, *inputs)
        if not any(needs[6:]):
            return (None, None, delta.t().mm(input) if needs[2] else None, delta.sum(0) if needs[3] else None,
                    error.t().mm(hidden) if needs[4] else None, error.sum(0) if needs[5] else None,
                    *([None] * ctx.inputs))
        # inputs that take a weight's gradient (kp's trained B): the rule says which
        grad_weights = [delta.t().mm(input), error.t().mm(hidden)]
        grad_inputs = [g if need else None for g, need in
                       zip(plan.signals.input_grads(plan, grad_weights, inputs), needs[6:])]
        return (None, None, grad_weights[0] if needs[2] else None, delta.sum(0) if needs[3] else None,
                grad_weights[1] if needs[4] else None, error.sum(0) if needs[5] else None, *grad_inputs)


def _same_kind(a, b) -> bool:
    """Whether activations ``a`` and ``b`` have the same derivative kernel with the same arguments
    (LeakyReLUs of different slopes do not)."""
    return type(a) is type(b) and getattr(a, "negative_slope", None) == getattr(b, "negative_slope", None)


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
    raise TypeError(f"no fused-path kernel for {kind.__name__}")  # plan_for admits only the kinds above


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` that trains through :class:`_StackFunction` when it can.

    Set ``model.fused = False`` to force the general (per-layer autograd) path.
    """

    exact_gradient = False  # set by feedalign.exact_gradients(): the general path, plain backprop
    fused = True

    def __call__(self, *args, **kwargs):
        # Straight to the fused node when the root has only the hooks it was converted with (see
        # Plan.bare_root); anything else goes through Module.__call__ and forward as usual.
        plan = self.__dict__.get("_feedalign_plan")
        if (plan is not None and len(args) == 1 and not kwargs and self.fused and not self.exact_gradient
                and plan.bare_root()):
            tensors = plan.tensors_for(args[0])
            if tensors is not None:
                return plan(args[0], *tensors)
        return super().__call__(*args, **kwargs)

    def forward(self, input):
        plan = self.__dict__.get("_feedalign_plan")
        if plan is not None and (plan.members is not None or self.fused and not self.exact_gradient):
            tensors = plan.tensors_for(input)
            if tensors is not None:
                return plan(input, *tensors)
        return super().forward(input)

    def _get_name(self):
        return "Sequential"


def plan_for(model: nn.Module, linears: list[nn.Module]) -> list | None:
    """The activations between ``linears`` if ``model`` is a plain stack the fused path handles, else None."""
    if not isinstance(model, nn.Sequential) or type(model) not in (nn.Sequential, FusedSequential):
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


def install(model: nn.Module, linears: list[nn.Module], signals: StackedSignals | None,
            members: int | None = None) -> bool:
    """Give ``model`` the fused path with the rule's ``signals`` if it is a plain stack; returns whether it did."""
    activations = plan_for(model, linears)
    if signals is None or activations is None or len(linears) < 2:  # one layer: the general path is it
        return False
    model.__class__ = FusedSequential
    model._feedalign_plan = Plan(model, linears, activations, signals, members)
    return True


def plan_of(model: nn.Module) -> Plan | None:
    """The fused path's :class:`Plan` of ``model``, or None where it has none."""
    return model.__dict__.get("_feedalign_plan")


def uses_fused_path(output: torch.Tensor) -> bool:
    """Whether ``output`` came out of the fused path: its autograd node is the stack's (whose
    context, the node itself for a custom Function, holds the plan)."""
    return isinstance(getattr(output.grad_fn, "plan", None), Plan)


_SETTINGS = (bool, int, float, str, tuple, type(None))  # module attributes compared across members


def stack_members(models: list[nn.Module], signals: StackedSignals) -> nn.Module:
    """One model that holds ``models`` (plain stacks of one architecture, converted with one rule) as
    members: a copy of the first whose every parameter and buffer is the members' stacked, (M, ...),
    trained on the fused path with the rule's ``signals`` (input (M, N, in), output (M, N, out)).

    A number setting of a module that differs across members (usf's scale) becomes an (M, 1, 1) tensor,
    which a rule's math broadcasts over its (M, out, in) weights; any other setting that differs (an
    activation, a layer's size) is refused with a ValueError that names it. :func:`unstack_member`
    writes member i back.
    """
    if not models:
        raise ValueError("stack_members needs at least one model")
    first = models[0]
    named = [dict(m.named_modules()) for m in models]
    per_member: dict[tuple[str, str], torch.Tensor] = {}
    for name, module in named[0].items():
        for i, other in enumerate(named[1:], 1):
            theirs = other.get(name)
            if type(theirs) is not type(module):
                raise ValueError(f"members 0 and {i} differ in module {name or 'root'!r}: "
                                 f"{type(module).__name__} vs {type(theirs).__name__}")
            for key in (*module._parameters, *module._buffers):
                mine, their = getattr(module, key), getattr(theirs, key)
                if (mine is None) != (their is None) or mine is not None and (mine.shape != their.shape
                                                                              or mine.dtype != their.dtype):
                    raise ValueError(f"members 0 and {i} differ in the shape or dtype of {name}.{key}")
        for key, value in module.__dict__.items():
            if key.startswith("_") or key == "training" or not isinstance(value, _SETTINGS):
                continue  # objects (a cut, a described repr) are copied from the first member
            values = [n[name].__dict__.get(key) for n in named]
            if all(v == value for v in values):
                continue
            if all(isinstance(v, float) for v in values):
                per_member[name, key] = torch.tensor(values, dtype=torch.float64).view(-1, 1, 1)
            else:
                raise ValueError(f"members differ in {name or 'root'}.{key} ({value!r} vs "
                                 f"{next(v for v in values if v != value)!r}); they cannot share one stacked model")
    stacked = copy.deepcopy(first)
    stacked.__dict__.pop("_feedalign_plan", None)
    if isinstance(stacked, FusedSequential):
        stacked.__class__ = nn.Sequential
    with torch.no_grad():
        for name, module in stacked.named_modules():
            for key, value in list(module._parameters.items()):
                if value is not None:
                    data = torch.stack([getattr(n[name], key).detach() for n in named])
                    module._parameters[key] = nn.Parameter(data, requires_grad=value.requires_grad)
            for key, value in list(module._buffers.items()):
                if value is not None:
                    module._buffers[key] = torch.stack([getattr(n[name], key) for n in named])
        for (name, key), values in per_member.items():
            module = stacked.get_submodule(name)
            weight = next(module.parameters())
            setattr(module, key, values.to(dtype=weight.dtype, device=weight.device))
    layers = [m for m in stacked.modules() if isinstance(m, nn.Linear)]
    if not install(stacked, layers, signals, members=len(models)):
        raise ValueError("stacked members must be plain nn.Sequential stacks of nn.Linear layers and element-wise "
                         "activations (feedalign.mlp), with at least one hidden layer")
    return stacked


@torch.no_grad()
def unstack_member(stacked: nn.Module, i: int, model: nn.Module) -> None:
    """Member ``i``'s slice of every parameter and buffer of ``stacked`` (:func:`stack_members`) into ``model``."""
    mine = dict(model.named_modules())
    for name, module in stacked.named_modules():
        for key, value in (*module._parameters.items(), *module._buffers.items()):
            if value is not None:
                getattr(mine[name], key).copy_(value[i])
