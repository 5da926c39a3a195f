"""Attention and recurrent modules whose every weight product goes through an ``nn.Linear`` submodule.

``nn.MultiheadAttention``, ``nn.LSTM`` and ``nn.GRU`` multiply by their weights
functionally (``F.multi_head_attention_forward``, the fused RNN kernels), so a rule
that swaps ``nn.Linear`` layers never sees those weights, and their error signals
keep going back through the transposed weights. The drop-in modules here compute
the same functions with every weight matrix held by an ``nn.Linear`` child that is
*called*, so :func:`feedalign.convert` turns each into the rule's layer (FA,
usf/brsf/frsf, KP, WM reach every weight matrix):

- :class:`MultiheadAttention`: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
  (Vaswani et al. 2017, Eq. for MultiHead). With row vectors per position,
  ``Q = X_q W_q^T + b_q`` etc., per head ``A = softmax(Q K^T / sqrt(d) + M)``,
  ``O = A V`` and ``Y = concat(O) W_o^T + b_o``. The products ``Q K^T`` and ``A V``
  are between activations, not weights: every rule backpropagates through them
  exactly (there is no weight to transport); only the four projections change.
- :class:`LSTM`, :class:`GRU`: per layer an ``input_map`` (in -> G*H) and a
  ``recurrent_map`` (H -> G*H), unrolled in time; the gate equations are torch's
  (``nn.LSTM``: gates i, f, g, o; ``nn.GRU``: r, z, n with
  ``n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))``).

Constructors and ``forward`` follow the torch modules for the common options, and
``from_torch`` copies a torch module's weights. :func:`swap_sequence_modules`, run by
``convert`` before the rule's layer conversion, replaces every torch module in a
model by these (the parameters are new tensors: build the optimizer after
``convert``, as always).

Direct rules (dfa, drtp) cut these models at user-named points (``taps``; see
:mod:`feedalign.rules._cut`); a tapped :class:`RecurrentLayer` also cuts its
recurrence, so that every time step's hidden state receives the projected error
(:attr:`RecurrentLayer.cut_recurrence`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Gates per cell: the rows of the input and recurrent maps, in torch's order.
GATES = {"lstm": 4, "gru": 3}


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its projections as ``nn.Linear`` submodules.

    Args (as ``nn.MultiheadAttention``): ``embed_dim`` E, ``num_heads`` H (E divisible
    by H), ``dropout`` on the attention weights, ``bias`` (of the four projections),
    ``kdim``/``vdim`` (key/value feature sizes; default E), ``batch_first``.
    ``add_bias_kv`` and ``add_zero_attn`` are not supported.

    Shapes: query (N, L, E) (or (L, N, E) when not ``batch_first``, or unbatched
    (L, E)), key (N, S, kdim), value (N, S, vdim); output of query's layout, and the
    attention weights (N, L, S) averaged over heads, (N, H, L, S) with
    ``average_attn_weights=False``, or None with ``need_weights=False``.

    Masks as torch: ``attn_mask`` (L, S) or (N*H, L, S), boolean (True: may not
    attend) or float (added to the scores); ``key_padding_mask`` (N, S), boolean
    (True: ignore that key) or float; ``is_causal`` without ``attn_mask`` masks the
    future.
    """

    # Read by nn.TransformerEncoderLayer / nn.TransformerEncoder: False keeps their fused
    # inference kernels (which take in_proj_weight directly) off, so every call runs forward here.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if add_bias_kv or add_zero_attn:
            raise ValueError("feedalign's MultiheadAttention does not support add_bias_kv or add_zero_attn; "
                             "train without them or keep nn.MultiheadAttention under 'bp'")
        kw = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``nn.MultiheadAttention``: Xavier-uniform projections (q, k, v drawn as one (3E, E)
        matrix when kdim = vdim = E), zero biases; the out projection keeps nn.Linear's default weight."""
        if self.kdim == self.vdim == self.embed_dim:
            joint = torch.empty(3 * self.embed_dim, self.embed_dim)
            nn.init.xavier_uniform_(joint)
            with torch.no_grad():
                for layer, part in zip((self.q_proj, self.k_proj, self.v_proj), joint.chunk(3)):
                    layer.weight.copy_(part)
        else:
            for layer in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.xavier_uniform_(layer.weight)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        """The (3E, E) stack of the q, k, v weights, as torch's attribute (None when kdim or vdim differ)."""
        if not (self.kdim == self.vdim == self.embed_dim):
            return None
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """The (3E,) stack of the q, k, v biases, or None without bias."""
        if self.q_proj.bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiheadAttention":
        """A copy of ``module`` (its weights, settings, device, dtype and train/eval mode)."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"from_torch expects nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be converted: "
                             "feedalign's MultiheadAttention does not support them; build it without them")
        weight = module.out_proj.weight
        new = cls(module.embed_dim, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
                  kdim=module.kdim, vdim=module.vdim, batch_first=module.batch_first,
                  device=weight.device, dtype=weight.dtype)
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
        with torch.no_grad():
            for layer, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if module.out_proj.bias is not None:
                new.out_proj.bias.copy_(module.out_proj.bias)
        new.train(module.training)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be 3-D (batched) or 2-D (unbatched), got "
                             f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D")
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        source = key.shape[1]
        heads, d = self.num_heads, self.head_dim
        # (N, L, E) -> (N, H, L, d)
        q = self.q_proj(query).view(n, length, heads, d).transpose(1, 2)
        k = self.k_proj(key).view(n, source, heads, d).transpose(1, 2)
        v = self.v_proj(value).view(n, source, heads, d).transpose(1, 2)
        scores = q.matmul(k.transpose(-2, -1)) / math.sqrt(d)
        scores = scores + self._additive_mask(attn_mask, key_padding_mask, is_causal, n, length, source, scores)
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)  # returned so, as torch
        attended = weights.matmul(v)
        output = self.out_proj(attended.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not batched:
            output = output.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return output, weights if batched else weights.squeeze(0)

    def _additive_mask(self, attn_mask, key_padding_mask, is_causal, n, length, source, like):
        """``attn_mask``, ``key_padding_mask`` and ``is_causal`` as one float mask broadcastable to (N, H, L, S)."""
        total = torch.zeros((), dtype=like.dtype, device=like.device)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask is not None:
            mask = _as_additive(attn_mask, like)
            if mask.dim() == 3:
                if mask.shape[0] != n * self.num_heads:
                    raise ValueError(f"a 3-D attn_mask must have shape ({n * self.num_heads}, {length}, {source}), "
                                     f"got {tuple(mask.shape)}")
                mask = mask.view(n, self.num_heads, length, source)
            elif mask.shape != (length, source):
                raise ValueError(f"a 2-D attn_mask must have shape ({length}, {source}), got {tuple(mask.shape)}")
            total = total + mask
        if key_padding_mask is not None:
            if key_padding_mask.shape != (n, source):
                raise ValueError(f"key_padding_mask must have shape ({n}, {source}), got "
                                 f"{tuple(key_padding_mask.shape)}")
            total = total + _as_additive(key_padding_mask, like).view(n, 1, 1, source)
        return total

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")


def _as_additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: masked out) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"attention masks must be bool or floating point, got {mask.dtype}")
    return mask.to(like.dtype)


class RecurrentLayer(nn.Module):
    """One layer of an LSTM or GRU, batch first: ``input_map`` (in -> G*H) and ``recurrent_map``
    (H -> G*H), G = 4 (LSTM) or 3 (GRU), each with its own bias as torch's ``bias_ih``/``bias_hh``.

    ``forward(x, state)``: x (N, T, in); state ``h0`` (N, H) (GRU) or ``(h0, c0)`` (LSTM), None
    for zeros. Returns the hidden states (N, T, H) and the final state.

    ``cut_recurrence`` (set by dfa/drtp when the layer is a tap): the recurrent map receives
    a detached ``h_{t-1}``, so no error goes back in time through ``W_hh^T``; every ``h_t``
    gets the projected output error instead, and the gradient of ``W_hh`` is
    ``sum_t delta_t^T h_{t-1}``. The element-wise paths through time (the LSTM cell
    state, the GRU's ``z * h_{t-1}``) carry no weight and keep their exact gradient, as
    the eligibility traces of e-prop (Bellec et al. 2020) do. Under
    :func:`feedalign.exact_gradients` it is backprop through time again.
    """

    exact_gradient = False  # flipped by feedalign.exact_gradients(): no cut
    cut_recurrence = False

    def __init__(self, cell: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {sorted(GATES)}, got {cell!r}")
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        gates = GATES[cell] * hidden_size
        self.input_map = nn.Linear(input_size, gates, bias=bias, device=device, dtype=dtype)
        self.recurrent_map = nn.Linear(hidden_size, gates, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As torch's RNNs: every weight and bias U[-1/sqrt(H), 1/sqrt(H)]."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, state=None):
        n, steps, _ = x.shape
        zeros = x.new_zeros(n, self.hidden_size)
        if self.cell == "lstm":
            h, c = (zeros, zeros) if state is None else state
        else:
            h, c = (zeros if state is None else state), None
        driven = self.input_map(x)  # every time step's input product at once: (N, T, G*H)
        cut = self.cut_recurrence and not self.exact_gradient and torch.is_grad_enabled()
        outputs = []
        for t in range(steps):
            recurrent = self.recurrent_map(h.detach() if cut else h)
            if self.cell == "lstm":
                i, f, g, o = (driven[:, t] + recurrent).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                x_r, x_z, x_n = driven[:, t].chunk(3, dim=1)
                h_r, h_z, h_n = recurrent.chunk(3, dim=1)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1), ((h, c) if self.cell == "lstm" else h)

    def extra_repr(self) -> str:
        cut = ", cut_recurrence" if self.cut_recurrence else ""
        return f"{self.cell}, {self.input_size}, {self.hidden_size}{cut}"


class _Recurrent(nn.Module):
    """What :class:`LSTM` and :class:`GRU` share: ``layers`` of :class:`RecurrentLayer`, dropout between them."""

    cell: str
    torch_class: type

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if bidirectional:
            raise ValueError(f"feedalign's {type(self).__name__} does not support bidirectional=True; "
                             "run two unidirectional ones (one on the reversed sequence)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.layers = nn.ModuleList(
            RecurrentLayer(self.cell, input_size if k == 0 else hidden_size, hidden_size, bias, device, dtype)
            for k in range(num_layers))

    @classmethod
    def from_torch(cls, module: nn.RNNBase):
        """A copy of ``module`` (an ``nn.LSTM``/``nn.GRU``): weights, settings, device, dtype, mode."""
        if not isinstance(module, cls.torch_class):
            raise TypeError(f"{cls.__name__}.from_torch expects {cls.torch_class.__name__}, "
                            f"got {type(module).__name__}")
        if module.bidirectional or getattr(module, "proj_size", 0):
            raise ValueError(f"{type(module).__name__} with bidirectional=True or proj_size > 0 cannot be converted: "
                             f"feedalign's {cls.__name__} does not support them")
        weight = module.weight_ih_l0
        new = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=module.dropout, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for k, layer in enumerate(new.layers):
                layer.input_map.weight.copy_(getattr(module, f"weight_ih_l{k}"))
                layer.recurrent_map.weight.copy_(getattr(module, f"weight_hh_l{k}"))
                if module.bias:
                    layer.input_map.bias.copy_(getattr(module, f"bias_ih_l{k}"))
                    layer.recurrent_map.bias.copy_(getattr(module, f"bias_hh_l{k}"))
        new.train(module.training)
        return new

    def forward(self, input: torch.Tensor, hx=None):
        """As the torch module: input (N, T, in) if ``batch_first`` else (T, N, in), or unbatched (T, in);
        ``hx`` the initial state(s), each (num_layers, N, H), None for zeros. Returns
        ``(output, h_n)`` (GRU) or ``(output, (h_n, c_n))`` (LSTM), output of the input's layout."""
        batched = input.dim() == 3
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects a 2-D or 3-D input, got {input.dim()}-D")
        x = input if not batched or self.batch_first else input.transpose(0, 1)
        if not batched:
            x = x.unsqueeze(0)
        states = self._initial_states(hx, batched)
        finals = []
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, final = layer(x, states[k])
            finals.append(final)
        output = x if not batched or self.batch_first else x.transpose(0, 1)
        if not batched:
            output = output.squeeze(0)
        return output, self._final_states(finals, batched)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")


class LSTM(_Recurrent):
    """``nn.LSTM`` (gates i, f, g, o; no ``proj_size``, not bidirectional) unrolled in time over
    :class:`RecurrentLayer` s whose input and recurrent maps are ``nn.Linear``."""

    cell, torch_class = "lstm", nn.LSTM

    def _initial_states(self, hx, batched):
        if hx is None:
            return [None] * self.num_layers
        h0, c0 = (s if batched else s.unsqueeze(1) for s in hx)
        return list(zip(h0.unbind(0), c0.unbind(0)))

    def _final_states(self, finals, batched):
        h = torch.stack([hc[0] for hc in finals])
        c = torch.stack([hc[1] for hc in finals])
        return (h, c) if batched else (h.squeeze(1), c.squeeze(1))


class GRU(_Recurrent):
    """``nn.GRU`` (gates r, z, n; not bidirectional) unrolled in time over :class:`RecurrentLayer` s."""

    cell, torch_class = "gru", nn.GRU

    def _initial_states(self, hx, batched):
        if hx is None:
            return [None] * self.num_layers
        return list((hx if batched else hx.unsqueeze(1)).unbind(0))

    def _final_states(self, finals, batched):
        h = torch.stack(finals)
        return h if batched else h.squeeze(1)


SEQUENCE_MODULES = (MultiheadAttention, LSTM, GRU, RecurrentLayer)
_SWAPS = {nn.MultiheadAttention: MultiheadAttention, nn.LSTM: LSTM, nn.GRU: GRU}


def swap_sequence_modules(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention``, ``nn.LSTM`` and ``nn.GRU`` of ``model`` (the root
    included) by a copy as :class:`MultiheadAttention`, :class:`LSTM`, :class:`GRU`; returns the root.

    ``nn.TransformerEncoderLayer``/``DecoderLayer`` call ``self.self_attn(...)`` (and
    ``multihead_attn``) as modules, so they keep working with the swapped attention; an
    ``nn.TransformerEncoder``'s nested-tensor inference path is turned off (it would
    bypass the layers' forward). ``nn.RNN`` is refused with a clear error.
    """
    if type(model) in _SWAPS:
        return _SWAPS[type(model)].from_torch(model)
    if isinstance(model, nn.RNN):
        raise ValueError("nn.RNN is not supported by feedalign's rules: its weights are used functionally; "
                         "use nn.GRU or nn.LSTM, or train it with 'bp'")
    swapped = {}
    for parent in list(model.modules()):
        if isinstance(parent, nn.TransformerEncoder):
            parent.use_nested_tensor = False
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RNN):
                raise ValueError(f"{name}: nn.RNN is not supported by feedalign's rules (its weights are used "
                                 "functionally); use nn.GRU or nn.LSTM, or train it with 'bp'")
            if isinstance(child, tuple(_SWAPS)) and type(child) not in _SWAPS:
                raise ValueError(f"{name}: {type(child).__name__} subclasses a torch attention/recurrent module and "
                                 "may change its forward, so it is not swapped; subclass feedalign.models.sequence's "
                                 "module instead, or train it with 'bp'")
            if type(child) in _SWAPS:
                if id(child) not in swapped:
                    swapped[id(child)] = _SWAPS[type(child)].from_torch(child)
                setattr(parent, name, swapped[id(child)])
    return model


def has_sequence_modules(model: nn.Module) -> bool:
    """Whether ``model`` holds an attention or recurrent module (torch's or feedalign's)."""
    return any(isinstance(m, SEQUENCE_MODULES + tuple(_SWAPS)) for m in model.modules())
