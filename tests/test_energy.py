"""Equilibrium propagation and contrastive Hebbian learning (feedalign.rules.energy, rules eqprop and chl):
the paper's theorem (EP's update tends to the loss gradient at the free fixed point as beta -> 0),
float64 NumPy references of both updates, the exact-gradient mode, errors, and the engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
import feedalign.data
from feedalign.rules.energy import EnergyNetwork, correlations, relax, target


def tiny(seed=0, n_free=400, n_clamped=400, phase="eqprop"):
    """4-6-5-3 in float64 with most units inside (0, 1) at the fixed point (the hard sigmoid is smooth there)."""
    torch.manual_seed(seed)
    net = EnergyNetwork([nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)], phase=phase, n_free=n_free,
                        n_clamped=n_clamped).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.uniform_(-0.1, 0.3)
            layer.weight.mul_(0.8)
    return net, torch.rand(5, 4, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64)


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def true_gradient(net, x, d, steps=800):
    """dJ/dtheta, J = mean 1/2 |y^0 - d|^2, by autograd through a long free relaxation (converged in float64)."""
    params = net._params()
    y = relax(x, net.zero_states(x), *net._split(params), steps, net.epsilon)[-1]
    return flat(torch.autograd.grad(0.5 * ((y - d) ** 2).sum(1).mean(), params))


def test_ep_update_tends_to_the_gradient_at_the_free_fixed_point():
    """Scellier & Bengio 2017, Theorem 1: -(1/beta) d/dtheta [F(s^beta) - F(s^0)] -> dJ/dtheta as beta -> 0,
    with the paper's nudge beta (y - d) and with ours (the output error at the free fixed point)."""
    net, x, d = tiny()
    free = net.settle(x, 800)
    assert all(((s > 0) & (s < 1)).any() for s in free)  # a smooth point: units inside (0, 1) in every layer
    true = true_gradient(net, x, d)
    n = len(x)
    params = [p.detach() for p in net._params()]
    paper, ours = [], []
    for beta in (1e-1, 1e-2, 1e-3, 1e-4):
        nudged = relax(x, free, *net._split(params), 800, net.epsilon, cost=(beta, d))
        estimate = flat([g for (a, c), (b, e) in zip(correlations(x, nudged), correlations(x, free))
                         for g in (-(a - b) / (beta * n), -(c - e) / (beta * n))])
        paper.append(float((estimate - true).norm() / true.norm()))
        net.beta = beta
        net.zero_grad()
        (0.5 * ((net(x) - d) ** 2).sum(1).mean()).backward()
        ours.append(float((flat([p.grad for p in net.parameters()]) - true).norm() / true.norm()))
    for errors in (paper, ours):
        assert all(b < 0.2 * a for a, b in zip(errors, errors[1:])), errors  # O(beta)
        assert errors[-1] < 1e-3, errors


def test_exact_gradients_give_the_implicit_gradient():
    net, x, d = tiny()
    with feedalign.exact_gradients(net):
        (0.5 * ((net(x) - d) ** 2).sum(1).mean()).backward()
    torch.testing.assert_close(flat([p.grad for p in net.parameters()]), true_gradient(net, x, d), rtol=1e-9, atol=1e-12)
    assert net.exact_gradient is False


# --- float64 NumPy references ------------------------------------------------------------------

def numpy_relax(x, states, weights, biases, steps, eps, nudge=None, clamp=None):
    """The paper's discretised dynamics, one layer at a time, written from the energy and ds/dt = -dF/ds alone."""
    rho = lambda v: np.clip(v, 0.0, 1.0)  # noqa: E731
    states = [s.copy() for s in states]
    for _ in range(steps):
        layers = [x] + states
        new = []
        for k in range(1, len(layers)):
            drive = (layers[0] if k == 1 else rho(layers[k - 1])) @ weights[k - 1].T + biases[k - 1]  # x enters as is
            if k + 1 < len(layers):
                drive += rho(layers[k + 1]) @ weights[k]
            grad_e = layers[k] - ((layers[k] >= 0) & (layers[k] <= 1)) * drive  # dE/ds_k
            if k == len(layers) - 1 and nudge is not None:
                grad_e = grad_e + nudge
            new.append(np.clip(layers[k] - eps * grad_e, 0.0, 1.0))
        if clamp is not None:
            new[-1] = clamp.copy()
        states = new
    return states


