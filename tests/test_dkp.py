"""Direct Kolen-Pollack (feedalign.rules.dkp) against its theory, in float64: the last B_K gets exactly the
output layer's update (Kolen-Pollack's defining property), one SGD step against a hand-written NumPy
step, the geometric decay of B_K - W_L under weight decay (and of every B_k's random start), both paths
(general and fused) alike; the alignment diagnostics; its refusals."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import trainable_layers
from feedalign.rules.fused import uses_fused_path

import reference


def _model(sizes="6-5x2-4", seed=1, fused=True, activation="tanh"):
    torch.manual_seed(seed)
    model = feedalign.convert(feedalign.mlp(sizes, activation=activation).double(), "dkp", seed=seed)
    model.fused = fused
    return model


def _batch(n=9, inputs=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_last_feedback_gets_the_output_layers_gradient(fused):
    """B_K (out, w_K) has W_L's shape and receives W_L's gradient e^T h_K, exactly (the KP property)."""
    model = _model(fused=fused)
    x, y = _batch()
    out = model(x)
    assert uses_fused_path(out) == fused
    F.cross_entropy(out, y).backward()
    last = feedalign.feedback_matrices(model)[-1]
    output_layer = trainable_layers(model)[-1]
    assert last.shape == output_layer.weight.shape
    grad_last = model.feedback.grad[:, -last.shape[1]:]
    torch.testing.assert_close(grad_last, output_layer.weight.grad, rtol=0, atol=0)
    # and its SGD update with weight decay is W_L's own, up to the decay of the difference
    before_b, before_w = last.detach().clone(), output_layer.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.3, weight_decay=0.1).step()
    after_b, after_w = feedalign.feedback_matrices(model)[-1].detach(), output_layer.weight.detach()
    torch.testing.assert_close((after_b - before_b) - (after_w - before_w), -0.3 * 0.1 * (before_b - before_w))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
@pytest.mark.parametrize("sizes", ["6-5x2-4", "6-5-7-4", "6-5-4"])
def test_one_step_matches_numpy(fused, sizes):
    """One SGD step (momentum 0, weight decay) of every W, b and B_k against NumPy: DFA's signals and
    dB_k = e^T h_k + lambda B_k, with h_k after the activation."""
    model = _model(sizes, fused=fused)
    x, y = _batch()
    layers = trainable_layers(model)
    weights = [l.weight.detach().numpy().copy() for l in layers]
    biases = [l.bias.detach().numpy().copy() for l in layers]
    feedback = [b.detach().numpy().copy() for b in feedalign.feedback_matrices(model)]
    lr, decay = 0.2, 0.05

    pre, hs = reference.forward(weights, biases, x.numpy(), "tanh")
    e = reference.output_error(hs[-1], y.numpy(), "cross_entropy")
    deltas = reference.signals("dfa", weights, pre, hs, e, "tanh", feedback)
    new_w = [w - lr * (d.T @ h + decay * w) for w, d, h in zip(weights, deltas, hs[:-1])]
    new_b = [b - lr * (d.sum(0) + decay * b) for b, d in zip(biases, deltas)]
    new_feedback = [b - lr * (e.T @ h + decay * b) for b, h in zip(feedback, hs[1:-1])]

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=decay)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    for l, layer in enumerate(layers):
        np.testing.assert_allclose(layer.weight.detach().numpy(), new_w[l], rtol=1e-12, atol=1e-14, err_msg=f"W{l + 1}")
        np.testing.assert_allclose(layer.bias.detach().numpy(), new_b[l], rtol=1e-12, atol=1e-14, err_msg=f"b{l + 1}")
    for k, b in enumerate(feedalign.feedback_matrices(model)):
        np.testing.assert_allclose(b.detach().numpy(), new_feedback[k], rtol=1e-12, atol=1e-14, err_msg=f"B{k + 1}")


def test_the_reference_can_fail():
    """The NumPy step above tells dkp from dfa: under dfa B does not move, and a B_k given the
    pre-activation (not h_k) would differ."""
    model = _model()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    layers = trainable_layers(model)
    weights = [l.weight.detach().numpy() for l in layers]
    biases = [l.bias.detach().numpy() for l in layers]
    pre, hs = reference.forward(weights, biases, x.numpy(), "tanh")
    e = reference.output_error(hs[-1], y.numpy(), "cross_entropy")
    grads = model.feedback.grad.numpy()
    np.testing.assert_allclose(grads, np.concatenate([e.T @ h for h in hs[1:-1]], axis=1), rtol=1e-12, atol=1e-14)
    assert not np.allclose(grads, np.concatenate([e.T @ a for a in pre[:-1]], axis=1))
    dfa = feedalign.convert(feedalign.mlp("6-5x2-4").double(), "dfa")
    assert not any(p.requires_grad for p in feedalign.feedback_matrices(dfa))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_feedback_converges_to_the_output_layer_geometrically(momentum):
    """Plain SGD with weight decay lambda at rate eta: B_K - W_L = c_t (B_K(0) - W_L(0)) with the scalar
    c_t of the recurrence d <- d - eta (mu m + lambda d) (c_t = (1 - eta lambda)^t without momentum),
    whatever the data; the other B_k forget their start at the same rate: B_k(t) = c_t B_k(0) + what the
    errors e_s^T h_k,s put there. Without decay the difference stays."""
    lr, decay, steps = 0.1, 0.2, 40
    model = _model("6-5-5-4")
    b0 = [b.detach().clone() for b in feedalign.feedback_matrices(model)]
    w0 = trainable_layers(model)[-1].weight.detach().clone()
    # what the errors alone put into the B_k, from the recorded errors and activities
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=decay)
    accumulated = [torch.zeros_like(b) for b in b0]  # sum_s c_{t,s} (-eta e_s^T h_k,s) with SGD's recurrence
    velocity = [torch.zeros_like(b) for b in b0]
    c, m = 1.0, 0.0  # the scalar recurrence of the decaying start
    for t in range(steps):
        x, y = _batch(seed=t)
        optimizer.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        hidden = [h.detach() for h in _hidden_outputs(model, x)]
        e = (out.detach().softmax(1) - F.one_hot(y, 4)) / len(y)  # dL/dy of the mean cross-entropy
        for k, h in enumerate(hidden):  # the data-driven part, with decay on itself, SGD's momentum form
            grad = e.T @ h + decay * accumulated[k]
            velocity[k] = grad if t == 0 or momentum == 0 else momentum * velocity[k] + grad
            accumulated[k] = accumulated[k] - lr * velocity[k]
        m = decay * c if t == 0 or momentum == 0 else momentum * m + decay * c
        c = c - lr * m
        optimizer.step()
    w = trainable_layers(model)[-1].weight.detach()
    feedback = feedalign.feedback_matrices(model)
    torch.testing.assert_close(feedback[-1].detach() - w, c * (b0[-1] - w0), rtol=1e-9, atol=1e-12)
    for k, b in enumerate(feedback):
        torch.testing.assert_close(b.detach(), c * b0[k] + accumulated[k], rtol=1e-9, atol=1e-12)
    if momentum == 0:
        assert c == pytest.approx((1 - lr * decay) ** steps, rel=1e-12)
    assert abs(c) < 0.5  # it shrank
    # without weight decay the difference is a constant of the motion
    model = _model("6-5-5-4")
    start = feedalign.feedback_matrices(model)[-1].detach() - trainable_layers(model)[-1].weight.detach()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for t in range(5):
        x, y = _batch(seed=t)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    end = feedalign.feedback_matrices(model)[-1].detach() - trainable_layers(model)[-1].weight.detach()
    torch.testing.assert_close(end, start, rtol=1e-10, atol=1e-12)


def _hidden_outputs(model, x):
    """h_1 .. h_K of a feedalign.mlp model, by running its modules in turn (no grad)."""
    hidden, h = [], x
    with torch.no_grad():
        modules = list(model)
        for i, module in enumerate(modules):
            h = module(h)
            if not isinstance(module, nn.Linear) and i < len(modules) - 1:
                hidden.append(h)
    return hidden


def test_alignment_diagnostics_measure_dkp():
    """feedalign.alignment gives dkp's update angles to the true gradient: once B_K equals W_L the last
    hidden layer's update is backprop's (angle 0), and trained with weight decay B_K turns toward W_L."""
    model = _model("6-5-5-4")
    x, y = _batch(32)
    table = feedalign.alignment(model, x, y, F.cross_entropy)
    assert table.rule == "dkp" and len(table) == 3
    assert table[1].update_angle > 1.0 and table[2].update_angle == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        feedalign.feedback_matrices(model)[-1].copy_(trainable_layers(model)[-1].weight)
    aligned = feedalign.alignment(model, x, y, F.cross_entropy)
    assert aligned[1].update_angle == pytest.approx(0.0, abs=1e-5)
    assert aligned[1].weight_angle == pytest.approx(0.0, abs=1e-5)
    assert aligned[0].update_angle > 1.0  # B_1 still stands for W_3 W_2 only roughly

    # trained on learnable labels with weight decay: B_K - W_L shrinks by 0.95 a step while W_L grows with
    # what it learns, so the angles between B_K and W_L and between the last hidden update and the gradient
    # fall; DFA, trained alike, keeps its B
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = x[:, :4].argmax(1)
    angles = {}
    for rule in ("dkp", "dfa"):
        trained = feedalign.convert(feedalign.mlp("6-5-5-4").double(), rule, seed=1)
        before = feedalign.alignment(trained, x, y, F.cross_entropy)[1]
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.5, weight_decay=0.1)
        for t in range(60):
            xb = torch.randn(16, 6, generator=g, dtype=torch.float64)
            optimizer.zero_grad()
            F.cross_entropy(trained(xb), xb[:, :4].argmax(1)).backward()
            optimizer.step()
        after = feedalign.alignment(trained, x, y, F.cross_entropy)[1]
        angles[rule] = (before, after)
    before, after = angles["dkp"]
    assert before.weight_angle > 45 and before.update_angle > 45
    assert after.weight_angle < 10 and after.update_angle < 10
    assert angles["dfa"][1].update_angle > 3 * after.update_angle


def test_frozen_feedback_is_dfa():
    """Excluding feedback from the optimizer (or freezing it) leaves DFA's update."""
    model = _model()
    dfa = feedalign.convert(feedalign.mlp("6-5x2-4").double(), "dfa", seed=1)
    dfa.load_state_dict({k: v for k, v in model.state_dict().items()})
    model.feedback.requires_grad_(False)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(dfa(x), y).backward()
    assert model.feedback.grad is None
    dfa_parameters = dict(dfa.named_parameters())
    for name, p in model.named_parameters():
        if name != "feedback":
            torch.testing.assert_close(p.grad, dfa_parameters[name].grad, msg=name)


