"""Hand-written reference updates for every rule, in NumPy float64 (no autograd).

Row-vector convention: ``a_l = h_{l-1} W_l^T + b_l``, ``h_l = f(a_l)``, ``y = a_L``;
``e = dL/dy``; ``dW_l = delta_l^T h_{l-1}``, ``db_l = sum_n delta_l``.
"""
from __future__ import annotations

import numpy as np

DERIVATIVES = {  # f'(a) written with a and h = f(a)
    "tanh": lambda a, h: 1.0 - h ** 2,
    "sigmoid": lambda a, h: h * (1.0 - h),
    "relu": lambda a, h: (a > 0).astype(a.dtype),
    "linear": lambda a, h: np.ones_like(a),
}
FUNCTIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "relu": lambda a: np.maximum(a, 0.0),
    "linear": lambda a: a,
}


def forward(weights, biases, x, activation):
    """Pre-activations ``a`` and outputs ``h`` (``h[0] = x``) of every layer."""
    f = FUNCTIONS[activation]
    hs, pre = [x], []
    for l, (w, b) in enumerate(zip(weights, biases)):
        a = hs[-1] @ w.T + (0.0 if b is None else b)
        pre.append(a)
        hs.append(a if l == len(weights) - 1 else f(a))
    return pre, hs


def output_error(y, target, loss):
    """``e = dL/dy`` for mean-reduced MSE or cross-entropy (integer targets)."""
    if loss == "mse":
        return 2.0 * (y - target) / y.size
    p = np.exp(y - y.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(target)), target] -= 1.0
    return p / len(target)


def signals(rule, weights, pre, hs, error, activation, feedback):
    """The pre-activation signal ``delta_l`` of every layer under ``rule``."""
    df = DERIVATIVES[activation]
    n = len(weights)
    deltas = [None] * n
    deltas[-1] = error
    if rule in ("bp", "fa"):
        back = weights if rule == "bp" else feedback  # FA: B_l has W_l's shape
        for l in range(n - 2, -1, -1):
            deltas[l] = (deltas[l + 1] @ back[l + 1]) * df(pre[l], hs[l + 1])
    elif rule == "dfa":
        for l in range(n - 1):
            deltas[l] = (error @ feedback[l]) * df(pre[l], hs[l + 1])
    elif rule == "ifa":
        deltas[0] = (error @ feedback[0]) * df(pre[0], hs[1])
        for l in range(1, n - 1):
            deltas[l] = (deltas[l - 1] @ weights[l].T) * df(pre[l], hs[l + 1])
    else:
        raise ValueError(rule)
    return deltas


def reference_gradients(rule, weights, biases, feedback, x, target, activation, loss):
    """Weight and bias updates (gradients to descend) of every layer under ``rule``."""
    pre, hs = forward(weights, biases, x, activation)
    error = output_error(hs[-1], target, loss)
    deltas = signals(rule, weights, pre, hs, error, activation, feedback)
    grad_w = [d.T @ h for d, h in zip(deltas, hs[:-1])]
    grad_b = [d.sum(axis=0) for d in deltas]
    return grad_w, grad_b
