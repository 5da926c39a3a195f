"""The graph cut that DFA and IFA share.

Both rules replace the error each hidden layer receives from above. So the forward
pass hands every linear layer but the first a *detached* copy of its input
``h_k = f(a_k)`` (autograd then never computes that layer's input gradient), and
the root module's output ``y`` goes through a rule-specific autograd Function that
takes every ``h_k`` as an extra input. When ``loss.backward()`` reaches ``y`` with
``e = dL/dy``, that Function returns ``e`` for ``y`` and the rule's signal for each
``h_k``; the autograd engine then runs all the hidden blocks' backward passes in
the same single backward call, with no graph between them left to traverse.

The cut layers may be ``nn.Conv2d`` too: a cut point is then a feature map
(N, C, H, W) whose size C*H*W is known only once a forward pass has run (pooling,
flattening and normalisation between layers pass through unchanged).
"""
from __future__ import annotations

import abc
import functools

import torch
from torch import nn


class HiddenCut:
    """Installs the hooks on ``root`` and its ``linears`` (forward order).

    ``attach(root, output, hidden, preactivations)`` is the rule's part: it returns
    the output routed through the rule's Function. ``hidden[k]`` is the input of
    ``linears[k + 1]``; ``preactivations[k]`` the output of ``linears[k]`` (recorded
    only when ``record_preactivations``).
    """

    exact_gradient = False  # set by feedalign.exact_gradients(): no cut, plain backprop

    def __init__(self, root: nn.Module, linears: list[nn.Module], attach, record_preactivations: bool = False):
        if len(linears) < 2:
            raise ValueError(
                f"this rule needs at least one hidden layer (two nn.Linear layers); the model has {len(linears)}")
        self.linears = linears
        # per-example size of each cut point; a Conv2d's input size is learnt on the first forward
        self.sizes = [layer.in_features if isinstance(layer, nn.Linear) else None for layer in linears[1:]]
        self.attach = attach
        self.record_preactivations = record_preactivations
        self._hidden: list | None = None
        self._preactivations: list | None = None
        root.register_forward_pre_hook(self._start)
        root.register_forward_hook(self._finish)
        for k, layer in enumerate(linears[1:]):
            layer.register_forward_pre_hook(functools.partial(self._cut, k))
        if record_preactivations:
            for k, layer in enumerate(linears[:-1]):
                layer.register_forward_hook(functools.partial(self._record, k))

    @property
    def ready(self) -> bool:
        """Whether every cut point's size is known (always for Linear layers; after one forward for Conv2d)."""
        return all(size is not None for size in self.sizes)

    @property
    def widths(self) -> list[int]:
        """Width of each hidden layer, i.e. the input size of every layer but the first
        (C*H*W for a Conv2d's input feature map)."""
        if not self.ready:
            raise ValueError("the model has Conv2d layers whose input sizes are known only after one forward "
                             "pass; run the model once (e.g. on one example) first")
        return list(self.sizes)

    def _start(self, root, args):
        if self.exact_gradient:
            self._hidden = self._preactivations = None
            return
        n = len(self.linears) - 1
        self._hidden = [None] * n
        self._preactivations = [None] * n if self.record_preactivations else None

    def _cut(self, k, layer, args):
        conv = not isinstance(layer, nn.Linear)
        if conv and self.sizes[k] is None:
            self.sizes[k] = args[0].shape[1:].numel()  # the first forward, with or without grad, sizes B_k
        if self._hidden is None or not torch.is_grad_enabled():
            return None  # called outside the root's forward, or without grad: plain behaviour
        if self._hidden[k] is not None:
            raise ValueError(f"hidden layer {k + 1} ran twice in one forward pass; DFA/IFA need each layer once")
        (hidden,) = args
        if conv:
            size = hidden.shape[1:].numel()
            if self.sizes[k] != size:
                raise ValueError(f"layer {k + 2} got a feature map of {size} values per example, but the feedback "
                                 f"was sized for {self.sizes[k]} by the first forward pass")
        self._hidden[k] = hidden
        return (hidden.detach(),)

    def _record(self, k, layer, args, output):
        if self._preactivations is not None and torch.is_grad_enabled():
            self._preactivations[k] = output

    def _finish(self, root, args, output):
        hidden, preactivations = self._hidden, self._preactivations
        self._hidden = self._preactivations = None  # hold no tensors past the forward pass
        if not torch.is_grad_enabled() or hidden is None or not isinstance(output, torch.Tensor):
            return None
        if not any(h is not None and h.requires_grad for h in hidden):
            return None  # nothing below the output learns
        missing = [k + 1 for k, h in enumerate(hidden) if h is None]
        if missing:
            raise ValueError(f"hidden layers {missing} did not run in the forward pass; DFA/IFA need every layer")
        for k, h in enumerate(hidden):
            lead = h.shape[:-1] if isinstance(self.linears[k + 1], nn.Linear) else h.shape[:1]
            if lead != output.shape[:-1]:
                raise ValueError(
                    f"hidden layer {k + 1} has shape {tuple(h.shape)} but the output {tuple(output.shape)}: "
                    "the leading (batch) dimensions must match to project the output error onto it")
        return self.attach(root, output, hidden, preactivations)


