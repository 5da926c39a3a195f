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
