"""Forward-forward (feedalign.rules.ff, rule ff) against its theory in float64: each hidden layer's update is
the gradient of its own goodness loss (a hand-written NumPy reference), no gradient crosses layers (hooks on
each layer's input and output), the readout gets the loss's own gradient, the goodness classifier, the
alignment diagnostics against the true gradient, the error paths, and the engine."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.diagnostics import alignment
from feedalign.rules import ff, get_rule, parse_options

SIZES = "7-6-5-4-3"  # three goodness layers, a readout to 3 classes; the label lives in the first 3 inputs


def tiny(activation="relu", seed=0, **options):
    torch.manual_seed(seed)
    model = feedalign.convert(feedalign.mlp(SIZES, activation=activation).double(), "ff", seed=seed)
    get_rule("ff").configure(model, **options)
    x = torch.rand(5, 7, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0])
    return model, x, y


# --- the float64 NumPy reference -------------------------------------------------------------------------

ACT = {"relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(a.dtype)),
       "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2)}


def np_embed(x, labels, classes):
    code = np.full((len(x), classes), 1.0 / classes) if labels is None else np.eye(classes)[labels]
    return np.concatenate([code, x[:, classes:]], axis=1)


def np_normalize(h):
    return h / np.sqrt((h ** 2).mean(1, keepdims=True) + 1e-12)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(weights, biases, x, labels, negatives, threshold, activation, error_of_logits):
    """Hidden layers: dL_k/dW_k, dL_k/db_k of L_k = mean softplus(theta - G+/w) + mean softplus(G-/w - theta), each
    layer's input held fixed; readout: e^T f, e = error_of_logits(logits) on the neutral pass. Also returns each
    layer's dL_k/da_k (2N, width) and the logits."""
    f, df = ACT[activation]
    n, classes = len(x), weights[-1].shape[0]
    u = np.concatenate([np_embed(x, labels, classes), np_embed(x, negatives, classes)])
    grads, signals = [], []
    for w, b in zip(weights[:-1], biases[:-1]):
        a = u @ w.T + b
        h = f(a)
        width = h.shape[1]
        g = (h ** 2).sum(1) / width
        dg = np.concatenate([-sigmoid(threshold - g[:n]), sigmoid(g[n:] - threshold)]) / n  # d/dg of the two means
        delta = (dg[:, None] * 2.0 * h / width) * df(a)
        grads.append((delta.T @ u, delta.sum(0)))
        signals.append(delta)
        u = np_normalize(h)
    v = np_embed(x, None, classes)
    for w, b in zip(weights[:-1], biases[:-1]):
        v = np_normalize(f(v @ w.T + b))
    logits = v @ weights[-1].T + biases[-1]
    e = error_of_logits(logits)
    grads.append((e.T @ v, e.sum(0)))
    return grads, signals, logits


def ce_error(labels):
    def error(logits):
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - np.eye(logits.shape[1])[labels]) / len(logits)
    return error


def numpy_params(model):
    layers = [*model.hidden, model.readout]
    return [l.weight.detach().numpy().copy() for l in layers], [l.bias.detach().numpy().copy() for l in layers]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("given", [True, False], ids=["target-given", "target-recovered"])
def test_each_layer_gets_the_gradient_of_its_own_goodness_loss(activation, given):
    model, x, y = tiny(activation, threshold=0.7)
    weights, biases = numpy_params(model)
    negatives = model.negative_labels(y, 0).numpy()
    assert (negatives != y.numpy()).all()
    expected, _, logits = reference(weights, biases, x.numpy(), y.numpy(), negatives, 0.7, activation,
                                    ce_error(y.numpy()))
    if given:
        with ff.target(model, y):
            out = model(x)
    else:  # recovered from the cross-entropy's error
        out = model(x)
    np.testing.assert_allclose(out.detach().numpy(), logits, rtol=1e-10, atol=1e-12)
    F.cross_entropy(out, y).backward()
    assert int(model.negative_draws) == 1
    for k, (layer, (gw, gb)) in enumerate(zip([*model.hidden, model.readout], expected)):
        assert np.abs(gw).sum() > 0, f"the reference's W{k + 1} gradient is zero: the test could not fail"
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-9, atol=1e-12, err_msg=f"W{k + 1}")
        np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-9, atol=1e-12, err_msg=f"b{k + 1}")


