"""Difference target propagation (feedalign.rules.dtp): one step's weight and inverse gradients against a
hand-written float64 NumPy version of Lee et al. 2015, Algorithm 1; the interface around it; its errors."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import dtp, trainable_layers

from reference import output_error




def numpy_dtp(weights, biases, inverses, x, target, loss, target_step, noise):
    """Algorithm 1 in NumPy (row vectors, tanh layers, linear output, losses averaged over the N rows).

    ``inverses[k]`` = (V, c) of layer k (0-based, 1 <= k <= M-2), ``g(h) = tanh(h V^T + c)``;
    ``noise[k - 1]`` the corruption of layer k's input. Returns (dW, db) per layer and (dV, dc) per inverse.
    """
    m, n = len(weights), len(x)
    hs = [x]
    for k, (w, b) in enumerate(zip(weights, biases)):
        a = hs[-1] @ w.T + b
        hs.append(a if k == m - 1 else np.tanh(a))
    e = output_error(hs[-1], target, loss)  # dL/dy of the mean-reduced loss
    # targets: hhat_{M-1} = h_{M-1} - eta_hat dl/dh_{M-1}, l the per-example loss (N e);
    # hhat_{k-1} = h_{k-1} + g_k(hhat_k) - g_k(h_k)
    hat = {m - 1: hs[m - 1] - target_step * (n * e) @ weights[-1]}
    for k in range(m - 2, 0, -1):
        v, c = inverses[k]
        g = lambda h: np.tanh(h @ v.T + c)
        hat[k] = hs[k] + g(hat[k + 1]) - g(hs[k + 1])
    grads = []
    for k in range(m):
        if k == m - 1:
            delta = e  # the output layer: the loss's own gradient
        else:  # L_k = mean_rows ||f_k(h_{k-1}) - hhat_k||^2, h_k = hs[k + 1]
            delta = 2.0 / n * (hs[k + 1] - hat[k + 1]) * (1.0 - hs[k + 1] ** 2)
        grads.append((delta.T @ hs[k], delta.sum(0)))
    inverse_grads = {}
    for k in range(1, m - 1):  # L_inv = mean_rows ||g_k(f_k(h_{k-1} + eps)) - (h_{k-1} + eps)||^2
        v, c = inverses[k]
        corrupted = hs[k] + noise[k - 1]
        f = np.tanh(corrupted @ weights[k].T + biases[k])
        r = np.tanh(f @ v.T + c)
        delta = 2.0 / n * (r - corrupted) * (1.0 - r ** 2)
        inverse_grads[k] = (delta.T @ f, delta.sum(0))
    return grads, inverse_grads


def documented_noise(model, shapes, sigma):
    """The corruption of draw 0 as the module docstring gives it: N(0, sigma^2) from
    ``torch.Generator().manual_seed(noise_stream(dtp_noise_seed, draw))``, float32, in order."""
    generator = torch.Generator().manual_seed(dtp.noise_stream(int(model.dtp_noise_seed), 0))
    return [(torch.randn(shape, generator=generator) * sigma).double().numpy() for shape in shapes]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_step_matches_the_float64_reference(loss):
    torch.manual_seed(3)
    model = dtp.configure(feedalign.convert(feedalign.mlp("5-7-6-4-3").double(), "dtp", seed=4),
                          target_step=0.3, noise=0.2)
    for layer in trainable_layers(model)[1:-1]:  # nonzero inverse biases, so that c_k is exercised
        nn.init.uniform_(layer.feedback_inverse_bias, -0.2, 0.2)
    x = torch.randn(9, 5, dtype=torch.float64)
    target = torch.randn(9, 3, dtype=torch.float64) if loss == "mse" else torch.randint(0, 3, (9,))
    layers = trainable_layers(model)
    weights = [l.weight.detach().numpy().copy() for l in layers]
    biases = [l.bias.detach().numpy().copy() for l in layers]
    inverses = {k: (layers[k].feedback_inverse_weight.detach().numpy().copy(),
                    layers[k].feedback_inverse_bias.detach().numpy().copy()) for k in range(1, len(layers) - 1)}
    noise = documented_noise(model, [(9, 7), (9, 6)], 0.2)
    grads, inverse_grads = numpy_dtp(weights, biases, inverses, x.numpy(), target.numpy(), loss, 0.3, noise)
    out = model(x)
    (F.mse_loss(out, target) if loss == "mse" else F.cross_entropy(out, target)).backward()
    for k, (layer, (gw, gb)) in enumerate(zip(layers, grads)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-9, atol=1e-12, err_msg=f"W{k + 1}")
        np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-9, atol=1e-12, err_msg=f"b{k + 1}")
    for k, (gv, gc) in inverse_grads.items():
        np.testing.assert_allclose(layers[k].feedback_inverse_weight.grad.numpy(), gv, rtol=1e-9, atol=1e-12,
                                   err_msg=f"V{k + 1}")
        np.testing.assert_allclose(layers[k].feedback_inverse_bias.grad.numpy(), gc, rtol=1e-9, atol=1e-12,
                                   err_msg=f"c{k + 1}")
    assert int(model.dtp_noise_draws) == 1
    # the hidden updates are not backprop's (else the reference above would prove nothing about targets)
    with feedalign.exact_gradients(model):
        model.zero_grad()
        F.cross_entropy(model(x), target).backward() if loss != "mse" else F.mse_loss(model(x), target).backward()
    assert not np.allclose(layers[0].weight.grad.numpy(), grads[0][0], rtol=1e-3)


def test_noise_is_fresh_each_forward_and_follows_the_seed():
    torch.manual_seed(0)
    net = feedalign.mlp("4-5-5-2").double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))

    def inverse_grad(model):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return trainable_layers(model)[1].feedback_inverse_weight.grad.clone()

    a, b = feedalign.convert(net, "dtp", seed=1), feedalign.convert(net, "dtp", seed=2)
    first, second = inverse_grad(a), inverse_grad(a)
    assert not torch.equal(first, second)  # a new epsilon every training forward pass
    assert not torch.equal(a.dtp_noise_seed, b.dtp_noise_seed)
    quiet = dtp.configure(feedalign.convert(net, "dtp", seed=1), noise=0.0)
    assert torch.equal(inverse_grad(quiet), inverse_grad(quiet))  # sigma 0: no corruption


def test_top_hidden_layer_gets_backprop_scaled_by_twice_the_target_step():
    """The first target is a gradient step: L_{M-1}'s gradient is 2 eta_hat times backprop's."""
    torch.manual_seed(1)
    model = feedalign.convert(feedalign.mlp("4-6-5-3").double(), "dtp")
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    top = trainable_layers(model)[1]
    with feedalign.exact_gradients(model):
        F.cross_entropy(model(x), y).backward()
    exact = top.weight.grad.clone()
    for step in (0.5, 0.1):
        model.zero_grad()
        dtp.configure(model, target_step=step)
        F.cross_entropy(model(x), y).backward()
        torch.testing.assert_close(top.weight.grad, 2 * step * exact)


def test_a_perfect_inverse_gives_targets_the_layers_reach():
    """Linear layers with g = f^{-1} exactly (square invertible W, V = W^{-1}, c = -W^{-1} b): then
    f_k(hhat_{k-1}) = hhat_k, the property DTP's difference correction is built on."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 2)).double()
    model = feedalign.convert(net, "dtp")
    middle = trainable_layers(model)[1]
    with torch.no_grad():
        middle.weight.copy_(torch.eye(4, dtype=torch.float64) * 2 + 0.3 * torch.randn(4, 4, dtype=torch.float64))
        inverse = torch.linalg.inv(middle.weight)
        middle.feedback_inverse_weight.copy_(inverse)
        middle.feedback_inverse_bias.copy_(-inverse @ middle.bias)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    hidden = []
    handles = [layer.register_forward_hook(lambda m, a, out: hidden.append(out)) for layer in trainable_layers(model)[:2]]
    out = model(x)
    for h in handles:
        h.remove()
    for h in hidden:
        h.retain_grad()
    F.cross_entropy(out, y).backward()
    n = len(x)
    # signal = (2/N)(h - hhat): recover the targets and check W2 hhat_1 + b2 = hhat_2
    hat1, hat2 = (h.detach() - n / 2 * h.grad for h in hidden)
    torch.testing.assert_close(hat1 @ middle.weight.detach().T + middle.bias.detach(), hat2)


