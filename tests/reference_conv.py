"""Hand-written float64 NumPy reference updates for sequential nets of Conv2d, Linear,
element-wise activations, 2x2 max-pooling and flattening, under every rule (no autograd).

A net is a list of ops: ``("conv", W, b, stride, padding, dilation)``, ``("linear", W, b)``,
``("act", name)``, ``("pool",)`` (2x2, stride 2), ``("flatten",)``. Convolutions are
written with explicit loops over kernel offsets, so they share no code with torch.
"""
from __future__ import annotations

import numpy as np

from reference import DERIVATIVES, FUNCTIONS, output_error


def conv_forward(x, w, b, stride, padding, dilation):
    n, c, hh, ww = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (hh + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (ww + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for p in range(kh):
                for q in range(kw):
                    patch = xp[:, :, i * stride + p * dilation, j * stride + q * dilation]  # (n, c)
                    out[:, :, i, j] += patch @ w[:, :, p, q].T
    return out + (0.0 if b is None else b[None, :, None, None])


def conv_input_grad(grad, kernel, x_shape, stride, padding, dilation):
    """The transposed convolution of ``grad`` with ``kernel``: the input gradient when ``kernel = W``."""
    n, c, hh, ww = x_shape
    _, _, kh, kw = kernel.shape
    gp = np.zeros((n, c, hh + 2 * padding, ww + 2 * padding))
    for i in range(grad.shape[2]):
        for j in range(grad.shape[3]):
            for p in range(kh):
                for q in range(kw):
                    gp[:, :, i * stride + p * dilation, j * stride + q * dilation] += grad[:, :, i, j] @ kernel[:, :, p, q]
    return gp[:, :, padding:padding + hh, padding:padding + ww]


def conv_weight_grad(grad, x, w_shape, stride, padding, dilation):
    _, _, kh, kw = w_shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dw = np.zeros(w_shape)
    for i in range(grad.shape[2]):
        for j in range(grad.shape[3]):
            for p in range(kh):
                for q in range(kw):
                    dw[:, :, p, q] += grad[:, :, i, j].T @ xp[:, :, i * stride + p * dilation, j * stride + q * dilation]
    return dw


def pool_forward(x):
    n, c, h, w = x.shape
    blocks = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    return blocks.max(axis=(3, 5))


def pool_backward(grad, x):
    """Each window's gradient goes to its maximum (ties have probability zero here)."""
    n, c, h, w = x.shape
    windows = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    winner = windows == windows.max(axis=(3, 5), keepdims=True)
    out = np.zeros_like(x)
    out[:, :, :h // 2 * 2, :w // 2 * 2] = (winner * grad[:, :, :, None, :, None]).reshape(n, c, h // 2 * 2, w // 2 * 2)
    return out


def forward(net, x):
    """Inputs of every op and the output."""
    inputs = []
    for op in net:
        inputs.append(x)
        kind = op[0]
        if kind == "conv":
            x = conv_forward(x, *op[1:])
        elif kind == "linear":
            x = x @ op[1].T + (0.0 if op[2] is None else op[2])
        elif kind == "act":
            x = FUNCTIONS[op[1]](x)
        elif kind == "pool":
            x = pool_forward(x)
        elif kind == "flatten":
            x = x.reshape(len(x), -1)
    return inputs, x


def backward_op(op, grad, x, out, kernel=None):
    """Gradient at the input of ``op`` from the gradient at its output; ``kernel`` replaces W."""
    kind = op[0]
    if kind == "conv":
        return conv_input_grad(grad, op[1] if kernel is None else kernel, x.shape, *op[3:])
    if kind == "linear":
        return grad @ (op[1] if kernel is None else kernel)
    if kind == "act":
        return grad * DERIVATIVES[op[1]](x, out)
    if kind == "pool":
        return pool_backward(grad, x)
    return grad.reshape(x.shape)


def param_grads(op, grad, x):
    if op[0] == "conv":
        return conv_weight_grad(grad, x, op[1].shape, *op[3:]), grad.sum(axis=(0, 2, 3))
    return grad.T @ x, grad.sum(axis=0)


def reference_gradients(rule, net, feedback, x, target, loss):
    """``[(dW, db)]`` for every trainable op, forward order.

    ``feedback``: for FA-type rules (``fa``, ``usf``, ``brsf``, ``frsf``, ``kp``, ``wm``) one
    kernel/matrix per trainable op, used in place of W; for ``dfa``/``drtp`` one
    (out, size) matrix per trainable op but the first, whose input gets ``e B_k`` (dfa) or
    ``t B_k / N`` (drtp, ``t`` the one-hot target, or ``target`` itself where it has the
    output's shape); ``bp``: unused.
    """
    inputs, y = forward(net, x)
    outs = inputs[1:] + [y]
    error = output_error(y, target, loss)
    trainable = [i for i, op in enumerate(net) if op[0] in ("conv", "linear")]
    grads = {}
    if rule in ("dfa", "drtp"):
        if rule == "drtp":  # t: one-hot class indices, or a target of the output's shape as given
            source = (np.eye(y.shape[1])[target] if target.ndim == 1 else target) / len(target)
        else:
            source = error
        start = {trainable[k + 1]: (source @ feedback[k]).reshape(inputs[trainable[k + 1]].shape)
                 for k in range(len(trainable) - 1)}
        grad = error
        for i in range(len(net) - 1, -1, -1):
            if net[i][0] in ("conv", "linear"):
                grads[i] = param_grads(net[i], grad, inputs[i])
                if i == trainable[0]:
                    break
                grad = start[i]  # the cut: the layer's own input gradient is never used
            else:
                grad = backward_op(net[i], grad, inputs[i], outs[i])
    else:
        kernels = {i: (None if rule == "bp" else feedback[k]) for k, i in enumerate(trainable)}
        grad = error
        for i in range(len(net) - 1, -1, -1):
            if net[i][0] in ("conv", "linear"):
                grads[i] = param_grads(net[i], grad, inputs[i])
            if i > 0:
                grad = backward_op(net[i], grad, inputs[i], outs[i], kernels.get(i))
    return [grads[i] for i in trainable]