def test_the_hidden_update_does_not_depend_on_the_loss():
    """Any loss with the labels given: the hidden layers get their goodness gradients; the readout its own MSE one."""
    model, x, y = tiny()
    d = torch.rand(5, 3, dtype=torch.float64)
    weights, biases = numpy_params(model)
    negatives = model.negative_labels(y, 0).numpy()
    expected, _, _ = reference(weights, biases, x.numpy(), y.numpy(), negatives, model.threshold, "relu",
                               lambda logits: 2.0 * (logits - d.numpy()) / logits.size)
    with ff.target(model, y):
        F.mse_loss(model(x), d).backward()
    for k, (layer, (gw, gb)) in enumerate(zip([*model.hidden, model.readout], expected)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-9, atol=1e-12, err_msg=f"W{k + 1}")
        np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-9, atol=1e-12, err_msg=f"b{k + 1}")


def test_no_gradient_crosses_layers():
    """Hooks on every layer's input and output in the positive/negative passes: no input carries a gradient
    (nothing flows below a layer), and each output's gradient is that of its own loss alone."""
    model, x, y = tiny()
    negatives = model.negative_labels(y, 0)
    weights, biases = numpy_params(model)
    _, signals, _ = reference(weights, biases, x.numpy(), y.numpy(), negatives.numpy(), model.threshold, "relu",
                              ce_error(y.numpy()))
    seen, grads = [], {}

    def on_layer(k, u, a):
        seen.append(k)
        assert not u.requires_grad, f"layer {k + 1}'s input is part of the graph: a gradient could reach below it"
        a.register_hook(lambda g, k=k: grads.setdefault(k, g.detach().clone()))

    hidden = [p for layer in model.hidden for p in layer.parameters()]
    loss = model.local_loss(x, y, negatives, on_layer=on_layer)
    torch.autograd.grad(loss, hidden)
    assert seen == [0, 1, 2]
    for k in range(3):
        np.testing.assert_allclose(grads[k].numpy(), signals[k], rtol=1e-9, atol=1e-13, err_msg=f"dL/da_{k + 1}")
    # and the same through loss.backward(): changing a later layer's weights leaves every earlier layer's update
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.hidden[2].weight.mul_(-3.0)
        changed.readout.weight.mul_(2.0)
    for m in (model, changed):
        with ff.target(m, y):
            F.cross_entropy(m(x), y).backward()
    for k in range(2):
        torch.testing.assert_close(model.hidden[k].weight.grad, changed.hidden[k].weight.grad, rtol=0, atol=0)
    assert not torch.allclose(model.hidden[2].weight.grad, changed.hidden[2].weight.grad)


def test_negative_labels_are_wrong_drawn_per_backward_and_reproducible():
    model, x, y = tiny()
    labels = torch.randint(0, 3, (400,))
    first, second = model.negative_labels(labels, 0), model.negative_labels(labels, 1)
    assert (first != labels).all() and (second != labels).all() and not torch.equal(first, second)
    counts = torch.bincount((first - labels) % 3, minlength=3)
    assert counts[0] == 0 and min(counts[1:]) > 150  # both wrong labels, about equally often
    assert torch.equal(copy.deepcopy(model).negative_labels(labels, 0), first)
    other = feedalign.convert(feedalign.mlp(SIZES).double(), "ff", seed=1)
    assert not torch.equal(other.negative_labels(labels, 0), first)  # the convert seed chooses them
    for _ in range(2):
        F.cross_entropy(model(x), y).backward()
    assert int(model.negative_draws) == 2


def test_goodness_classifier_and_softmax_readout():
    """Eval mode: sum over the hidden layers but the first of (mean square - theta) with each label; or the readout."""
    model, x, y = tiny(threshold=0.5)
    weights, biases = numpy_params(model)
    model.eval()
    scores = model(x)
    assert not scores.requires_grad
    expected = np.zeros((5, 3))
    for label in range(3):
        u = np_embed(x.numpy(), np.full(5, label), 3)
        for k, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
            h = np.maximum(u @ w.T + b, 0.0)
            if k > 0:
                expected[:, label] += (h ** 2).mean(1) - 0.5
            u = np_normalize(h)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-10, atol=1e-12)
    get_rule("ff").configure(model, softmax=1.0)
    _, _, logits = reference(weights, biases, x.numpy(), y.numpy(), y.numpy(), 0.5, "relu", ce_error(y.numpy()))
    np.testing.assert_allclose(model(x).numpy(), logits, rtol=1e-10, atol=1e-12)
    one = feedalign.convert(feedalign.mlp("5-4-3").double(), "ff")  # one hidden layer: its goodness is the score
    one.eval()
    assert one(torch.rand(2, 5, dtype=torch.float64)).shape == (2, 3)


