"""Node perturbation (np) and weight perturbation (wp): one estimate against a hand-written float64 NumPy
version given the same noise; the estimator's mean is the true gradient and its variance falls as 1/K; the
loss change each measures; the alignment diagnostics; settings and errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.diagnostics import alignment
from feedalign.rules import _perturbation, trainable_layers
from feedalign.rules._perturbation import configure, noise_stream, target

import reference

RULES = ("np", "wp")


# --- the NumPy reference ------------------------------------------------------------------------------------------

def numpy_losses(y, labels, loss):
    """Per-example terms of the mean-reduced loss (they sum to it): cross-entropy or MSE."""
    n = len(y)
    if loss == "mse":
        return ((y - labels) ** 2).sum(1) / y.size
    z = y - y.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(n), labels] / n


def numpy_forward(weights, biases, x, node_noise=None):
    """Output of the tanh MLP, with ``node_noise[l]`` added to layer l's pre-activation."""
    h = x
    for l, (w, b) in enumerate(zip(weights, biases)):
        a = h @ w.T + b + (0.0 if node_noise is None else node_noise[l])
        h = a if l == len(weights) - 1 else np.tanh(a)
    return h


def numpy_estimate(rule, weights, biases, x, labels, loss, samples, sigma, antithetic, exact):
    """One estimate of (dW, db) per layer from the perturbations ``samples`` (each: one noise array per perturbed
    tensor, np: per layer's pre-activations (N, width); wp: W1, b1, W2, b2, ...). ``exact``: the loss change is
    the loss's; else ``e . (y~ - y)``, e the mean-reduced loss's output error."""
    y = numpy_forward(weights, biases, x)
    clean = numpy_losses(y, labels, loss)
    e = reference.output_error(y, labels, loss)

    def change(y_tilde):
        return numpy_losses(y_tilde, labels, loss) - clean if exact else (e * (y_tilde - y)).sum(1)

    def perturbed(xi):
        if rule == "np":
            return numpy_forward(weights, biases, x, xi)
        return numpy_forward([w + xi[2 * l] for l, w in enumerate(weights)],
                             [b + xi[2 * l + 1] for l, b in enumerate(biases)], x)

    totals = [np.zeros_like(t) for t in samples[0]]
    for xi in samples:
        dl = change(perturbed(xi))
        if antithetic:
            dl = (dl - change(perturbed([-t for t in xi]))) / 2
        for total, t in zip(totals, xi):
            total += dl[:, None] * t if rule == "np" else dl.sum() * t
    totals = [t / (len(samples) * sigma ** 2) for t in totals]
    if rule == "wp":
        return totals[0::2], totals[1::2]
    hs = [x]  # the clean pass's layer inputs
    for l, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
        hs.append(np.tanh(hs[-1] @ w.T + b))
    return [d.T @ h for d, h in zip(totals, hs)], [d.sum(0) for d in totals]


def drawn_noise(model, draw, shapes, sigma, samples, antithetic):
    """The noise the rule draws (its documented stream): per sample, one N(0, sigma^2) array per shape, float32 on
    the CPU, in the order of the perturbed tensors."""
    generator = torch.Generator().manual_seed(noise_stream(int(model.perturbation_seed), draw))
    return [[(torch.randn(shape, generator=generator) * sigma).double().numpy() for shape in shapes]
            for _ in range(samples)]


def setup(rule, seed=0, sizes="4-5-3-3", n=6):
    torch.manual_seed(seed)
    model = feedalign.convert(feedalign.mlp(sizes, activation="tanh").double(), rule, seed=seed + 1)
    x = torch.randn(n, int(sizes.split("-")[0]), dtype=torch.float64)
    labels = torch.randint(0, int(sizes.split("-")[-1]), (n,))
    return model, x, labels


def true_gradient(model, x, labels, loss=F.cross_entropy) -> torch.Tensor:
    model = copy.deepcopy(model)
    with feedalign.exact_gradients(model):
        loss(model(x), labels).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def estimate_once(model, x, labels, loss=F.cross_entropy) -> torch.Tensor:
    """One backward pass of the rule (one draw), the target given; the flat update."""
    model.zero_grad()
    with target(model, labels):
        out = model(x)
    loss(out, labels).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", [("cross_entropy", True, False), ("cross_entropy", True, True),
                                  ("mse", True, False), ("cross_entropy", False, False), ("mse", False, True)],
                         ids=["ce-exact", "ce-exact-antithetic", "mse-exact", "ce-linearised", "mse-linearised-anti"])