def numpy_update(x, second, first, scale):
    rho = lambda v: np.clip(v, 0.0, 1.0)  # noqa: E731
    a, b = [x] + second, [x] + first
    r = lambda layers, k: layers[0] if k == 0 else rho(layers[k])  # noqa: E731  (x enters as is)
    return [(scale * (rho(a[k + 1]).T @ r(a, k) - rho(b[k + 1]).T @ r(b, k)),
             scale * (rho(a[k + 1]).sum(0) - rho(b[k + 1]).sum(0))) for k in range(len(second))]


@pytest.mark.parametrize("rule", ["eqprop", "chl"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_update_matches_float64_numpy_reference(rule, loss):
    torch.manual_seed(1)
    model = feedalign.convert(feedalign.mlp("6-8-7-4").double(), rule)
    model.n_free, model.n_clamped, model.beta = 30, 5, 0.7
    x = torch.rand(9, 6, dtype=torch.float64) * 2 - 0.5  # inputs outside [0, 1] too: they enter unclipped
    labels = torch.randint(0, 4, (9,))
    d = F.one_hot(labels, 4).double()
    with target(model, labels):
        y = model(x)
    (F.mse_loss(y, d) if loss == "mse" else F.cross_entropy(y, labels)).backward()
    weights = [l.weight.detach().numpy() for l in model.layers]
    biases = [l.bias.detach().numpy() for l in model.layers]
    xn = x.numpy()
    free = numpy_relax(xn, [np.zeros((9, w)) for w in (8, 7, 4)], weights, biases, 30, 0.5)
    if rule == "eqprop":
        yn = free[-1]
        if loss == "mse":
            error = 2 * (yn - d.numpy()) / yn.size
        else:
            p = np.exp(yn - yn.max(1, keepdims=True))
            error = (p / p.sum(1, keepdims=True) - d.numpy()) / len(yn)
        second = numpy_relax(xn, free, weights, biases, 5, 0.5, nudge=0.7 * 9 * error)
        expected = numpy_update(xn, second, free, -1 / (0.7 * 9))
    else:
        second = numpy_relax(xn, free[:-1] + [d.numpy()], weights, biases, 5, 0.5, clamp=d.numpy())
        expected = numpy_update(xn, second, free, -1 / 9)
    for k, (layer, (gw, gb)) in enumerate(zip(model.layers, expected)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-9, atol=1e-12, err_msg=f"W{k + 1}")
        np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-9, atol=1e-12, err_msg=f"b{k + 1}")
    assert any(np.abs(gw).sum() > 0 for gw, _ in expected)


def test_chl_recovers_the_target_from_cross_entropy_and_refuses_other_losses():
    torch.manual_seed(2)
    model = feedalign.convert(feedalign.mlp("6-8-4").double(), "chl")
    x, labels = torch.rand(5, 6, dtype=torch.float64), torch.randint(0, 4, (5,))
    F.cross_entropy(model(x), labels).backward()
    recovered = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with target(model, labels):
        F.cross_entropy(model(x), labels).backward()
    for g, p in zip(recovered, model.parameters()):
        torch.testing.assert_close(g, p.grad)
    with pytest.raises(ValueError, match="chl could not recover a target"):
        (10 * model(x)).sum().backward()  # not a cross-entropy: no distribution comes back


def test_errors():
    with pytest.raises(ValueError, match="convolutional"):
        feedalign.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)), "eqprop")
    with pytest.raises(ValueError, match="do not chain"):
        EnergyNetwork([nn.Linear(3, 4), nn.Linear(5, 2)])
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        EnergyNetwork([])
    for kwargs, match in (({"phase": "cd"}, "phase"), ({"n_free": 0}, "n_free"), ({"n_clamped": 1.5}, "n_clamped"),
                          ({"epsilon": 1.5}, "epsilon"), ({"beta": 0.0}, "beta"), ({"beta": float("nan")}, "beta")):
        with pytest.raises(ValueError, match=match):
            EnergyNetwork([nn.Linear(3, 2)], **kwargs)
    model = feedalign.convert(feedalign.mlp("3-4-2"), "chl")
    with pytest.raises(TypeError, match="tensor"):
        with target(model, [0, 1]):
            pass
    with pytest.raises(ValueError, match="converted with 'eqprop' or 'chl'"):
        with target(feedalign.mlp("3-2"), torch.zeros(2)):
            pass
    with pytest.raises(ValueError, match="class indices"):
        with target(model, torch.zeros(5, dtype=torch.long)):
            model(torch.rand(4, 3))


