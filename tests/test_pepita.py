"""PEPITA (feedalign.rules.pepita): one step's updates against a hand-written float64 NumPy version of the
authors' two forward passes, with and without biases, the target recovered or given, dropout masks shared
by both passes; its first-order relation to DFA (feedback -F W_1^T, error O(|F|^2)); the alignment
diagnostics; its refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import pepita, trainable_layers

import reference


def _softmax(y):
    p = np.exp(y - y.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def numpy_pepita(weights, biases, feedback, x, labels, activation="tanh", masks=None):
    """The two passes in NumPy: ``(grad_w, grad_b)`` per layer, the gradients to descend (the authors'
    ``-delta_w / batch_size``). ``masks[l]``: the dropout mask (scaled) after hidden layer l, or None."""
    f = reference.FUNCTIONS[activation]
    n, out = len(x), weights[-1].shape[0]
    t = np.eye(out)[labels]
    masks = masks or [None] * (len(weights) - 1)

    def run(h0):
        hs = [h0]
        for l, (w, b) in enumerate(zip(weights, biases)):
            a = hs[-1] @ w.T + (0.0 if b is None else b)
            if l == len(weights) - 1:
                return hs, a
            h = f(a)
            hs.append(h if masks[l] is None else h * masks[l])

    hs, y = run(x)
    e = _softmax(y) - t
    hs_mod, y_mod = run(x + e @ feedback)
    e_mod = _softmax(y_mod) - t
    grad_w, grad_b = [], []
    for l in range(len(weights)):
        delta = e_mod if l == len(weights) - 1 else hs[l + 1] - hs_mod[l + 1]
        grad_w.append(delta.T @ hs_mod[l] / n)
        grad_b.append(delta.sum(0) / n)
    return grad_w, grad_b


def _batch(n=8, inputs=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _numpy_state(model):
    layers = trainable_layers(model)
    return ([l.weight.detach().numpy() for l in layers],
            [None if l.bias is None else l.bias.detach().numpy() for l in layers],
            model.feedback.numpy())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", ["5-7-3", "5-7-6-4-3"])
def test_update_matches_numpy(sizes, bias):
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp(sizes, activation="tanh", bias=bias).double(), "pepita", seed=1,
                              feedback_scale=0.3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()  # the target recovered from the mean cross-entropy's gradient
    weights, biases, feedback = _numpy_state(model)
    grad_w, grad_b = numpy_pepita(weights, biases, feedback, x.numpy(), y.numpy())
    for l, layer in enumerate(trainable_layers(model)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w[l], rtol=1e-9, atol=1e-12, err_msg=f"W{l + 1}")
        if bias:
            np.testing.assert_allclose(layer.bias.grad.numpy(), grad_b[l], rtol=1e-9, atol=1e-12, err_msg=f"b{l + 1}")
    # the reference tells PEPITA from backprop, and its first-layer update is not the trivial one of F = 0
    model.zero_grad()
    with feedalign.exact_gradients(model):
        F.cross_entropy(model(x), y).backward()
    assert not np.allclose(trainable_layers(model)[0].weight.grad.numpy(), grad_w[0])
    zero_w, _ = numpy_pepita(weights, biases, 0 * feedback, x.numpy(), y.numpy())
    assert np.abs(zero_w[0]).max() == 0 and np.abs(grad_w[0]).max() > 0


def test_a_given_target_works_with_any_loss():
    """With target(model, y) the loss only starts the update: MSE on the logits gives the cross-entropy's update."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-7-6-3").double(), "pepita", seed=1, feedback_scale=0.3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    recovered = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with pepita.target(model, y):
        out = model(x)
    out.square().mean().backward()  # backward outside the block: the target was captured at forward time
    for g, p in zip(recovered, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    model.zero_grad()
    with pepita.target(model, F.one_hot(y, 3).double()):  # rows of the output's shape
        model(x).sum().backward()
    for g, p in zip(recovered, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    with pytest.raises(ValueError, match="pepita could not recover a target"):
        model(x).square().sum().backward()
    with pytest.raises(ValueError, match="class indices must have shape"):
        with pepita.target(model, y[:3]):
            model(x)
    with pytest.raises(TypeError, match="must be a tensor"):
        with pepita.target(model, [0, 1]):
            pass
    with pytest.raises(ValueError, match="not converted with rule 'pepita'"):
        with pepita.target(feedalign.mlp("3-4-2"), y):
            pass


def test_both_passes_share_the_dropout_mask():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Dropout(0.5), nn.Linear(9, 3)).double()
    model = feedalign.convert(net, "pepita", seed=1, feedback_scale=0.3)
    x, y = _batch()
    recorded = {}
    trainable_layers(model)[1].register_forward_pre_hook(lambda m, args: recorded.setdefault("h", args[0].detach()))
    state = torch.get_rng_state()
    F.cross_entropy(model(x), y).backward()
    after = torch.get_rng_state()
    h = recorded["h"].numpy()
    weights, biases, feedback = _numpy_state(model)
    mask = (h != 0) * 2.0  # where pass 1's dropout kept a unit, scaled by 1 / (1 - p)
    grad_w, grad_b = numpy_pepita(weights, biases, feedback, x.numpy(), y.numpy(), masks=[mask])
    for l, layer in enumerate(trainable_layers(model)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w[l], rtol=1e-9, atol=1e-12, err_msg=f"W{l + 1}")
    torch.set_rng_state(state)
    model(x)  # one forward draws what the training pass drew: backward's pass 2 did not move the RNG
    assert torch.equal(torch.get_rng_state(), after)


def test_first_order_it_is_dfa_through_the_first_layer():
    """h'_1 - h_1 = f'(a_1) * (e F W_1^T) + O(|F|^2): the first layer's update divided by F's scale s tends to
    DFA's with feedback -F_0 W_1^T (F = s F_0), with an error that falls in proportion to s."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-7-3", activation="tanh").double(), "pepita", seed=1,
                              feedback_scale=1.0)
    x, y = _batch()
    unit = model.feedback.clone()
    w1, b1 = [p.detach() for p in trainable_layers(model)[0].parameters()]
    a1 = x @ w1.T + b1
    e = torch.softmax(model(x).detach(), 1) - F.one_hot(y, 3)
    linear = (-(1 - torch.tanh(a1) ** 2) * (e @ unit @ w1.T)).T @ x / len(x)  # DFA with B = -F_0 W_1^T
    errors = []
    for s in (1e-1, 1e-2, 1e-3):
        model.zero_grad()
        model.feedback.copy_(s * unit)
        F.cross_entropy(model(x), y).backward()
        grad = trainable_layers(model)[0].weight.grad / s
        errors.append(float((grad - linear).norm() / linear.norm()))
    assert errors[0] < 0.5
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5  # O(s)


def test_alignment_diagnostics_measure_pepita():
    """feedalign.alignment: each layer's update angle to the true gradient, F's angle to W_L ... W_1; no
    gradient reaches the layer outputs under the rule, so the signal angles are NaN with the reason."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-7-6-3").double(), "pepita", seed=1)
    x, y = _batch(32)
    table = feedalign.alignment(model, x, y, F.cross_entropy)
    assert table.rule == "pepita" and len(table) == 3
    assert all(0 <= row.update_angle <= 180 for row in table)
    assert 0 <= table[0].weight_angle <= 180 and np.isnan(table[1].weight_angle)
    assert np.isnan(table[0].signal_angle) and "no gradient reaches" in table[0].reason
    # the output layer's update is e'^T h'_{L-1}: near backprop's for a small F
    assert table[2].update_angle < 10


