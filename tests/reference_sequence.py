"""Hand-written float64 NumPy references for attention and recurrent layers under every rule (no autograd).

Row vectors, as reference.py. A linear map ``y = x W^T + b`` has ``dW = sum dy^T x``,
``db = sum dy`` and sends ``dx = dy B`` to its input, with ``B = W`` under backprop and
the rule's feedback matrix under an FA-type rule. ``back`` maps a layer's name to that B.
"""
from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def softmax(s, axis=-1):
    p = np.exp(s - s.max(axis=axis, keepdims=True))
    return p / p.sum(axis=axis, keepdims=True)


def cross_entropy_error(y, labels):
    """``e = dL/dy`` of the mean-reduced softmax cross-entropy."""
    p = softmax(y)
    p[np.arange(len(labels)), labels] -= 1.0
    return p / len(labels)


def linear(x, w, b):
    return x @ w.T + (0.0 if b is None else b)


def linear_grads(x, dy):
    """``(dW, db)`` of ``y = x W^T + b`` for inputs and output gradients of any leading shape."""
    x2, d2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return d2.T @ x2, d2.sum(axis=0)


# --- multi-head self-attention ------------------------------------------------------------------

def attention_forward(x, p, heads, key_mask):
    """Self-attention of x (N, L, E) with projections ``p[name] = (W, b)`` for q, k, v, out;
    ``key_mask`` (N, L) boolean, True: that key is ignored. Returns Y and the cache."""
    n, length, e = x.shape
    d = e // heads

    def split(t):  # (N, L, E) -> (N, H, L, d)
        return t.reshape(n, length, heads, d).transpose(0, 2, 1, 3)

    q, k, v = (split(linear(x, *p[name])) for name in ("q", "k", "v"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + np.where(key_mask, -np.inf, 0.0)[:, None, None, :]
    a = softmax(scores)
    concat = (a @ v).transpose(0, 2, 1, 3).reshape(n, length, e)
    return linear(concat, *p["out"]), (x, q, k, v, a, concat, heads)


def attention_backward(cache, dy, back):
    """Gradients ``{name: (dW, db)}`` of the four projections and dx, given dY (N, L, E)."""
    x, q, k, v, a, concat, heads = cache
    n, length, e = x.shape
    d = e // heads
    grads = {"out": linear_grads(concat, dy)}
    d_concat = dy @ back["out"]
    d_o = d_concat.reshape(n, length, heads, d).transpose(0, 2, 1, 3)
    d_a = d_o @ v.transpose(0, 1, 3, 2)
    d_v = a.transpose(0, 1, 3, 2) @ d_o
    d_s = a * (d_a - (d_a * a).sum(axis=-1, keepdims=True))
    d_q = d_s @ k / np.sqrt(d)
    d_k = d_s.transpose(0, 1, 3, 2) @ q / np.sqrt(d)
    dx = np.zeros_like(x)
    for name, g in (("q", d_q), ("k", d_k), ("v", d_v)):
        g = g.transpose(0, 2, 1, 3).reshape(n, length, e)
        grads[name] = linear_grads(x, g)
        dx = dx + g @ back[name]
    return grads, dx


# --- LSTM and GRU layers ------------------------------------------------------------------------

def recurrent_forward(cell, x, w_ih, b_ih, w_hh, b_hh):
    """One layer over x (N, T, in) from zero state; returns the hidden states (N, T, H) and the cache."""
    n, steps, _ = x.shape
    hidden = w_hh.shape[1]
    h, c = np.zeros((n, hidden)), np.zeros((n, hidden))
    driven = linear(x, w_ih, b_ih)
    hs, cache = [], []
    for t in range(steps):
        rec = linear(h, w_hh, b_hh)
        if cell == "lstm":
            ai, af, ag, ao = np.split(driven[:, t] + rec, 4, axis=1)
            i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)
            c_prev, c = c, f * c + i * g
            cache.append((h, c_prev, c, i, f, g, o))
            h = o * np.tanh(c)
        else:
            xr, xz, xn = np.split(driven[:, t], 3, axis=1)
            hr, hz, hn = np.split(rec, 3, axis=1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            new = np.tanh(xn + r * hn)
            cache.append((h, r, z, new, hn))
            h = (1 - z) * new + z * h
        hs.append(h)
    return np.stack(hs, axis=1), (cell, x, cache)


def recurrent_backward(state, dh_external, back_ih, back_hh, cut_recurrence):
    """Gradients of one layer: ``dh_external`` (N, T, H) is what reaches each h_t from outside the
    layer. Backprop through time sends ``dgates_t B_hh`` to h_{t-1}; with ``cut_recurrence``
    (recurrent DFA) nothing goes back through the recurrent map, only along the element-wise
    paths (the LSTM cell state; the GRU's ``z * h_{t-1}``). ``back_hh``: one matrix, or a list
    indexed by time step (brsf redraws it at every backward pass of the recurrent map). Returns
    ``(dW_ih, db_ih, dW_hh, db_hh, dx)``."""
    cell, x, cache = state
    n, steps, _ = x.shape
    d_in, d_rec, h_prev_all = [None] * steps, [None] * steps, [None] * steps
    carry_h = np.zeros_like(dh_external[:, 0])
    carry_c = np.zeros_like(carry_h)
    for t in range(steps - 1, -1, -1):
        dh = dh_external[:, t] + carry_h
        if cell == "lstm":
            h_prev, c_prev, c, i, f, g, o = cache[t]
            dc = carry_c + dh * o * (1 - np.tanh(c) ** 2)
            gates = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                                    dh * np.tanh(c) * o * (1 - o)], axis=1)
            carry_c = dc * f
            d_in[t] = d_rec[t] = gates
            direct = 0.0
        else:
            h_prev, r, z, new, hn = cache[t]
            da_n = dh * (1 - z) * (1 - new ** 2)
            da_r = da_n * hn * r * (1 - r)
            da_z = dh * (h_prev - new) * z * (1 - z)
            d_in[t] = np.concatenate([da_r, da_z, da_n], axis=1)
            d_rec[t] = np.concatenate([da_r, da_z, da_n * r], axis=1)
            direct = dh * z
        h_prev_all[t] = h_prev
        b_hh = back_hh[t] if isinstance(back_hh, list) else back_hh
        carry_h = direct + (0.0 if cut_recurrence else d_rec[t] @ b_hh)
    d_in, d_rec = np.stack(d_in, axis=1), np.stack(d_rec, axis=1)
    dw_ih, db_ih = linear_grads(x, d_in)
    dw_hh, db_hh = linear_grads(np.stack(h_prev_all, axis=1), d_rec)
    return dw_ih, db_ih, dw_hh, db_hh, d_in @ back_ih