def test_one_estimate_matches_numpy_reference(rule, case):
    loss, exact, antithetic = case
    model, x, labels = setup(rule)
    targets = torch.randn(len(x), 3, dtype=torch.float64) if loss == "mse" else labels
    sigma, samples = 0.05, 3
    configure(model, sigma=sigma, samples=samples, antithetic=antithetic)
    layers = trainable_layers(model)
    weights = [l.weight.detach().numpy().copy() for l in layers]
    biases = [l.bias.detach().numpy().copy() for l in layers]
    shapes = ([(len(x), l.out_features) for l in layers] if rule == "np"
              else [p.shape for p in model.parameters()])
    noise = drawn_noise(model, 0, shapes, sigma, samples, antithetic)
    criterion = F.mse_loss if loss == "mse" else F.cross_entropy
    if exact:
        with target(model, targets):
            out = model(x)
    else:
        out = model(x)
    criterion(out, targets).backward()
    grad_w, grad_b = numpy_estimate(rule, weights, biases, x.numpy(), targets.numpy(), loss, noise, sigma,
                                    antithetic, exact)
    for l, layer in enumerate(layers):
        np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w[l], rtol=1e-7, atol=1e-12, err_msg=f"W{l + 1}")
        np.testing.assert_allclose(layer.bias.grad.numpy(), grad_b[l], rtol=1e-7, atol=1e-12, err_msg=f"b{l + 1}")
    assert int(model.perturbation_draws) == 1


@pytest.mark.parametrize("rule", RULES)
def test_the_reference_fails_with_other_noise(rule):
    """The comparison above can fail: the next draw's noise gives another estimate."""
    model, x, labels = setup(rule)
    configure(model, sigma=0.05)
    layers = trainable_layers(model)
    shapes = [(len(x), l.out_features) for l in layers] if rule == "np" else [p.shape for p in model.parameters()]
    weights = [l.weight.detach().numpy().copy() for l in layers]
    biases = [l.bias.detach().numpy().copy() for l in layers]
    wrong = drawn_noise(model, 1, shapes, 0.05, 1, False)
    estimate_once(model, x, labels)
    grad_w, _ = numpy_estimate(rule, weights, biases, x.numpy(), labels.numpy(), "cross_entropy", wrong, 0.05,
                               False, True)
    assert not np.allclose(layers[0].weight.grad.numpy(), grad_w[0], rtol=1e-3)


# --- theory: the mean and the 1/K variance ------------------------------------------------------------------------

def estimates(model, x, labels, count):
    return torch.stack([estimate_once(model, x, labels) for _ in range(count)])


@pytest.mark.parametrize("rule", RULES)
def test_mean_is_the_true_gradient(rule):
    """Averaged over many perturbations at small sigma, the estimate is the true gradient: every entry within 5
    standard errors of it, and their squared sum a chi-square with as many degrees of freedom as entries (below
    twice that); the standard errors are small beside the gradient, so a wrong scale or sign could not pass."""
    model, x, labels = setup(rule, sizes="3-4-2", n=4)
    truth = true_gradient(model, x, labels)
    configure(model, sigma=1e-3, samples=250, antithetic=True)
    draws = estimates(model, x, labels, 20)  # 5000 perturbations in all
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert float(se.norm() / truth.norm()) < 0.1
    z = (mean - truth) / se
    assert (z.abs() <= 5).all(), z
    assert float(z.square().sum()) < 2 * len(z)
    assert float(F.cosine_similarity(mean, truth, 0)) > 0.99


@pytest.mark.parametrize("rule", RULES)
def test_variance_falls_as_one_over_k(rule):
    """The total variance of the estimate (over independent draws) at K = 1, 4, 16 perturbations scales as 1/K."""
    model, x, labels = setup(rule, sizes="3-4-2", n=4)
    variances = []
    for k in (1, 4, 16):
        configure(model, sigma=1e-3, samples=k)
        variances.append(float(estimates(model, x, labels, 200).var(0).sum()))
    ratios = [variances[0] / v for v in variances[1:]]
    assert 4 / 1.4 < ratios[0] < 4 * 1.4, ratios
    assert 16 / 1.6 < ratios[1] < 16 * 1.6, ratios


