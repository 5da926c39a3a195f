"""The fused path for the common case: an ``nn.Sequential`` of ``nn.Linear`` layers and known
element-wise activations (``feedalign.mlp`` builds exactly these).

The general path of every rule is plain autograd: one graph node per layer and
activation, a custom Function per FA-type layer, hooks at every DFA/IFA cut. On small
layers that bookkeeping, not arithmetic, is what a step costs. Here the whole stack
is ONE autograd Function whose backward computes every signal and weight gradient
itself, and batches the work that does not depend on other layers:

- all hidden outputs live in one (K, N, w) tensor when the hidden widths are equal,
  and so do the hidden signals; a rule can then fill them in one batched op (DFA: one
  ``bmm`` for every ``e @ B_k``), and ``f'`` of every hidden layer is one element-wise op;
- the gradients of the hidden-to-hidden weights, ``dW_k = delta_k^T h_{k-1}``, are
  one ``bmm`` over the K - 1 layers on CUDA (one launch instead of K - 1); on the
  CPU, K - 1 ``mm`` calls measured faster (see ``_StackFunction.backward``).

This module is only the runner: the forward pass, the weight and bias gradients, the
batching. What a rule sends to each hidden layer is its :class:`StackedSignals`, which
lives in the rule's own module beside its general path (as ``torch.optim`` keeps the
single-tensor, foreach and fused variants of one algorithm in one file) and is tested
against the same float64 references.

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

import abc
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from . import native

_aten = torch.ops.aten
_PYTHON, _CHAIN, _DIRECT = 0, 1, 2  # nodes.cpp's SignalsMode: where the compiled stack node gets the deltas
# torch >= 2.3; before, dynamo breaks its graph at the compiled node instead (still correct, a warning)
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)

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


class StackedSignals(abc.ABC):
    """A rule's backward on the fused path: the pre-activation signal of every hidden layer at once.

    Row vectors; ``e = dL/dy`` (N, out), ``h_l`` the output of hidden layer l, ``D_l = f'(a_l)``.
    The runner then computes ``dW_l = delta_l^T h_{l-1}``, ``db_l = sum_n delta_l``
    (``delta_L = e``) and the input gradient ``delta_1 M`` with ``M`` from :meth:`input_matrix`.
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
        """Whether, on a stack with ONE hidden layer, the rule's signal is ``delta_1 = (s M) * f'(a_1)`` with
        ``M`` from :meth:`one_hidden_matrix`, ``s`` from :meth:`direct_source` (``e`` unless the rule gives a
        source of its own) and nothing else to do at backward (no gradient for ``inputs``); the stack then
        runs as the lean :class:`_OneHiddenFunction`. Default: False."""
        return False

    def direct(self, plan: "Plan", inputs: list[torch.Tensor]) -> torch.Tensor | None:
        """For a rule whose hidden signals are ``delta_k = (s B_k) * f'(a_k)``, one signal ``s`` sent to every
        hidden layer through its own matrix (:meth:`direct_source`: DFA's ``e``, drtp's target), the B_k in
        the stack's layout: (K, out, w) when the hidden widths are equal, else (out, w_1 + ... + w_K); the
        compiled stack node then computes the deltas itself. None (the default) for any other rule. It
        must give what :meth:`signals` gives, bit for bit."""
        return None

    def direct_source(self, output: torch.Tensor | None, error: torch.Tensor,
                      inputs: list[torch.Tensor]) -> torch.Tensor:
        """The (N, out) signal ``s`` a :meth:`direct` rule projects, from the stack's output ``y`` (where
        :attr:`needs_output`, else None), ``e`` and :meth:`inputs`. Default ``e`` (DFA), which the compiled
        stack node then takes without asking; a rule that overrides it is asked once a step."""
        return error

    #: Where :meth:`one_hidden_matrix` is always ``(inputs[i], 1.0)`` (DFA's and IFA's B), that ``i``: the
    #: compiled node then reads M from its saved inputs without a call into Python. None: asked each step.
    one_hidden_input: int | None = None

    def one_hidden_matrix(self, plan: "Plan", inputs: list[torch.Tensor]) -> tuple[torch.Tensor, float] | None:
        """``(M', s)`` with ``M = s M'`` (out, width) of :meth:`one_hidden`, asked for at backward time; ``s``
        goes into the GEMM's alpha, as :meth:`~feedalign.rules.layers.FeedbackLayer.scaled_backward_weight`
        (None where :meth:`one_hidden` is False: never asked). Default: from :attr:`one_hidden_input`, else
        the one link of :meth:`chain`."""
        if self.one_hidden_input is not None:
            return inputs[self.one_hidden_input], 1.0
        chain = self.chain(plan, inputs)
        return None if chain is None else chain[0]

    def input_matrix(self, step: "Backward", inputs: list[torch.Tensor]) -> torch.Tensor:
        """The (width_1, in) matrix that carries ``delta_1`` to the stack's input; asked for only when
        the input needs a gradient. Default ``W_1``: rules that change only the hidden signals."""
        return step.weights[0]

    def chain(self, plan: "Plan", inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, float]] | None:
        """For a rule whose hidden signals are the chain ``delta_l = s_l (delta_{l+1} M_l) * f'(a_l)``
        from ``delta_{K+1} = e`` (FA-type rules), its ``(M_l, s_l)`` for l = K down to 1, which the
        compiled stack node then runs itself; None (the default) for any other rule. It must give
        what :meth:`signals` gives, bit for bit."""
        return None

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

    def empty(self):
        """``(deltas, outs)``: a fresh (K, N, w) tensor and its K slices if stacked, else a list of (N, w_l) twice."""
        if self.stack is not None:
            deltas = torch.empty_like(self.stack)
            return deltas, deltas.unbind(0)
        outs = [torch.empty_like(h) for h in self.hidden]
        return outs, outs

    def times_derivative(self, l: int, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = grad * f'(a_l)`` (``grad`` may be ``out``), with the kernel autograd would use."""
        return times_derivative(self.activations[l], grad, self.hidden[l], out)

    def times_derivatives(self, deltas) -> None:
        """``delta_l *= f'(a_l)`` in place for every hidden layer; one op when stacked with one activation kind."""
        first = self.activations[0]
        if self.stack is not None and first is not None and all(_same_kind(a, first) for a in self.activations):
            _BACKWARDS[type(first)](deltas, self.stack, first, deltas)  # 3x faster than K strided slices
            return
        for l, delta in enumerate(deltas.unbind(0) if self.stack is not None else deltas):
            self.times_derivative(l, delta, delta)


class Plan:
    """What the fused path needs to know about a converted Sequential.

    ``linears`` in forward order, ``activations[k]`` the module after ``linears[k]``
    (``None`` for none), ``signals`` the rule's :class:`StackedSignals`. Holds modules,
    never tensors, so ``.to()`` and ``.double()`` are seen.
    """

    def __init__(self, root: nn.Sequential, linears: list[nn.Linear], activations: list, signals: StackedSignals):
        self.root, self.linears, self.activations, self.signals = root, linears, activations, signals
        widths = [layer.out_features for layer in linears[:-1]]
        self.stacked = len(set(widths)) == 1  # hidden outputs in one (K, N, w) tensor
        self.activate_ = [_forward_kernel(a) for a in activations]  # f in place, or None
        # the hidden activations as the compiled nodes' codes, (codes, negative slopes)
        codes = [_activation_code(a) for a in activations[:-1]]
        self.activation_codes = ([c for c, _ in codes], [s for _, s in codes])
        # how the compiled stack node gets the deltas: the rule's chain or direct projection (of e, or of the
        # rule's own source), which it runs itself, or else from Python
        kind = type(signals)
        self.signals_mode = (_CHAIN if kind.chain is not StackedSignals.chain else
                             _DIRECT if kind.direct is not StackedSignals.direct else _PYTHON)
        self.own_source = kind.direct_source is not StackedSignals.direct_source  # not e: asked at backward
        # The layers' hook dicts and their sizes now (DFA/IFA's own cut hooks included): a hook
        # added later means someone watches a layer, so it must run as a module. torch has no
        # public way to ask a module for its hooks.
        modules = [m for m in (*linears, *activations) if m is not None]
        self._hook_dicts = [d for m in modules for d in (m._forward_pre_hooks, m._forward_hooks,
                                                         m._backward_hooks, m._backward_pre_hooks)]
        self._hook_sizes = tuple(map(len, self._hook_dicts))
        # The root's own hooks now: DFA/IFA/DRTP's cut hooks, which do nothing when the layers do not
        # run as modules; while they are the only ones, FastSequential.__call__ skips them (and
        # Module.__call__'s hook machinery, 80 us of a 0.6 ms step on 784-100-10:64).
        self._root_hook_dicts = (root._forward_pre_hooks, root._forward_hooks, root._backward_hooks,
                                 root._backward_pre_hooks)
        self._root_hook_sizes = tuple(map(len, self._root_hook_dicts))

    def bare_root(self) -> bool:
        """Whether the root has no hooks but those it had when the plan was made."""
        return tuple(map(len, self._root_hook_dicts)) == self._root_hook_sizes

    def tensors_for(self, input) -> tuple[list, list] | None:
        """The layers' ``(weights, biases)`` when the fused path computes exactly what the general
        path would for ``input``, else None. Reads parameters from ``_parameters``: ``Module``'s
        attribute fallback costs about 0.6 us a read, a visible share of a small network's step."""
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

    def __call__(self, input: torch.Tensor, weights: list, biases: list) -> torch.Tensor:
        """The stack's output through one fused node; ``weights, biases`` from :meth:`tensors_for`."""
        inputs = self.signals.inputs(self, input)
        lean = input.dim() == 2 and not input.requires_grad  # the lean nodes compute no input gradient
        # under torch.compile, the Python nodes: dynamo traces autograd Functions, not pybind calls
        compiled = native.compiled() if lean and self.root.native_node and not _is_compiling() else None
        if lean and len(weights) == 2 and self.activations[0] is not None and self.signals.one_hidden(inputs):
            if compiled is not None:
                codes, slopes = self.activation_codes
                matrix_input = self.signals.one_hidden_input
                return compiled.apply(input, weights[0], biases[0], weights[1], biases[1], inputs, self,
                                      codes[0], slopes[0], -1 if matrix_input is None else matrix_input,
                                      self.own_source, self.signals.needs_output)
            return _OneHiddenFunction.apply(input, self, weights[0], biases[0], weights[1], biases[1], *inputs)
        if compiled is not None:
            return compiled.stack(input, weights, [b for b in biases if b is not None], [b is not None for b in biases],
                                  inputs, self, *self.activation_codes, self.stacked, self.signals.needs_output,
                                  self.signals_mode, self.own_source)
        return _StackFunction.apply(input, self, len(self.linears), len(inputs), *weights, *biases, *inputs)

    def backward_signals(self, weights, hidden, stack, output, error, inputs):
        """The rule's hidden signals for the compiled stack node (``nodes.cpp``), as :class:`_StackFunction`
        asks for them: ``signals.signals(Backward(...), error, inputs)``."""
        return self.signals.signals(Backward(self, weights, hidden, stack, output), error, inputs)


class _StackFunction(torch.autograd.Function):
    """The whole stack ``a_l = h_{l-1} W_l^T + b_l``, ``h_l = f(a_l)``, ``y = a_L`` as one node.

    Leading dimensions of the input beyond the last are batch dimensions. Backward: the
    rule's ``delta_l`` (:class:`StackedSignals`), then ``dW_l = delta_l^T h_{l-1}`` and
    ``db_l = sum_n delta_l`` with ``delta_L = e``, and the input gradient ``delta_1 M``.

    Its compiled twin, ``StackNode`` in ``nodes.cpp`` (:mod:`feedalign.rules.native`), runs where it
    can be had, for 2-D inputs that need no gradient. It runs an FA-type rule's chain
    (:meth:`StackedSignals.chain`) and a direct rule's projections (:meth:`StackedSignals.direct`: DFA's
    of the error, drtp's of the target) itself, asks :meth:`Plan.backward_signals` for any other rule's
    deltas, and :meth:`StackedSignals.input_grads` for the gradients of inputs that need one (kp's B).
    """

    @staticmethod
    def forward(ctx, input, plan, n_layers, n_inputs, *tensors):
        weights, biases = tensors[:n_layers], tensors[n_layers:2 * n_layers]
        flat = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])
        n, k = flat.shape[0], n_layers - 1
        if plan.stacked:
            hidden = flat.new_empty((k, n, weights[0].shape[0]))
            outs = hidden.unbind(0) if k > 1 else (hidden[0],)
        else:
            outs = [flat.new_empty((n, w.shape[0])) for w in weights[:-1]]
            hidden = None
        h = flat
        for w, b, out, activate_ in zip(weights, biases, outs, plan.activate_):
            if b is None:
                torch.mm(h, w.t(), out=out)
            else:
                torch.addmm(b, h, w.t(), out=out)
            if activate_ is not None:
                activate_(out)
            h = out
        output = F.linear(h, weights[-1], biases[-1])
        ctx.plan, ctx.n_layers, ctx.input_shape = plan, n_layers, input.shape
        if plan.signals.needs_output:
            ctx.save_for_backward(flat, output, *(outs if hidden is None else (hidden,)), *tensors)
        else:
            ctx.save_for_backward(flat, *(outs if hidden is None else (hidden,)), *tensors)
        return output if input.dim() == 2 else output.reshape(*input.shape[:-1], output.shape[-1])

    @staticmethod
    def backward(ctx, error):
        # Kept lean: on small networks (784-100-10:64, 0.6 ms a step) every Python op here shows.
        plan, n_layers = ctx.plan, ctx.n_layers
        k = n_layers - 1
        input, *saved = ctx.saved_tensors
        output = saved.pop(0) if plan.signals.needs_output else None
        if plan.stacked:
            stack = saved[0]
            hs = stack.unbind(0) if k > 1 else (stack[0],)
            tensors = saved[1:]
        else:
            stack, hs, tensors = None, saved[:k], saved[k:]
        weights, biases, inputs = tensors[:n_layers], tensors[n_layers:2 * n_layers], tensors[2 * n_layers:]
        if error.dim() != 2 or not error.is_contiguous():
            error = error.reshape(-1, error.shape[-1]).contiguous()
        step = Backward(plan, weights, hs, stack, output)
        deltas = plan.signals.signals(step, error, inputs)

        needs = ctx.needs_input_grad  # (input, plan, n_layers, n_inputs, *weights, *biases, *inputs)
        grad_weights = [None] * n_layers
        if plan.stacked:
            delta_list = deltas.unbind(0) if k > 1 else (deltas[0],)
        else:
            delta_list = deltas
        grad_weights[-1] = error.t().mm(hs[-1])
        grad_weights[0] = delta_list[0].t().mm(input)
        if k > 1:
            # The K - 1 hidden-to-hidden layers in one bmm, on a GPU and with more than one CPU
            # thread: there the threads split the layers, where each small mm alone parallelises
            # badly (2 threads, 784-240x100-10:64, medians of 9 interleaved blocks: DFA 0.75 ->
            # 0.69x BP, and 784-240x7-10: FA 1.00 -> 0.95x). With one thread it is no faster
            # (98 layers of 240: 9.3 ms against 8.9), and autograd then copies each slice to make
            # it a .grad of its own (1.5 ms): it never keeps a view of shared storage.
            if plan.stacked and (input.is_cuda or torch.get_num_threads() > 1):
                grad_weights[1:k] = deltas[1:].transpose(1, 2).bmm(stack[:-1]).unbind(0)
            else:
                for l in range(1, k):
                    grad_weights[l] = delta_list[l].t().mm(hs[l - 1])
        grad_biases = [None] * n_layers
        if biases[-1] is not None:
            grad_biases[-1] = error.sum(0)
        if any(b is not None for b in biases[:k]):  # layers without bias are dropped below
            if not plan.stacked:
                grad_biases[:k] = [d.sum(0) for d in delta_list]
            elif k > 1:
                grad_biases[:k] = deltas.sum(1).unbind(0)
            else:
                grad_biases[0] = deltas.sum(1)[0]
        grad_input = None
        if needs[0]:
            grad_input = delta_list[0].mm(plan.signals.input_matrix(step, inputs)).reshape(ctx.input_shape)
        grad_inputs = [g if needs[4 + 2 * n_layers + i] else None
                       for i, g in enumerate(plan.signals.input_grads(plan, grad_weights, inputs))] if inputs else []
        if not all(needs[4:4 + 2 * n_layers]):
            grad_weights = [g if needs[4 + l] else None for l, g in enumerate(grad_weights)]
            grad_biases = [g if needs[4 + n_layers + l] else None for l, g in enumerate(grad_biases)]
        return (grad_input, None, None, None, *grad_weights, *grad_biases, *grad_inputs)


