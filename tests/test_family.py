"""What is particular to the wider family (usf, brsf, frsf, kp, wm, drtp) and to Conv2d layers.

Every rule's gradients against the float64 reference of reference_conv.py (Conv2d and MLP),
exact_gradients on conv models, and training on conv models are contract tests, run over the
registry in test_contract.py."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.convert import convertible_rules
from feedalign.diagnostics.angles import angle
from feedalign.rules import drtp, wm
from feedalign.rules import rules as registered_rules
from feedalign.rules import trainable_layers

from contracts import conv_net, mlp_net


def test_drtp_target_context_and_recovery_errors():
    torch.manual_seed(0)
    model = feedalign.convert(mlp_net().double(), "drtp", seed=1)
    x, labels = torch.randn(5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), labels).backward()  # recovered from the error
    with drtp.target(model, labels):
        out = model(x)
    (out - 1.0).square().sum().backward()  # any loss: the hidden layers see only the target
    for layer, twin in list(zip(trainable_layers(model), trainable_layers(reference)))[:-1]:
        torch.testing.assert_close(layer.weight.grad, twin.weight.grad)
    with pytest.raises(ValueError, match="drtp.target"):
        F.cross_entropy(model(x), labels, reduction="sum").backward()
    with pytest.raises(ValueError, match="drtp.target"):
        F.mse_loss(model(x), torch.randn(5, 3, dtype=torch.float64)).backward()


def test_drtp_hidden_signal_ignores_the_output():
    """Same target, different outputs: DRTP's hidden updates depend on t only (at fixed activations)."""
    torch.manual_seed(0)
    model = feedalign.convert(mlp_net().double(), "drtp", seed=1)
    x, labels = torch.randn(5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    F.cross_entropy(model(x), labels).backward()
    first = [layer.weight.grad.clone() for layer in trainable_layers(model)]
    model.zero_grad()
    with torch.no_grad():
        trainable_layers(model)[-1].weight.mul_(3.0)
    F.cross_entropy(model(x), labels).backward()
    for a, layer in zip(first[:-1], trainable_layers(model)[:-1]):
        torch.testing.assert_close(a, layer.weight.grad)


def test_kp_feedback_gets_weight_gradient_and_aligns():
    torch.manual_seed(0)
    model = feedalign.convert(conv_net(), "kp", seed=2)
    layers = trainable_layers(model)
    x, y = torch.randn(8, 2, 9, 9), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), y).backward()
    for layer in layers:
        torch.testing.assert_close(layer.feedback.grad, layer.weight.grad, rtol=0, atol=0)
    model.zero_grad()
    differences = [(layer.feedback - layer.weight).detach().clone() for layer in layers]
    lr, decay, steps = 0.2, 1.0, 8
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=decay)

    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    # the same gradient for both: B - W only decays, by (1 - lr * wd) per step
    for layer, difference in zip(layers, differences):
        torch.testing.assert_close(layer.feedback - layer.weight, difference * (1 - lr * decay) ** steps,
                                   rtol=1e-3, atol=1e-6)


def test_kp_alignment_angle_shrinks_with_weight_decay():
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("20-30-30-5"), "kp", seed=2)
    layers = trainable_layers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    before = [angle(layer.weight, layer.feedback)[0] for layer in layers]
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = [angle(layer.weight, layer.feedback)[0] for layer in layers]
    assert min(before) > 60 and max(after) < 45, (before, after)


def test_wm_mirror_aligns_feedback():
    torch.manual_seed(0)
    model = feedalign.convert(conv_net(), "wm", seed=2)
    layers = trainable_layers(model)
    before = [angle(l.weight, l.feedback)[0] for l in layers]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 2, 9, 9), torch.randint(0, 3, (8,))
    for _ in range(5):  # learning steps between mirror phases do not touch B
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        wm.mirror(model, 6, noise_std=0.5, lr=0.2, batch_size=512, generator=torch.Generator().manual_seed(0))
    after = [angle(l.weight, l.feedback)[0] for l in layers]
    assert min(before) > 60 and max(after) < 15, (before, after)
    assert not any(n.endswith("feedback") for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="'wm'"):
        wm.mirror(feedalign.convert(mlp_net(), "fa"))


def test_brsf_redraws_every_backward_reproducibly():
    torch.manual_seed(0)
    model = feedalign.convert(mlp_net().double(), "brsf", seed=4)
    twin = copy.deepcopy(model)
    x, y = torch.randn(5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    grads = []
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append(trainable_layers(model)[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1]), "R must be redrawn"
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer))
    for m in (model, twin):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(trainable_layers(model)[0].weight.grad, trainable_layers(twin)[0].weight.grad,
                               rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["usf", "brsf", "frsf"])
def test_sign_symmetry_follows_current_weights(rule):
    model = feedalign.convert(mlp_net(), rule)
    with torch.no_grad():
        for layer in trainable_layers(model):
            layer.weight.neg_()
    for b, layer in zip(feedalign.feedback_matrices(model), trainable_layers(model)):
        assert torch.equal(torch.sign(b), torch.sign(layer.weight))