def test_parameter_groups_give_the_inverses_their_own_rate():
    model = feedalign.convert(feedalign.mlp("4-5-5-2"), "dtp")
    groups = dtp.parameter_groups(model, lr=0.1, inverse_lr=0.01)
    assert [g["lr"] for g in groups] == [0.1, 0.01]
    inverse = set(map(id, dtp.inverse_parameters(model)))
    assert {id(p) for p in groups[1]["params"]} == inverse and len(inverse) == 2
    assert {id(p) for p in groups[0]["params"]} | inverse == {id(p) for p in model.parameters()}
    optimizer = torch.optim.SGD(groups)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(torch.randn(3, 4)), torch.tensor([0, 1, 1])).backward()
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_one_hidden_layer_has_no_inverse_and_still_learns_by_targets():
    model = feedalign.convert(feedalign.mlp("3-4-2"), "dtp")
    assert feedalign.feedback_matrices(model) == [] and dtp.inverse_parameters(model) == []
    F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "parameter-free"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(1)), "last module"),
    (lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), "before the first"),
    (lambda: nn.ModuleDict({"a": nn.Linear(3, 4)}), "nn.Sequential"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "nn.Linear layers only"),
    (lambda: feedalign.mlp("3-2"), "hidden layer"),
])
def test_models_it_cannot_train_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        feedalign.convert(make(), "dtp")