def find_cut(model: nn.Module) -> HiddenCut:
    """The :class:`HiddenCut` installed on a DFA/IFA model."""
    cut = getattr(model, "_feedalign_cut", None)
    if not isinstance(cut, HiddenCut):
        raise ValueError("model was not converted with a rule that cuts at hidden layers (dfa, ifa)")
    return cut


class TapCut(HiddenCut):
    """The cut of dfa/drtp at user-named block outputs (``taps``), after Launay, Poli, Boniface &
    Krzakala 2020 ("Direct Feedback Alignment Scales to Modern Deep Learning Tasks and
    Architectures", NeurIPS; Sec. 3 and their Transformer code, which puts one DFA
    point after each encoder layer).

    Each tap module's output goes on *detached* (to every later module: the residual
    stream after the block included), and the rule's Function at the root output gives
    the attached output ``h_k`` its signal (``e B_k`` for dfa). Inside a block, between
    the previous tap and ``h_k``, that signal backpropagates through the block's own
    layers, whose rules (plain backprop under dfa) the cut does not change; modules
    after the last tap learn from the output error by backprop, as DFA's output layer.

    Per-example sizes: with the root output of shape (*lead, out), a tap output
    (*lead, *rest) gets one B_k of shape (out, prod(rest)) applied at every leading
    position, so a per-token output (N, T, V) and a block output (N, T, D) share
    ``B_k`` (V, D) over positions, as Launay et al.'s language models do; a classifier
    (N, C) sees a block output (N, T, D) as one vector of T*D per example. The sizes are
    learnt on the first forward pass, with or without grad.

    ``share_positions`` (a model's ``feedalign_share_positions``, set by builders whose
    output reads every position alike, such as the mean over tokens of
    :class:`feedalign.VisionTransformer`): a classifier's tap output (N, *positions, D)
    gets one B_k (out, D) and every position the same ``e B_k``, as the true error
    reaching each token through a mean is the same for all of them. A random B per
    position sends each token a different direction the pooled readout cannot align with
    (vit-tiny on 12000 MNIST images, 2 epochs of Adam at 3e-3: 77.6 % test error with one B
    per token, 39.4 % shared; the head alone on the random transformer: 59.0 %).

    A tap whose output is a tuple (a recurrent layer's ``(output, state)``) records its
    first tensor and detaches every tensor in it.
    """

    def __init__(self, root: nn.Module, taps: list[tuple[str, nn.Module]], linears: list[nn.Module], attach,
                 share_positions: bool = False):
        if not taps:
            raise ValueError("taps must name at least one module")
        self.share_positions = share_positions
        self.linears = linears
        self.taps = taps
        self.sizes = [None] * len(taps)
        self.attach = attach
        self.record_preactivations = False
        self._hidden = self._preactivations = None
        self._shapes = [None] * len(taps)
        root.register_forward_pre_hook(self._start)
        root.register_forward_hook(self._finish_taps)
        for k, (_, module) in enumerate(taps):
            module.register_forward_hook(functools.partial(self._tap, k))

    @property
    def widths(self) -> list[int]:
        if not self.ready:
            raise ValueError("the sizes of the taps are known only after one forward pass; run the model once "
                             "(e.g. on one example) first")
        return list(self.sizes)

    def _tap(self, k, module, args, output):
        first = _first_tensor(output)
        if first is None:
            raise ValueError(f"tap {self.taps[k][0]!r} returned no tensor ({type(output).__name__})")
        if self._shapes is not None:
            self._shapes[k] = first.shape
        if self._hidden is None or not torch.is_grad_enabled():
            return None
        if self._hidden[k] is not None:
            raise ValueError(f"tap {self.taps[k][0]!r} ran twice in one forward pass; each tap must run once")
        self._hidden[k] = first
        return _detached(output)

    def _start(self, root, args):
        self._shapes = [None] * len(self.taps)
        super()._start(root, args)
        if self._hidden is not None:
            self._hidden = [None] * len(self.taps)

    def _finish_taps(self, root, args, output):
        hidden, shapes = self._hidden, self._shapes
        self._hidden = self._preactivations = None
        if not isinstance(output, torch.Tensor):
            if hidden is not None and torch.is_grad_enabled():
                raise ValueError(f"dfa/drtp need the model to return one tensor, got {type(output).__name__}")
            return None
        missing = [self.taps[k][0] for k, s in enumerate(shapes) if s is None]
        if missing:
            raise ValueError(f"taps {missing} did not run in the forward pass; every tap must run once")
        lead = output.shape[:-1]
        for k, shape in enumerate(shapes):
            if tuple(shape[:len(lead)]) != tuple(lead) or len(shape) <= len(lead):
                raise ValueError(
                    f"tap {self.taps[k][0]!r} gives shape {tuple(shape)} but the output is {tuple(output.shape)}: "
                    f"its leading dimensions must be the output's {tuple(lead)} (batch first) to project the error")
            size = shape[-1] if self.share_positions else shape[len(lead):].numel()
            if self.sizes[k] is None:
                self.sizes[k] = size
            elif self.sizes[k] != size:
                raise ValueError(f"tap {self.taps[k][0]!r} gives {size} values per position, but its feedback was "
                                 f"sized for {self.sizes[k]} by the first forward pass")
        if not torch.is_grad_enabled() or hidden is None:
            return None
        if not any(h is not None and h.requires_grad for h in hidden):
            return None
        return self.attach(root, output, hidden, None)