@pytest.mark.parametrize("rule", RULES)
def test_centred_differences_lower_the_variance_at_large_sigma(rule):
    """With sigma large enough for the loss's curvature to matter, forward differences carry the quadratic
    term's noise; the centred difference cancels it."""
    model, x, labels = setup(rule, sizes="3-4-2", n=4)
    spread = {}
    for antithetic in (False, True):  # np's per-example curvature is smaller beside its gradient: a larger sigma
        configure(model, sigma=2.0 if rule == "np" else 0.5, samples=1, antithetic=antithetic)
        spread[antithetic] = float(estimates(model, x, labels, 300).var(0).sum())
    assert spread[True] < 0.8 * spread[False], spread


def test_node_perturbation_is_less_noisy_than_weight_perturbation_on_a_wide_layer():
    """Werfel, Xie & Seung's point: the variance grows with the dimension perturbed; a 20-40-2 net on 4 examples
    has 4 x 42 units against 922 weights, so one np draw is closer to the gradient than one wp draw."""
    angles = {}
    for rule in RULES:
        model, x, labels = setup(rule, sizes="20-40-2", n=4)
        truth = true_gradient(model, x, labels)
        configure(model, sigma=1e-3)
        draws = estimates(model, x, labels, 50)
        cos = F.cosine_similarity(draws, truth[None], dim=1)
        angles[rule] = float(torch.rad2deg(torch.arccos(cos)).mean())
    assert angles["np"] < angles["wp"] - 5, angles


# --- the loss change ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, criterion, given", [
    ("cross_entropy (mean)", lambda y, t: F.cross_entropy(y, t), "labels"),
    ("cross_entropy (sum)", lambda y, t: F.cross_entropy(y, t, reduction="sum"), "labels"),
    ("mse (mean)", lambda y, t: F.mse_loss(y, F.one_hot(t, 3).double()), "labels"),
    ("bce (mean)", lambda y, t: F.binary_cross_entropy_with_logits(y, F.one_hot(t, 3).double()), "labels"),
    ("mse (sum)", lambda y, t: F.mse_loss(y, t, reduction="sum"), "values"),
    ("linearised", lambda y, t: y.sum() + (y ** 3).mean(), "labels"),
])
def test_loss_change_recognises_the_loss(name, criterion, given):
    torch.manual_seed(0)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (5,)) if given == "labels" else torch.randn(5, 3, dtype=torch.float64)
    criterion(y, t).backward()
    how, change = _perturbation.loss_change(y.detach(), y.grad, t)
    assert how == name
    moved = y.detach() + 0.1 * torch.randn(5, 3, dtype=torch.float64)
    if name != "linearised":  # the per-example changes add up to the loss's change
        torch.testing.assert_close(change(moved).sum(), criterion(moved, t) - criterion(y.detach(), t))
    else:
        torch.testing.assert_close(change(moved), (y.grad * (moved - y.detach())).sum(1))


def test_without_a_target_the_loss_is_linearised():
    how, _ = _perturbation.loss_change(torch.zeros(2, 3), torch.ones(2, 3), None)
    assert how == "linearised"


# --- diagnostics --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_alignment_measures_the_update_angle(rule):
    """feedalign.diagnostics.alignment gives the angle of the estimate to the true gradient: near 90 degrees for
    one perturbation of a wide layer's weights, small with many; np also has signal angles (its delta_hat at
    each layer's output), wp none; the diagnostic leaves the noise counter where it was."""
    model, x, labels = setup(rule, sizes="20-30-3", n=8)
    configure(model, sigma=1e-3, samples=1)
    one = alignment(model, x, labels, F.cross_entropy)
    assert int(model.perturbation_draws) == 0
    configure(model, sigma=1e-3, samples=3000, antithetic=True)
    many = alignment(model, x, labels, F.cross_entropy)
    # wp perturbs 723 weights at once against np's 8 x 33 units: its estimate stays further off at the same count
    assert many.rows[0].update_angle < (20 if rule == "np" else 45) and many.rows[1].update_angle < 15
    assert one.rows[0].update_angle > many.rows[0].update_angle + 30
    if rule == "np":
        assert all(np.isfinite(row.signal_angle) for row in many.rows)
        assert many.rows[0].signal_angle < 20
    else:
        assert all(np.isnan(row.signal_angle) for row in many.rows)
    assert all(np.isnan(row.weight_angle) and "no error back" in row.reason for row in many.rows)