def test_an_output_that_is_not_the_last_layer_s_is_refused_at_forward():
    net = feedalign.mlp("3-4-4-2")
    net.register_forward_hook(lambda module, args, output: output * 2)  # runs before convert's own hook
    model = feedalign.convert(net, "dtp", inplace=True)
    with pytest.raises(ValueError, match="last nn.Linear's output"):
        model(torch.randn(2, 3))
    with torch.no_grad():
        model(torch.randn(2, 3))  # evaluation is untouched


def test_settings_errors():
    model = feedalign.convert(feedalign.mlp("3-4-4-2"), "dtp")
    for kwargs, error in [({"target_step": 0}, ValueError), ({"target_step": float("nan")}, ValueError),
                          ({"noise": -1.0}, ValueError), ({"noise": "0.1"}, TypeError), ({"target_step": True}, TypeError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            dtp.configure(model, **kwargs)
    for kwargs, error in [({"lr": -1, "inverse_lr": 0.1}, ValueError), ({"lr": 0.1, "inverse_lr": "a"}, TypeError),
                          ({"lr": 0.1, "inverse_lr": float("inf")}, ValueError)]:
        with pytest.raises(error, match="lr"):
            dtp.parameter_groups(model, **kwargs)
    for other in (feedalign.mlp("3-4-2"), feedalign.convert(feedalign.mlp("3-4-2"), "dfa")):
        with pytest.raises(ValueError, match="not converted with rule 'dtp'"):
            dtp.configure(other, noise=0.1)
        with pytest.raises(ValueError, match="not converted with rule 'dtp'"):
            dtp.parameter_groups(other, 0.1, 0.1)


def test_settings_travel_with_copies():
    model = dtp.configure(feedalign.convert(feedalign.mlp("3-4-4-2"), "dtp"), target_step=0.2, noise=0.05)
    twin = copy.deepcopy(model)
    assert dtp.configure(twin)._feedalign_cut.target_step == 0.2 and twin._feedalign_cut.noise == 0.05


def test_train_cli_logs_dtp_alignment_and_it_improves(tmp_path, capsys):
    """`feedalign train --rule dtp --alignment-every N` on MNIST-1D: the engine runs dtp without knowing
    it, logs the angle of each DTP update to the backprop gradient, and as the inverses learn the first
    layer's update angle falls well below the 90 degrees of random inverses."""
    from feedalign.cli import main
    from feedalign.diagnostics.callback import read_alignment

    argv = ["train", "--rule", "dtp", "--dataset", "mnist1d", "--architecture", "40-64-64-64-10", "--epochs", "3",
            "--lr", "0.05", "--batch-size", "64", "--alignment-every", "50", "--threads", "1", "--quiet",
            "--out-dir", str(tmp_path), "--name", "dtp"]
    assert main(argv) == 0
    capsys.readouterr()
    rows = read_alignment(tmp_path / "dtp")
    assert {r["rule"] for r in rows} == {"dtp"}
    first_layer = [r["update_angle"] for r in rows if r["layer"] == 1]
    assert len(first_layer) == 4 and all(math.isfinite(a) for a in first_layer)
    assert first_layer[-1] < 75.0 and first_layer[-1] < first_layer[0] - 10.0, [round(a, 1) for a in first_layer]
    top = [r for r in rows if r["layer"] == 3]  # eta_hat = 0.5: the top hidden layer's update is backprop's
    assert all(r["update_angle"] < 1e-3 for r in top)
    summary = json.loads((tmp_path / "dtp" / "summary.json").read_text())
    assert summary["final_test_error"] < 0.8, summary  # 10 classes: chance is 0.9 (3 epochs: about 0.72)


# -- rule options through the engine (Config.rule_options) -------------------------------------------------------

def _tiny_config(tmp_path, **fields):
    from feedalign.training.config import Config
    values = dict(rule="dtp", dataset="mnist1d", architecture="40-16-16-16-10", epochs=1, batch_size=32,
                  train_size=256, validation_size=128, test_size=128, alignment_every=0, threads=1,
                  out_dir=str(tmp_path))
    return Config(**{**values, **fields})


def test_rule_options_reach_the_model_and_the_optimizer(tmp_path):
    from feedalign.training.build import build_model, make_optimizer
    config = _tiny_config(tmp_path, lr=0.02, rule_options="target_step=0.003, noise=0.36,inverse_lr=0.005")
    model = build_model(config, torch.device("cpu"))
    cut = model._feedalign_cut
    assert (cut.target_step, cut.noise) == (0.003, 0.36)
    groups = make_optimizer(config, model).param_groups
    inverses = {id(p) for p in dtp.inverse_parameters(model)}
    assert [g["lr"] for g in groups] == [0.02, 0.005]
    assert {id(p) for p in groups[1]["params"]} == inverses and not inverses & {id(p) for p in groups[0]["params"]}
    # without inverse_lr: one group at lr, inverses included
    model = build_model(_tiny_config(tmp_path, lr=0.02), torch.device("cpu"))
    (group,) = make_optimizer(_tiny_config(tmp_path, lr=0.02), model).param_groups
    assert len(group["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("rule, options, message", [
    ("dtp", "noise", "is not name=value"),
    ("dtp", "sigma=0.1", "unknown rule option 'sigma'; rule 'dtp' takes inverse_lr, noise, target_step"),
    ("dtp", "noise=a lot", "must be a number"),
    ("dtp", "noise=nan", "finite"),
    ("dtp", "noise=0.1,noise=0.2", "given twice"),
    ("fa", "noise=0.1", "rule 'fa' takes no options"),
])
def test_bad_rule_options_are_one_line_config_errors(tmp_path, rule, options, message):
    from feedalign.errors import ConfigError
    with pytest.raises(ConfigError, match=message) as info:
        _tiny_config(tmp_path, rule=rule, rule_options=options)
    assert "\n" not in str(info.value) and str(info.value).startswith("rule_options: ")


@pytest.mark.parametrize("options, message", [("target_step=0", "target_step must be a finite positive"),
                                              ("noise=-1", "noise must be a finite non-negative"),
                                              ("inverse_lr=-0.1", "inverse_lr must be a finite non-negative")])
def test_rule_options_out_of_range_stop_the_cli_with_exit_2(tmp_path, capsys, options, message):
    from feedalign.cli import main
    code = main(["train", "--rule", "dtp", "--dataset", "mnist1d", "--architecture", "40-16-16-10",
                 "--train-size", "64", "--epochs", "1", "--rule-options", options, "--quiet",
                 "--out-dir", str(tmp_path), "--name", "bad"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_orthogonal_init_of_forward_weights_and_inverses(tmp_path):
    from feedalign.training.build import build_model
    model = build_model(_tiny_config(tmp_path, init="orthogonal", feedback_init="orthogonal"), torch.device("cpu"))
    for layer in trainable_layers(model):
        w = layer.weight.detach().double()
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w  # orthonormal rows or columns, whichever are fewer
        assert torch.allclose(gram, torch.eye(small, dtype=torch.float64), atol=1e-5)
        assert torch.count_nonzero(layer.bias) == 0
    for v in dtp.inverse_parameters(model)[::2]:
        assert torch.allclose(v.detach().double() @ v.detach().double().T, torch.eye(v.shape[0], dtype=torch.float64),
                              atol=1e-5)