class _OneHiddenFunction(torch.autograd.Function):
    """``h = f(x W_1^T + b_1)``, ``y = h W_2^T + b_2`` as one lean node, for rules whose hidden signal is
    ``delta_1 = (s M) * f'(a_1)`` (:meth:`StackedSignals.one_hidden`; ``s = e`` but for drtp, whose ``s`` is
    the target's :meth:`~StackedSignals.direct_source`): FA-type rules (``M = B_2``), DFA, IFA and drtp
    (``M = B_1``). Backward: ``dW_2 = e^T h``, ``db_2 = sum_n e``, ``dW_1 = delta_1^T x``,
    ``db_1 = sum_n delta_1``; no input gradient (taken only for inputs that need none).

    The same kernels as :class:`_StackFunction`, fewer Python steps: on 784-100-10:64 a step is about
    0.6 ms, and the general runner's bookkeeping was a sixth of it (docs/speed.md). Its compiled twin,
    in ``nodes.cpp`` (:mod:`feedalign.rules.native`), runs where it can be had; this one is the fallback.
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
        _BACKWARDS[type(plan.activations[0])](delta, hidden, plan.activations[0], delta)
        needs = ctx.needs_input_grad  # (input, plan, w1, b1, w2, b2, *inputs)
        return (None, None, delta.t().mm(input) if needs[2] else None, delta.sum(0) if needs[3] else None,
                error.t().mm(hidden) if needs[4] else None, error.sum(0) if needs[5] else None,
                *([None] * ctx.inputs))


def _same_kind(a, b) -> bool:
    """Whether activations ``a`` and ``b`` have the same derivative kernel with the same arguments
    (LeakyReLUs of different slopes do not)."""
    return type(a) is type(b) and getattr(a, "negative_slope", None) == getattr(b, "negative_slope", None)


def times_derivative(activation, grad: torch.Tensor, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = grad * f'(a)`` given the activation's output ``h = f(a)`` (``grad`` may be ``out``);
    ``activation`` None is the identity. The kernel autograd itself runs for the module."""
    if activation is None:
        return out if grad is out else out.copy_(grad)
    return _BACKWARDS[type(activation)](grad, h, activation, out)