def test_update_angle_to_the_true_gradient_is_measurable():
    """feedalign.diagnostics.alignment: ff's update against the true gradient of the training output's loss
    (exact_gradients), which is autograd through the plain network (checked here independently)."""
    model, x, y = tiny()
    table = alignment(model, x, y, F.cross_entropy)
    assert len(table) == 4
    # the true gradient, written independently with plain torch ops on the MLP's weights
    layers = [*model.hidden, model.readout]
    params = [p.detach().clone().requires_grad_() for layer in layers for p in (layer.weight, layer.bias)]
    v = torch.cat([torch.full((5, 3), 1 / 3, dtype=torch.float64), x[:, 3:]], 1)
    for k in range(3):
        h = torch.relu(v @ params[2 * k].t() + params[2 * k + 1])
        v = h / torch.sqrt(h.square().mean(1, keepdim=True) + 1e-12)
    true = torch.autograd.grad(F.cross_entropy(v @ params[6].t() + params[7], y), params)
    with ff.target(model, y):
        F.cross_entropy(model(x), y).backward()
    for k, (row, layer) in enumerate(zip(table, layers)):
        rule = torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])
        exact = torch.cat([true[2 * k].flatten(), true[2 * k + 1].flatten()])
        by_hand = torch.rad2deg(torch.arccos((rule @ exact) / (rule.norm() * exact.norm()))).item()
        assert row.update_angle == pytest.approx(by_hand, abs=1e-6), k
        assert np.isnan(row.weight_angle) and "no signal between layers" in row.reason
    assert table[3].update_angle == pytest.approx(0.0, abs=1e-5)  # the readout's update is its true gradient
    assert all(0.0 < row.update_angle < 180.0 for row in table.rows[:3])
    with feedalign.exact_gradients(model):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    for p, t in zip([p for layer in layers for p in (layer.weight, layer.bias)], true):
        torch.testing.assert_close(p.grad, t)


# --- errors ------------------------------------------------------------------------------------------------

def test_conversion_errors():
    with pytest.raises(ValueError, match="convolutional"):
        feedalign.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "ff")
    with pytest.raises(ValueError, match="first 4 input features; the input has only 3"):
        feedalign.convert(feedalign.mlp("3-5-4"), "ff")
    with pytest.raises(ValueError, match="output nn.Linear last"):
        feedalign.convert(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Softmax(-1)), "ff")
    with pytest.raises(ValueError, match="hidden layer"):
        feedalign.convert(feedalign.mlp("4-2"), "ff")
    with pytest.raises(ValueError, match="nn.Sequential"):
        feedalign.convert(nn.ModuleDict({"a": nn.Linear(3, 2)}), "ff")
    with pytest.raises(ValueError, match="cannot train"):
        feedalign.convert(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)), "ff")


def test_target_and_option_errors():
    model, x, y = tiny()
    with pytest.raises(ValueError, match="could not recover the labels"):
        F.mse_loss(model(x), torch.rand(5, 3, dtype=torch.float64)).backward()
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        with ff.target(model, torch.tensor([0, 1, 3, 0, 0])):
            model(x)
    with pytest.raises(ValueError, match="5 entries"):
        with ff.target(model, y[:4]):
            model(x)
    with pytest.raises(TypeError, match="tensor"):
        with ff.target(model, [0, 1]):
            pass
    with pytest.raises(ValueError, match="converted with 'ff'"):
        with ff.target(feedalign.mlp("4-3-2"), y):
            pass
    rule = get_rule("ff")
    with pytest.raises(ValueError, match="threshold must be positive"):
        rule.configure(model, threshold=0.0)
    with pytest.raises(ValueError, match="softmax must be 0 or 1"):
        rule.configure(model, softmax=0.5)
    with pytest.raises(ValueError, match="unknown rule option"):
        parse_options("ff", "beta=1")


def test_engine_trains_ff_on_a_small_mnist_slice(tmp_path, mnist):
    """feedalign.train with the rule: the labels reach the forward pass through forward_context; the goodness
    classifier beats chance (10 %) on held-out data after three epochs on 2000 MNIST images (it is below chance
    after the first: the second hidden layer, the one that scores, learns later than the first)."""
    from feedalign.training import Config, train
    config = Config(dataset="mnist", architecture="784-100-100-10", activation="relu", rule="ff", optimizer="adam",
                    lr=0.003, batch_size=20, epochs=3, train_size=2000, validation_size=500, test_size=500,
                    out_dir=str(tmp_path), seed=0, threads=1, alignment_every=0, rule_options="threshold=2")
    assert train(config, progress="none").summary["best_val_accuracy"] > 0.2


def test_compare_runs_ff_beside_bp(tmp_path, capsys, mnist):
    """`feedalign compare --rules bp,ff` on a tiny MNIST subset prints one table, alignment logged for ff too."""
    from feedalign.cli import main
    code = main(["compare", "--rules", "bp,ff", "--architecture", "784-32-32-10", "--activation", "relu",
                 "--epochs", "1", "--train-size", "300", "--test-size", "200", "--validation-size", "100",
                 "--alignment-every", "5", "--progress", "none", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "bp" in out and "ff" in out