def test_groups_dilation_same_padding_against_autograd():
    """With B set to W, the feedback convolution is backprop for any stride/padding/dilation/groups."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), nn.Tanh(),
                        nn.Conv2d(6, 4, 3, padding="same", groups=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)).double()
    model = feedalign.convert(net, "fa")
    for layer in trainable_layers(model):
        layer.feedback.copy_(layer.weight.detach())
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    net(x).square().sum().backward()
    model(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for p, q in zip(net.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(ValueError, match="padding_mode"):
        feedalign.convert(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                                        nn.Linear(4, 2)), "fa")


@pytest.mark.parametrize("rule", ["dfa", "drtp"])
def test_direct_conv_feedback_lazy_and_state_dict(rule):
    net = conv_net()
    model = feedalign.convert(net, rule, seed=7)
    with pytest.raises(ValueError, match="forward pass"):
        feedalign.feedback_matrices(model)
    x = torch.randn(2, 2, 9, 9)
    model(x)
    shapes = [tuple(b.shape) for b in feedalign.feedback_matrices(model)]
    assert shapes == [(3, 3 * 5 * 5), (3, 4 * 2 * 2), (3, 45), (3, 6)]
    fresh = feedalign.convert(net, rule, seed=7)
    fresh.load_state_dict(model.state_dict())  # before any forward
    torch.testing.assert_close(fresh.feedback, model.feedback, rtol=0, atol=0)
    again = feedalign.convert(net, rule, seed=7)
    again(x)
    torch.testing.assert_close(again.feedback, model.feedback, rtol=0, atol=0)
    with pytest.raises(ValueError, match="feature map"):
        model(torch.randn(2, 2, 11, 11))


def test_ifa_refuses_conv():
    with pytest.raises(ValueError, match="ifa supports nn.Linear"):
        feedalign.convert(conv_net(), "ifa")


def test_convertible_rules_are_those_that_do_not_refuse_the_model():
    built = []

    def make():
        built.append(conv_net())
        return built[-1]

    names = convertible_rules(make)
    assert len(built) == len(registered_rules())  # a fresh model for every rule
    assert "ifa" not in names and {"bp", "fa", "dfa"} <= set(names)
    assert names == [r for r in registered_rules() if r in names]  # registry order
    for rule in set(registered_rules()) - set(names):
        with pytest.raises(ValueError):
            feedalign.convert(conv_net(), rule)


def test_conv_builders():
    assert feedalign.lenet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert feedalign.lenet5(3, 5, "relu", input_size=32)(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    net = feedalign.nokland_conv()
    assert [m.out_channels for m in net if isinstance(m, nn.Conv2d)] == [96, 128, 256]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [2048, 2048, 10]
    assert net[-5].in_features == 256 * 3 * 3
    with pytest.raises(ValueError, match="input_size"):
        feedalign.lenet5(input_size=30)
    with pytest.raises(ValueError, match="unknown activation"):
        feedalign.nokland_conv(activation="swish2")


@pytest.mark.slow
def test_reproduce_family_tiny(tmp_path):
    """`feedalign reproduce family`'s own code on a tiny slice of MNIST (Fashion-MNIST's shape, and in every
    test machine's cache): every rule trains through the engine, BP's angle to the true gradient is 0."""
    from feedalign.data import DatasetError
    from feedalign.experiments.family import Family
    try:
        feedalign.data.load("mnist", download=False)
    except DatasetError as err:
        pytest.skip(f"MNIST not in the cache: {err}")
    experiment = Family()
    config = {**experiment.config(quick=True), "size": "quick", "seeds": 1, "alignment_every": 2,
              "data": {"name": "mnist", "n_train": 128, "n_val": 200, "n_test": 200}}
    runs = experiment.execute(config, tmp_path, key="tiny", workers=2, log=lambda *a: None)
    claims, figures = experiment.summarize(config, runs, tmp_path)
    assert {c.key for c in claims} == {f"{rule}_{kind}" for rule in config["rules"] for kind in ("error", "angle")}
    assert runs[0]["bp"]["update_angle"][-1] == pytest.approx(0, abs=1e-3)
    assert all(0 < runs[0][rule]["update_angle"][-1] < 120 for rule in config["rules"] if rule != "bp")
    assert all(0 <= runs[0][rule]["test_error"] <= 100 for rule in config["rules"])
    assert (tmp_path / figures[0]).is_file()


def test_family_mnist_is_biotorchs_mnist_column():
    """family-mnist: BioTorch's recipe and rows on MNIST, each compared with the MNIST column of the registry."""
    from feedalign.experiments import experiment_config, get_experiment, papers
    experiment = get_experiment("family-mnist")
    config = experiment_config("family-mnist", quick=False)
    fashion = experiment_config("family", quick=False)
    assert config["data"]["name"] == "mnist" and fashion["data"]["name"] == "fashion-mnist"
    assert {k: v for k, v in config.items() if k != "data"} == {k: v for k, v in fashion.items() if k != "data"}
    numbers = {key: compare.number for key, compare in experiment.comparisons(config).items()}
    assert numbers == {f"{rule}_error": f"biotorch/mnist/lenet/{rule}" for rule in ("bp", "fa", "dfa", "usf", "brsf",
                                                                                   "frsf")}
    assert papers.value(numbers["bp_error"]) == 0.91  # Benchmarks.md's MNIST column, as the registry holds it