def activate_(activation, a: torch.Tensor) -> torch.Tensor:
    """``f(a)`` in place (``activation`` None: ``a`` as it is); the kinds :func:`plan_for` admits."""
    kernel = _forward_kernel(activation)
    return a if kernel is None else kernel(a)


def _activation_code(activation) -> tuple[int, float]:
    """``(code, negative_slope)`` of the compiled nodes' ``Activation`` enum (nodes.cpp)."""
    codes = {nn.Tanh: 0, nn.Sigmoid: 1, nn.ReLU: 2, nn.LeakyReLU: 3, nn.Identity: 4, type(None): 4}
    return codes[type(activation)], float(getattr(activation, "negative_slope", 0.0))


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


class FastSequential(nn.Sequential):
    """``nn.Sequential`` that trains through :class:`_StackFunction` when it can.

    Set ``model.fast_path = False`` to force the general (per-layer autograd) path, and
    ``model.native_node = False`` to run the stack through the Python nodes (:class:`_OneHiddenFunction`,
    :class:`_StackFunction`) instead of their compiled twins.
    """

    exact_gradient = False  # set by feedalign.exact_gradients(): the general path, plain backprop
    fast_path = True
    native_node = True  # the compiled nodes where they can be had (feedalign.rules.native)

    def __call__(self, *args, **kwargs):
        # Straight to the fused node when the root has only the hooks it was converted with (see
        # Plan.bare_root); anything else goes through Module.__call__ and forward as usual.
        plan = self.__dict__.get("_feedalign_plan")
        if (plan is not None and len(args) == 1 and not kwargs and self.fast_path and not self.exact_gradient
                and plan.bare_root()):
            tensors = plan.tensors_for(args[0])
            if tensors is not None:
                return plan(args[0], *tensors)
        return super().__call__(*args, **kwargs)

    def forward(self, input):
        plan = self.__dict__.get("_feedalign_plan")
        if plan is not None and self.fast_path and not self.exact_gradient:
            tensors = plan.tensors_for(input)
            if tensors is not None:
                return plan(input, *tensors)
        return super().forward(input)

    def _get_name(self):
        return "Sequential"