def test_learns_on_a_learnable_task():
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-16-3", activation="relu"), "pepita", seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 5, generator=g)
    y = x[:, :3].argmax(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert F.cross_entropy(model(x), y).item() < 0.7 * first


def test_refusals():
    with pytest.raises(ValueError, match="pepita is implemented for MLPs only"):
        feedalign.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), "pepita")
    with pytest.raises(ValueError, match="at least one hidden layer"):
        feedalign.convert(feedalign.mlp("4-2"), "pepita")
    with pytest.raises(ValueError, match="the last module is not nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), "pepita")
    with pytest.raises(ValueError, match="before the first nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "pepita")
    with pytest.raises(ValueError, match="with parameters"):
        feedalign.convert(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)), "pepita")
    with pytest.raises(ValueError, match="nn.Sequential"):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

            def forward(self, x):
                return self.b(torch.tanh(self.a(x)))
        feedalign.convert(Net(), "pepita")


def test_default_feedback_is_the_authors():
    """F ~ U[-0.05 sqrt(6/in), 0.05 sqrt(6/in)], (out, in)."""
    model = feedalign.convert(feedalign.mlp("784-50-10"), "pepita", seed=0)
    bound = 0.05 * np.sqrt(6 / 784)
    assert model.feedback.shape == (10, 784)
    assert float(model.feedback.abs().max()) <= bound and float(model.feedback.abs().max()) > 0.95 * bound