def test_settings_follow_the_depth_and_the_model_keeps_the_mlp_parameters():
    net = feedalign.mlp("10-8-8-3")
    model = feedalign.convert(net, "eqprop", inplace=True)
    assert (model.n_free, model.n_clamped, model.epsilon) == (150, 6, 0.5)
    assert [id(p) for p in model.parameters()] == [id(p) for p in net.parameters()]
    assert "hard_sigmoid" in repr(model)
    with torch.inference_mode():
        out = model(torch.rand(2, 7, 10))
    assert out.shape == (2, 7, 3) and bool(((out >= 0) & (out <= 1)).all())


@pytest.mark.parametrize("rule", ["eqprop", "chl"])
def test_trains_through_the_engine_with_diagnostics(tmp_path, rule):
    """`feedalign train --rule eqprop/chl`: the engine's plain loop, alignment logged (update angles finite)."""
    from feedalign.data import DataSplits
    from feedalign.diagnostics.callback import read_alignment
    from feedalign.training import Config, train
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(4, 12, generator=g)
    labels = torch.randint(0, 4, (600,), generator=g)
    x = (centers[labels] + 0.15 * torch.randn(600, 12, generator=g)).clamp(0, 1)
    data = DataSplits(name="blobs", train_x=x[:400], train_y=labels[:400], val_x=x[400:500],
                      val_y=labels[400:500], test_x=x[500:], test_y=labels[500:], num_classes=4, input_shape=(12,))
    config = Config(dataset="blobs", architecture="12-16-4", rule=rule, loss="mse", lr=0.5, momentum=0.0,
                    batch_size=20, epochs=3, out_dir=str(tmp_path), alignment_every=10)
    result = train(config, progress="none", data=data)
    assert result.summary["outcome"] == "trained" and result.summary["test_error_at_best"] < 0.3, result.summary
    rows = read_alignment(result.run_dir)
    assert rows and all(np.isfinite(r["update_angle"]) for r in rows)


def test_alignment_update_angle_is_small_for_small_beta():
    """feedalign.alignment's update angle for an energy network: EP's update against the true gradient at the
    free fixed point (exact_gradients); near 0 for a small beta, larger for CHL's clamped phase."""
    net, x, d = tiny(n_free=300, n_clamped=300)
    net.beta = 1e-3
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean()  # noqa: E731
    table = feedalign.alignment(net, x, d, loss)
    assert all(row.update_angle < 1.0 for row in table), table
    chl, _, _ = tiny(n_free=300, n_clamped=300, phase="chl")
    with target(chl, d):  # a bare EnergyNetwork has no rule to give alignment the target
        chl_table = feedalign.alignment(chl, x, d, loss)
    assert all(np.isfinite(row.update_angle) for row in chl_table)
    assert max(r.update_angle for r in chl_table) > max(r.update_angle for r in table)


@pytest.mark.slow
def test_reproduce_eqprop_quick(tmp_path):
    """`feedalign reproduce eqprop --quick`: EP trains well above chance on MNIST (3000 examples, 3 epochs)."""
    try:
        feedalign.data.load("mnist", download=False)
    except feedalign.data.DatasetError as err:
        pytest.skip(str(err).splitlines()[0])
    from feedalign.experiments import run_experiment
    r = run_experiment("eqprop", quick=True, out=tmp_path, seeds=1, log=lambda *a: None)
    claims = {c["key"]: c for c in r["claims"]}
    assert claims["ep_1"]["reproduced"], claims["ep_1"]
    assert claims["chl_1"]["mean"] < 60, claims["chl_1"]


def test_compare_runs_eqprop_beside_bp_and_fa(tmp_path, capsys):
    """`feedalign compare --rules bp,fa,eqprop` on a tiny MNIST subset prints the table."""
    try:
        feedalign.data.load("mnist", download=False)
    except feedalign.data.DatasetError as err:
        pytest.skip(str(err).splitlines()[0])
    from feedalign.cli import main
    code = main(["compare", "--rules", "bp,fa,eqprop", "--architecture", "784-32-10", "--epochs", "1",
                 "--train-size", "300", "--test-size", "200", "--validation-size", "100", "--alignment-every", "5",
                 "--progress", "none", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "eqprop" in out and "fa" in out


def test_a_layer_with_parameters_that_would_not_take_part_is_refused():
    with pytest.raises(ValueError, match="LayerNorm has parameters"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), "chl")
