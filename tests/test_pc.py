"""Predictive coding (rule ``pc``) against a float64 NumPy reference of its inference and update, and against
the theory: exact backprop at equilibrium under the fixed-prediction assumption, and convergence to backprop
at rate O(beta) as the output error shrinks under standard PC."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.diagnostics import alignment
from feedalign.rules import get_rule, parse_options, pc

ACT = {"tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
       "sigmoid": (lambda a: 1.0 / (1.0 + np.exp(-a)), lambda a: np.exp(-a) / (1.0 + np.exp(-a)) ** 2)}


def numpy_pc(weights, biases, activation, x, e, *, steps, gamma, beta, fixed, halving=True):
    """The PC update written from the equations (no autograd): value nodes start at the feedforward values, T
    synchronous Euler steps on F = sum_{l<L} 1/2|x_l - mu_l|^2 + beta/2 |t - mu_L|^2 with t = y - N e (standard PC:
    the step halves after any step that raised some row's F), then grad W_l = -(1/(beta N)) (f'(a_l) eps_l)^T
    x_{l-1}. Fixed prediction: mu, f' and x_{l-1} at feedforward values, the step never changes."""
    f, df = ACT[activation]
    n_layers, rows = len(weights), x.shape[0]
    ff = [x]  # ff[l]: the feedforward input of layer l; ff[L]: the output
    for l, (w, b) in enumerate(zip(weights, biases)):
        a = ff[-1] @ w.T + (0 if b is None else b)
        ff.append(a if l == n_layers - 1 else f(a))
    target = ff[-1] - rows * e
    v = [u.copy() for u in ff[:-1]]

    def errors():
        eps, ders = [], []
        for l, (w, b) in enumerate(zip(weights, biases)):
            a = (ff[l] if fixed else v[l]) @ w.T + (0 if b is None else b)
            last = l == n_layers - 1
            mu, der = (a, np.ones_like(a)) if last else (f(a), df(a))
            eps.append(beta * (target - mu) if last else v[l + 1] - mu)
            ders.append(der)
        return eps, ders

    def energy(eps):
        return sum(0.5 * (u ** 2).sum(1) for u in eps[:-1]) + 0.5 * beta * ((eps[-1] / beta) ** 2).sum(1)

    eps, ders = errors()
    for _ in range(steps):
        before = energy(eps)
        v = [v[0]] + [v[l] - gamma * (eps[l - 1] - (ders[l] * eps[l]) @ weights[l]) for l in range(1, n_layers)]
        eps, ders = errors()
        if halving and not fixed and (energy(eps) > before).any():
            gamma = gamma / 2
    grads = []
    for l in range(n_layers):
        delta = ders[l] * eps[l]
        source = ff[l] if fixed else v[l]
        grads.append((-(delta.T @ source) / (beta * rows), -delta.sum(0) / (beta * rows)))
    return grads


def output_error(y, target, loss):
    """dL/dy of the mean-reduced loss, by hand."""
    rows = y.shape[0]
    if loss == "mse":  # F.mse_loss: mean over every element
        return 2.0 * (y - target) / y.size
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(rows), target] -= 1.0
    return p / rows


def setup(sizes="4-5-6-3", activation="tanh", bias=True, rows=7, seed=0):
    torch.manual_seed(seed)
    net = feedalign.mlp(sizes, activation=activation, bias=bias).double()
    x = torch.randn(rows, int(sizes.split("-")[0]), dtype=torch.float64)
    y = torch.randint(0, 3, (rows,))
    return net, x, y


def pc_grads(net, x, y, loss="cross_entropy", **settings):
    model = pc.configure(feedalign.convert(net, "pc"), **settings)
    out = model(x)
    (F.cross_entropy(out, y) if loss == "cross_entropy" else F.mse_loss(out, y)).backward()
    return [p.grad.clone() for p in model.parameters()]


def bp_grads(net, x, y, loss="cross_entropy"):
    net = copy.deepcopy(net)
    out = net(x)
    (F.cross_entropy(out, y) if loss == "cross_entropy" else F.mse_loss(out, y)).backward()
    return [p.grad.clone() for p in net.parameters()]


def relative_error(grads, reference):
    return math.sqrt(sum(float((g - r).square().sum()) for g, r in zip(grads, reference))
                     / sum(float(r.square().sum()) for r in reference))


# --- the float64 reference ------------------------------------------------------------------

@pytest.mark.parametrize("fixed", [False, True], ids=["standard", "fixed-prediction"])
@pytest.mark.parametrize("case", [("tanh", True, "cross_entropy"), ("sigmoid", True, "mse"),
                                  ("tanh", False, "mse")], ids=lambda c: "-".join(map(str, c)))