def plan_for(model: nn.Module, linears: list[nn.Module]) -> list | None:
    """The activations between ``linears`` if ``model`` is a plain stack the fused path handles, else None."""
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


def install(model: nn.Module, linears: list[nn.Module], signals: StackedSignals) -> bool:
    """Give ``model`` the fused path with the rule's ``signals`` if it is a plain stack; returns whether it did."""
    activations = plan_for(model, linears)
    if activations is None or len(linears) < 2:  # one layer: no hidden signal to fuse, the general path is it
        return False
    model.__class__ = FastSequential
    model._feedalign_plan = Plan(model, linears, activations, signals)
    return True


def uses_fast_path(output: torch.Tensor) -> bool:
    """Whether ``output`` came out of the fused path: its autograd node is the stack's (whose
    context, the node itself for a custom Function, holds the plan), or the compiled one."""
    return isinstance(getattr(output.grad_fn, "plan", None), Plan) or uses_compiled_node(output)


def uses_compiled_node(output: torch.Tensor) -> bool:
    """Whether ``output`` came out of a compiled node (:mod:`feedalign.rules.native`)."""
    module = native.loaded()
    return (module is not None and output.grad_fn is not None
            and output.grad_fn.name() in (module.NODE_NAME, module.STACK_NODE_NAME))