def spread(signal: torch.Tensor, shape: torch.Size, n_lead: int) -> torch.Tensor:
    """A projected signal (prod(lead), width) as the gradient of a hidden output of ``shape`` whose first
    ``n_lead`` dimensions are the network output's leading ones: reshaped when ``width`` covers every value
    per example, else (positions shared, :class:`TapCut`) the same vector at every position."""
    if signal.numel() == shape.numel():
        return signal.reshape(shape)
    return signal.reshape(*shape[:n_lead], *([1] * (len(shape) - n_lead - 1)), shape[-1]).expand(shape)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(item) for item in output)
    return output


def resolve_taps(model: nn.Module, rule, taps) -> list[str] | None:
    """``taps`` (module names, or modules of ``model``) as the names of distinct submodules, in the
    order given, for the :class:`~feedalign.rules.LearningRule` ``rule``; None when there are none.

    ``None`` takes ``model.feedalign_taps`` (a builder's default) for a rule that takes taps.
    A rule that does not take taps refuses them; a ValueError names what is wrong.
    """
    if taps is None:
        default = getattr(model, "feedalign_taps", None)
        return resolve_taps(model, rule, default) if rule.takes_taps and default is not None else None
    if not rule.takes_taps:
        raise ValueError(f"rule {rule.name!r} takes no taps: taps name the block outputs that dfa and drtp "
                         "project the error to")
    if isinstance(taps, (str, nn.Module)) or not isinstance(taps, (list, tuple)):
        raise TypeError(f"taps must be a list of module names or modules, got {type(taps).__name__}")
    names_of = {id(m): name for name, m in model.named_modules()}
    names = []
    for tap in taps:
        if isinstance(tap, str):
            try:
                model.get_submodule(tap)
            except AttributeError:
                raise ValueError(f"tap {tap!r} is not a submodule of the model; names are those of "
                                 "model.named_modules(), e.g. 'blocks.0'") from None
            name = tap
        elif isinstance(tap, nn.Module):
            if id(tap) not in names_of:
                raise ValueError(f"tap {type(tap).__name__} is not a submodule of the model")
            name = names_of[id(tap)]
        else:
            raise TypeError(f"each tap must be a module name or a module, got {type(tap).__name__}")
        if name == "":
            raise ValueError("the model itself cannot be a tap: its output is where the error is measured")
        if name in names:
            raise ValueError(f"tap {name!r} is given twice")
        names.append(name)
    return names


class LayerInputs(abc.ABC):
    """Records each layer's input (detached) during a training forward pass of ``root``, for rules whose backward
    runs the stack again from those inputs (pc, pepita). A subclass sets ``rule`` (its name, for the messages)
    and implements :meth:`attach`; nothing is recorded without grad or under ``feedalign.exact_gradients``."""

    exact_gradient = False  # set by feedalign.exact_gradients(): plain backprop
    rule = ""

    def __init__(self, root: nn.Module, linears: list[nn.Module]):
        self.linears = linears
        self._inputs: list | None = None
        root.register_forward_pre_hook(self._start)
        root.register_forward_hook(self._finish)
        for k, layer in enumerate(linears):
            layer.register_forward_pre_hook(functools.partial(self._record, k))

    @abc.abstractmethod
    def attach(self, root: nn.Module, output: torch.Tensor, inputs: list[torch.Tensor],
               params: list[torch.Tensor]) -> torch.Tensor:
        """The output routed through the rule's Function, given every layer's input (forward order) and the
        layers' parameters (weight, then bias where there is one, layer by layer)."""

    def _start(self, root, args):
        recording = not self.exact_gradient and torch.is_grad_enabled()
        self._inputs = [None] * len(self.linears) if recording else None

    def _record(self, k, layer, args):
        if self._inputs is None or not torch.is_grad_enabled():
            return
        if self._inputs[k] is not None:
            raise ValueError(f"layer {k + 1} ran twice in one forward pass; {self.rule} needs each layer once")
        self._inputs[k] = args[0].detach()

    def _finish(self, root, args, output):
        inputs, self._inputs = self._inputs, None  # hold no tensors past the forward pass
        if inputs is None or not torch.is_grad_enabled():
            return None
        params = [p for layer in self.linears for p in (layer.weight, layer.bias) if p is not None]
        if not any(p.requires_grad for p in params):
            return None  # nothing learns
        missing = [k + 1 for k, x in enumerate(inputs) if x is None]
        if missing:
            raise ValueError(f"layers {missing} did not run in the forward pass; {self.rule} needs every layer once")
        return self.attach(root, output, inputs, params)