def test_update_matches_float64_numpy_reference(fixed, case):
    activation, bias, loss = case
    net, x, labels = setup(activation=activation, bias=bias)
    target = torch.randn(len(x), 3, dtype=torch.float64) if loss == "mse" else labels
    settings = dict(steps=4, inference_lr=0.3, output_precision=0.7, fixed_prediction=int(fixed))
    got = pc_grads(net, x, target, loss, **settings)
    layers = [m for m in net if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().numpy() for m in layers]
    biases = [None if m.bias is None else m.bias.detach().numpy() for m in layers]
    e = output_error(net(x).detach().numpy(), target.numpy(), loss)
    expected = numpy_pc(weights, biases, activation, x.numpy(), e, steps=4, gamma=0.3, beta=0.7, fixed=fixed)
    expected = [g for (gw, gb), b in zip(expected, biases) for g in ((gw,) if b is None else (gw, gb))]
    assert len(got) == len(expected)
    for k, (g, r) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-10, atol=1e-13, err_msg=f"parameter {k}")
    # the reference is not backprop: the check above can tell them apart
    assert relative_error(got, bp_grads(net, x, target, loss)) > 1e-3


def test_forward_is_the_feedforward_prediction_and_no_inference_leaves_hidden_layers_still():
    """Value nodes start at the feedforward values: with T = 0 no hidden error exists, the output layer's update
    is backprop's and every other is zero."""
    net, x, y = setup()
    model = pc.configure(feedalign.convert(net, "pc"), steps=0)
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
    F.cross_entropy(model(x), y).backward()
    reference = bp_grads(net, x, y)
    params = list(model.parameters())
    for p, r in zip(params[-2:], reference[-2:]):
        torch.testing.assert_close(p.grad, r, rtol=1e-12, atol=1e-15)
    assert all(float(p.grad.abs().max()) == 0.0 for p in params[:-2])


# --- theory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_fixed_prediction_at_equilibrium_is_backprop_exactly(loss):
    """Millidge et al. 2022: with predictions held at their feedforward values the equilibrium errors follow
    backprop's recursion. gamma = 1 reaches it in L - 1 steps; gamma = 0.5 approaches it geometrically."""
    net, x, labels = setup("4-5-6-5-3")
    y = torch.randn(len(x), 3, dtype=torch.float64) if loss == "mse" else labels
    reference = bp_grads(net, x, y, loss)
    exact = pc_grads(net, x, y, loss, fixed_prediction=1, inference_lr=1.0, steps=3, output_precision=2.0)
    assert relative_error(exact, reference) < 1e-13
    settled = pc_grads(net, x, y, loss, fixed_prediction=1, inference_lr=0.5, steps=200, output_precision=0.3)
    assert relative_error(settled, reference) < 1e-12
    early = pc_grads(net, x, y, loss, fixed_prediction=1, inference_lr=1.0, steps=2)  # layer 1 has no error yet
    assert relative_error(early, reference) > 1e-2


def test_standard_pc_approaches_backprop_as_the_output_error_shrinks():
    """Standard PC at (near) equilibrium: the relative error of the update falls in proportion to beta
    (slope about 1 in log-log), and with more inference steps it falls to that floor."""
    net, x, y = setup("4-5-6-5-3")
    reference = bp_grads(net, x, y)
    betas = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    errors = [relative_error(pc_grads(net, x, y, steps=400, inference_lr=0.5, output_precision=b), reference)
              for b in betas]
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert 0.9 < slope < 1.1, (slope, errors)
    assert errors[-1] < 1e-2 * errors[0] and errors[-1] < 2e-3
    # at a small beta the error falls with the number of inference steps to the O(beta) floor
    by_steps = [relative_error(pc_grads(net, x, y, steps=t, inference_lr=0.5, output_precision=1e-3), reference)
                for t in (1, 3, 10, 400)]
    assert all(a > b for a, b in zip(by_steps, by_steps[1:])), by_steps
    assert by_steps[0] > 0.3 and by_steps[-1] == pytest.approx(errors[-1])


def test_step_halving_keeps_inference_stable_on_large_weights():
    """With large weights a fixed step oscillates and the update turns away from the settled one; the authors'
    halving (the default) settles as a small step does. The NumPy reference follows the same halving."""
    net, x, y = setup("4-6-6-3", activation="sigmoid")
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(5.0)
    settled = pc_grads(net, x, y, steps=1500, inference_lr=0.03, step_halving=0)  # a small step, run long
    fixed_step = pc_grads(net, x, y, steps=200, inference_lr=0.5, step_halving=0)
    halved = pc_grads(net, x, y, steps=200, inference_lr=0.5)
    assert not all(torch.isfinite(g).all() for g in fixed_step)
    assert relative_error(halved, settled) < 5e-3
    layers = [m for m in net if isinstance(m, nn.Linear)]
    e = output_error(net(x).detach().numpy(), y.numpy(), "cross_entropy")
    expected = numpy_pc([m.weight.detach().numpy() for m in layers], [m.bias.detach().numpy() for m in layers],
                        "sigmoid", x.numpy(), e, steps=200, gamma=0.5, beta=1.0, fixed=False)
    for g, r in zip(halved, [g for pair in expected for g in pair]):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-9, atol=1e-12)