def test_refusals():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="dkp needs nn.Linear layers after the first"):
        feedalign.convert(conv, "dkp")
    with pytest.raises(ValueError, match="takes no taps"):
        feedalign.convert(feedalign.mlp("4-3-2"), "dkp", taps=["0"])
    with pytest.raises(ValueError, match="hidden layer"):
        feedalign.convert(feedalign.mlp("4-2"), "dkp")
    # a Conv2d first layer is fine: the feedback starts after it
    first_conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    model = feedalign.convert(first_conv, "dkp")
    F.cross_entropy(model(torch.randn(4, 1, 4, 4)), torch.tensor([0, 1, 2, 0])).backward()
    assert model.feedback.grad is not None and model.feedback.shape == (3, 8 + 5)


def test_step_flops_count_the_feedback_gradient():
    widths, n = [6, 5, 5, 4], 10
    dfa, dkp = feedalign.get_rule("dfa").step_flops(widths, n), feedalign.get_rule("dkp").step_flops(widths, n)
    assert dkp - dfa == 2 * n * 4 * 10


@pytest.mark.slow
def test_dkp_mnist_quick(tmp_path, mnist):
    """`feedalign reproduce dkp-mnist --quick`: both rules train on every network, the searched learner trains at
    its chosen rate, and the alignment curves are there for the figure."""
    from feedalign.experiments import run_experiment
    r = run_experiment("dkp-mnist", quick=True, out=tmp_path, seeds=1, log=lambda *a: None)
    claims = {c["key"]: c for c in r["claims"]}
    for net in ("1x100", "3x100"):
        for rule in ("dfa", "dkp"):
            assert max(claims[f"{net}_{rule}"]["values"]) < 80  # trains (chance 90%)
            assert 0 <= claims[f"{net}_{rule}_update_angle"]["values"][0] <= 180
        gap = claims[f"{net}_dkp_minus_dfa"]["values"][0]
        assert gap == pytest.approx(claims[f"{net}_dkp"]["values"][0] - claims[f"{net}_dfa"]["values"][0])
    search = r["search"]["learners"]["1x100 DKP"]
    assert search["chosen"] == min(search["candidates"], key=lambda c: c["mean"])["fields"]
    assert (tmp_path / "dkp-mnist" / "dkp-mnist.png").is_file()


def test_describe_names_the_trained_feedback():
    """The root's feedback Parameter is the rule's, not a module left on backprop."""
    rows = feedalign.describe(_model())
    assert rows.backprop == [] and set(rows.counts()) == {"dkp"}
    (row,) = [r for r in rows if r.parameter == "feedback"]
    assert row.module == "" and "trained by the rule" in row.why