# --- interface, settings, errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_seeded_and_deterministic(rule):
    a, x, labels = setup(rule)
    b = feedalign.convert(feedalign.mlp("4-5-3-3", activation="tanh").double(), rule, seed=1)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("perturbation")}, strict=False)
    c = copy.deepcopy(a)
    first, twin = estimate_once(a, x, labels), estimate_once(c, x, labels)
    torch.testing.assert_close(first, twin, rtol=0, atol=0)  # same seed and counter: same noise
    assert not torch.equal(estimate_once(a, x, labels), first)  # the next draw differs
    other = feedalign.convert(feedalign.mlp("4-5-3-3", activation="tanh").double(), rule, seed=7)
    other.load_state_dict({k: v for k, v in c.state_dict().items() if not k.startswith("perturbation")},
                          strict=False)
    assert not torch.equal(estimate_once(other, x, labels), first)  # another convert seed: other noise


@pytest.mark.parametrize("rule", RULES)
def test_options_through_the_registry(rule):
    from feedalign.rules import get_rule, parse_options
    options = parse_options(rule, "sigma=0.01,samples=3,antithetic=1")
    model, _, _ = setup(rule)
    get_rule(rule).configure(model, **options)
    state = model._feedalign_cut
    assert (state.sigma, state.samples, state.antithetic) == (0.01, 3, True)


@pytest.mark.parametrize("rule", RULES)
def test_bad_settings_and_models_are_refused(rule):
    model, _, _ = setup(rule)
    for kwargs, error in [({"sigma": 0.0}, ValueError), ({"sigma": float("nan")}, ValueError),
                          ({"sigma": "1"}, TypeError), ({"samples": 0}, ValueError), ({"samples": 2.5}, ValueError),
                          ({"samples": True}, TypeError), ({"antithetic": 2}, ValueError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            configure(model, **kwargs)
    with pytest.raises(ValueError, match="perturbation rule"):
        configure(feedalign.mlp("3-2"), sigma=0.1)
    with pytest.raises(TypeError, match="tensor"):
        with target(model, [0, 1]):
            pass
    with pytest.raises(ValueError, match="Dropout"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)), rule)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), rule)
    with pytest.raises(ValueError, match="LayerNorm"):
        feedalign.convert(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), rule)


def test_np_refuses_a_layer_run_twice():
    layer = nn.Linear(3, 3)
    model = feedalign.convert(nn.Sequential(layer, nn.Tanh(), layer), "np")
    with pytest.raises(ValueError, match="ran twice"):
        model(torch.randn(2, 3))


@pytest.mark.parametrize("rule", RULES)
def test_trains_through_the_engine(rule, tmp_path):
    """The training engine gives the rule the target (so the exact loss change) and its options, and it learns:
    blobs in 12 dimensions, 4 classes (chance 75 % error)."""
    from feedalign.data import DataSplits
    from feedalign.training import Config, train
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(4, 12, generator=g)
    labels = torch.randint(0, 4, (600,), generator=g)
    x = (centers[labels] + 0.15 * torch.randn(600, 12, generator=g)).clamp(0, 1)
    data = DataSplits(name="blobs", train_x=x[:400], train_y=labels[:400], val_x=x[400:500],
                      val_y=labels[400:500], test_x=x[500:], test_y=labels[500:], num_classes=4, input_shape=(12,))
    config = Config(dataset="blobs", architecture="12-16-4", rule=rule, lr=0.1, momentum=0.9, batch_size=20,
                    epochs=4, out_dir=str(tmp_path), rule_options="sigma=0.01,samples=4,antithetic=1")
    result = train(config, progress="none", data=data)
    state = result.model._feedalign_cut
    assert (state.sigma, state.samples, state.antithetic) == (0.01, 4, True)
    assert result.summary["outcome"] == "trained" and result.summary["test_error_at_best"] < 0.3, result.summary