# --- diagnostics ----------------------------------------------------------------------------

def test_alignment_measures_the_update_angle_to_the_true_gradient():
    """exact_gradients gives backprop's gradient for a pc model, so the update angle is PC's angle to it:
    zero at the fixed-prediction equilibrium, well above it for standard PC with beta = 1."""
    net, x, y = setup("4-5-6-5-3", rows=16)
    exact = pc.configure(feedalign.convert(net, "pc"), fixed_prediction=1, inference_lr=1.0, steps=3)
    table = alignment(exact, x, y, F.cross_entropy)
    assert all(row.update_angle < 1e-5 for row in table), str(table)
    standard = pc.configure(feedalign.convert(net, "pc"), steps=20, inference_lr=0.1)
    table = alignment(standard, x, y, F.cross_entropy)
    angles = [row.update_angle for row in table]
    assert all(math.isfinite(a) for a in angles) and max(angles[:-1]) > 1.0, str(table)
    with feedalign.exact_gradients(standard):
        F.cross_entropy(standard(x), y).backward()
    for p, r in zip(standard.parameters(), bp_grads(net, x, y)):
        torch.testing.assert_close(p.grad, r)


# --- settings and errors --------------------------------------------------------------------

def test_rule_options_reach_the_model():
    model = feedalign.convert(feedalign.mlp("4-5-3"), "pc")
    options = parse_options("pc", "steps=7,inference_lr=0.2,fixed_prediction=1,output_precision=0.5")
    get_rule("pc").configure(model, **options)
    state = model._feedalign_cut
    assert (state.steps, state.inference_lr, state.fixed_prediction, state.output_precision) == (7, 0.2, True, 0.5)
    with pytest.raises(ValueError, match="unknown rule option"):
        parse_options("pc", "beta=1")


@pytest.mark.parametrize("settings, error, match", [
    ({"steps": -1}, ValueError, "whole number"), ({"steps": 2.5}, ValueError, "whole number"),
    ({"inference_lr": 0.0}, ValueError, "positive"), ({"output_precision": float("nan")}, ValueError, "positive"),
    ({"fixed_prediction": 2}, ValueError, "0 or 1"), ({"step_halving": 0.5}, ValueError, "0 or 1"),
    ({"steps": "3"}, TypeError, "number"),
    ({"inference_lr": True}, TypeError, "number")])
def test_configure_refuses_bad_settings(settings, error, match):
    model = feedalign.convert(feedalign.mlp("4-5-3"), "pc")
    with pytest.raises(error, match=match):
        pc.configure(model, **settings)


def test_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="not converted with rule 'pc'"):
        pc.configure(feedalign.convert(feedalign.mlp("4-5-3"), "fa"), steps=3)
    with pytest.raises(ValueError, match="Conv2d"):
        feedalign.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "pc")
    with pytest.raises(ValueError, match="before the first nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Tanh(), nn.Linear(3, 2)), "pc")
    with pytest.raises(ValueError, match="last module is not nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), "pc")
    with pytest.raises(ValueError, match="with parameters"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), "pc")
    with pytest.raises(ValueError, match="random or keeps state"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)), "pc")
    with pytest.raises(ValueError, match="random or keeps state"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2)), "pc")

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = feedalign.mlp("3-4-2")

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ValueError, match="nn.Sequential"):
        feedalign.convert(Wrapped(), "pc")


# --- the reproduction -----------------------------------------------------------------------

@pytest.mark.slow
def test_pc_mnist_quick(tmp_path, mnist):
    """`feedalign reproduce pc-mnist --quick` (about a minute and a half): both rules train, PC about as well as BP."""
    from feedalign.experiments import run_experiment
    from feedalign.experiments.verdicts import judged
    results = run_experiment("pc-mnist", quick=True, out=tmp_path, seeds=1, log=lambda *a: None)
    rows = {row["key"]: row for row in judged("pc-mnist", results)[0]}
    assert rows["pc_vs_bp"]["verdict"] == "reproduced", rows["pc_vs_bp"]
    assert set(results["search"]["chosen"]) == {"BP", "PC"}
