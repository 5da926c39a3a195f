"""feedalign.diagnostics.alignment on constructed cases with known answers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.diagnostics import AlignmentTable, alignment, angle
from feedalign.diagnostics.angles import mean_row_angle
from feedalign.rules import trainable_layers

from contracts import contract

RULES = feedalign.rules()
COLUMNS = ("signal_angle", "signal_angle_mean", "update_angle", "weight_angle", "norm_ratio")


def batch(n=8, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def model_for(rule, sizes="6-7-5-3", activation="tanh", **kwargs):
    torch.manual_seed(0)
    return feedalign.convert(feedalign.mlp(sizes, activation=activation).double(), rule, seed=1, **kwargs)


def test_angle_basics():
    u = torch.tensor([1.0, 0.0])
    assert angle(u, u) == (0.0, "")
    assert angle(u, torch.tensor([0.0, 2.0]))[0] == pytest.approx(90.0)
    assert angle(u, -u)[0] == pytest.approx(180.0)
    assert angle(u, torch.tensor([1.0, 1.0]))[0] == pytest.approx(45.0)
    value, why = angle(torch.zeros(2), u)
    assert math.isnan(value) and "first vector is zero" in why
    # mean of per-example angles: 0 and 90 -> 45; a zero example is left out
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    assert mean_row_angle(a, b)[0] == pytest.approx(45.0)


def test_bp_every_angle_is_zero():
    table = alignment(model_for("bp"), *batch(), F.cross_entropy)
    assert isinstance(table, AlignmentTable) and table.rule == "bp" and len(table) == 3
    for row in table:
        assert [getattr(row, c) for c in COLUMNS] == [0.0, 0.0, 0.0, 0.0, 1.0], row
        assert row.reason == ""


@pytest.mark.parametrize("rule,passes", [("bp", 1), ("fa", 2), ("dfa", 2)])
def test_a_model_that_learns_by_backprop_is_measured_in_one_pass(rule, passes):
    """bp's own update is the true gradient: one forward/backward pass gives both; a rule takes two."""
    model = model_for(rule) if rule != "bp" else feedalign.mlp("6-7-5-3", activation="tanh").double()
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append(1))  # the fused path would skip the layer as a module
    table = alignment(model, *batch(), F.cross_entropy)
    assert len(calls) == passes
    if rule == "bp":
        assert all(row.signal_angle == row.update_angle == 0.0 for row in table if not math.isnan(row.signal_angle))


@pytest.mark.parametrize("rule", RULES)
def test_output_layer_signal_and_update_are_exact(rule):
    if contract(rule).own_model:
        pytest.skip(f"{rule}: a network of the rule's own (its alignment: test_energy.py, test_ff.py)")
    if contract(rule).estimate:  # np, wp: no layer gets e itself; at many perturbations the estimate is near it
        model = model_for(rule)
        contract(rule).estimate(model)
        last = alignment(model, *batch(), F.cross_entropy)[-1]
        assert last.update_angle < 15 and (math.isnan(last.signal_angle) or last.signal_angle < 15)
        return
    if not contract(rule).signals:  # no gradient at the outputs: pepita's output update uses the modulated pass,
        # pc's the output error at the end of inference, where the hidden values have moved off the prediction
        last = alignment(model_for(rule), *batch(), F.cross_entropy)[-1]
        assert math.isnan(last.signal_angle) and "no gradient reaches" in last.reason
        assert last.update_angle < (10 if rule == "pepita" else 45)
        return
    table = alignment(model_for(rule), *batch(), F.cross_entropy)
    last = table[-1]
    assert last.signal_angle == pytest.approx(0.0, abs=1e-6)
    assert last.signal_angle_mean == pytest.approx(0.0, abs=1e-6)
    assert last.update_angle == pytest.approx(0.0, abs=1e-6)
    if rule != "bp":  # random feedback: the hidden layers are not aligned at init
        assert table[0].signal_angle > 1.0


@pytest.mark.parametrize("rule", feedalign.rules())
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_every_registered_rule_gets_a_table(rule, loss):
    """Rules added later included: generic rows, finite angles for every hidden layer (DRTP
    is given the target, so the MSE loss works for it too)."""
    model = model_for(rule)
    x, y = batch()
    loss_fn = F.cross_entropy if loss == "cross_entropy" else lambda out, t: F.mse_loss(out, F.one_hot(t, 3).double())
    table = alignment(model, x, y, loss_fn)
    assert table.rule == rule and len(table) == 3
    if contract(rule).own_model:  # no feedforward signal to compare (update angles: test_energy.py); NaNs say why
        assert all(math.isnan(row.signal_angle) and row.reason for row in table)
        return
    if contract(rule).estimate:  # np: its estimate at every layer's output (no layer gets e); wp: none, NaN says why
        assert all(math.isfinite(row.update_angle) for row in table)
        assert all(math.isfinite(row.signal_angle) or "no gradient reaches" in row.reason for row in table)
        return
    if not contract(rule).signals:  # two forward passes (pepita): update angles only; NaN signal angles say why
        assert all(math.isnan(row.signal_angle) and "no gradient reaches" in row.reason for row in table)
        assert all(math.isfinite(row.update_angle) for row in table)
        return
    assert all(math.isfinite(row.signal_angle) and math.isfinite(row.update_angle) for row in table)
    assert table[-1].signal_angle == pytest.approx(0.0, abs=1e-6)


def test_fa_with_feedback_equal_to_weights_is_backprop():
    model = model_for("fa")
    with torch.no_grad():
        for layer in trainable_layers(model):
            layer.feedback.copy_(layer.weight)
    table = alignment(model, *batch(), F.cross_entropy)
    for row in table:
        for column in ("signal_angle", "signal_angle_mean", "update_angle", "weight_angle"):
            assert getattr(row, column) == pytest.approx(0.0, abs=1e-5), (row.layer, column)
        assert row.norm_ratio == pytest.approx(1.0)


def test_dfa_with_feedback_equal_to_the_weight_path_matches_for_linear_networks():
    """With identity activations backprop sends e through W_L ... W_{k+1}: DFA with that B is backprop."""
    model = model_for("dfa", sizes="6-7-5-3", activation="linear")
    w1, w2, w3 = [layer.weight.detach() for layer in trainable_layers(model)]
    with torch.no_grad():
        model.feedback.copy_(torch.cat([w3 @ w2, w3], dim=1))
    table = alignment(model, *batch(), F.cross_entropy)
    for row in table[:2]:
        for column in ("signal_angle", "signal_angle_mean", "update_angle", "weight_angle"):
            assert getattr(row, column) == pytest.approx(0.0, abs=1e-5), (row.layer, column)
        assert row.norm_ratio == pytest.approx(1.0)
    assert math.isnan(table[2].weight_angle) and "output layer" in table[2].reason


@pytest.mark.parametrize("rule", ["dfa", "ifa"])
def test_orthogonal_feedback_gives_90_degrees(rule):
    """Linear 3-4-2 network: backprop sends e W_2 (units 0, 1), the rule e B (units 2, 3)."""
    model = model_for(rule, sizes="3-4-2", activation="linear")
    with torch.no_grad():
        trainable_layers(model)[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model.feedback.copy_(torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]]))
    first = alignment(model, *batch(d=3, classes=2), F.cross_entropy)[0]
    for column in ("signal_angle", "signal_angle_mean", "update_angle", "weight_angle"):
        assert getattr(first, column) == pytest.approx(90.0), column
    assert first.norm_ratio == pytest.approx(1.0)


def test_fa_orthogonal_feedback_gives_90_degree_weight_angle():
    model = model_for("fa")
    with torch.no_grad():
        for layer in trainable_layers(model):
            w, b = layer.weight, layer.feedback
            b.sub_((b * w).sum() / (w * w).sum() * w)  # remove B's component along W
    for row in alignment(model, *batch(), F.cross_entropy):
        assert row.weight_angle == pytest.approx(90.0)


@pytest.mark.parametrize("rule", RULES)
def test_alignment_leaves_no_trace(rule):
    model = model_for(rule, sizes="6-7-5-3")
    model.train()
    x, y = batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # momentum buffers exist
    F.cross_entropy(model(x[:3]), y[:3]).backward()  # pre-existing grads, different from the probe's
    trainable_layers(model)[1].bias.grad = None  # and one missing
    grads = [p.grad for p in model.parameters()]
    grad_values = [None if g is None else g.clone() for g in grads]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state.items()}
    rng = torch.get_rng_state()
    alignment(model, x, y, F.cross_entropy)
    for p, g, value in zip(model.parameters(), grads, grad_values):
        assert p.grad is g
        if g is not None:
            assert torch.equal(g, value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for key, s in optimizer.state.items():
        assert all(torch.equal(t, opt_state[key][n]) for n, t in s.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_dropout_sees_the_same_mask_in_both_passes_and_rng_is_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    rng = torch.get_rng_state()
    table = alignment(feedalign.convert(net, "bp"), *batch(), F.cross_entropy)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(row.signal_angle == 0.0 and row.update_angle == 0.0 for row in table)


def test_zero_signal_gives_nan_with_reason():
    model = model_for("dfa")
    with torch.no_grad():
        model.feedback.zero_()
    table = alignment(model, *batch(), F.cross_entropy)
    for row in table[:2]:
        assert math.isnan(row.signal_angle) and math.isnan(row.signal_angle_mean) and math.isnan(row.update_angle)
        assert math.isnan(row.weight_angle)
        assert "rule signal is zero" in row.reason and "rule update is zero" in row.reason
        assert "feedback matrix is zero" in row.reason
        assert row.norm_ratio == 0.0
    assert table[2].signal_angle == 0.0


def test_zero_true_gradient_gives_nan_with_reason():
    model = model_for("fa", activation="relu")
    with torch.no_grad():
        trainable_layers(model)[0].bias.fill_(-100.0)  # every unit of layer 1 dead: no gradient passes it
    table = alignment(model, *batch(), F.cross_entropy)
    assert math.isnan(table[0].signal_angle) and "zero vector" in table[0].reason


def test_table_forms():
    table = alignment(model_for("ifa", sizes="6-7-5-4-3"), *batch(), F.cross_entropy)
    dicts = table.to_dicts()
    assert [d["layer"] for d in dicts] == [1, 2, 3, 4] and dicts[0]["shape"] == [7, 6]
    assert set(COLUMNS) <= set(dicts[0])
    flat = table.flat()
    assert len(flat) == 4 * len(COLUMNS) and "signal_angle/layer2" in flat
    assert all(isinstance(v, float) for v in flat.values())
    text = str(table)
    assert "rule ifa" in text and len(text.splitlines()) == 2 + 4
    assert "IFA sends the signal up" in table[1].reason  # IFA: only B_1 is a feedback matrix
    assert not math.isnan(table[0].weight_angle)


def test_nested_model_and_float32():
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.encoder(x))

    torch.manual_seed(0)
    model = feedalign.convert(Nested(), "dfa")
    x, y = batch()
    table = alignment(model, x.float(), y, F.cross_entropy)
    assert [row.name for row in table] == ["encoder.0", "head"]
    assert math.isfinite(table[0].signal_angle)


def test_conv2d_layers_get_rows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Tanh(),
                        nn.Linear(5, 3))
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    assert all(row.signal_angle == 0.0 for row in alignment(net, x, y, F.cross_entropy))
    table = alignment(feedalign.convert(net, "fa", seed=5), x, y, F.cross_entropy)
    assert [row.shape for row in table] == [(3, 1, 3, 3), (5, 48), (3, 5)]
    assert all(math.isfinite(getattr(row, c)) for row in table for c in COLUMNS)


def test_errors():
    model = model_for("bp")
    with pytest.raises(ValueError, match="scalar"):
        alignment(model, *batch(), lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(ValueError, match="no nn.Linear"):
        alignment(nn.Sequential(nn.Tanh()), *batch(), F.cross_entropy)
    shared = nn.Linear(6, 6).double()
    with pytest.raises(ValueError, match="ran twice"):
        alignment(nn.Sequential(shared, nn.Tanh(), shared), *batch(classes=6), F.cross_entropy)


def test_a_rule_registered_later_gets_a_table(sample_rule):
    """The suite's own FA-type rule (sample_rule.py): the table needs nothing but the rule itself."""
    model = model_for(sample_rule)
    table = alignment(model, *batch(), F.cross_entropy)
    assert table.rule == sample_rule and len(table) == 3
    for row, layer, b in zip(table, trainable_layers(model), feedalign.feedback_matrices(model)):
        assert row.weight_angle == pytest.approx(angle(layer.weight, b)[0]), row.layer
    assert all(math.isfinite(row.signal_angle) and math.isfinite(row.update_angle) for row in table)
    assert table[-1].signal_angle == pytest.approx(0.0, abs=1e-6)
    assert table[0].signal_angle > 1.0


def test_dfa_conv_layout_pairs_each_b_with_its_linear_path():
    """DFA on a Conv2d model: B_k stands in for W_L ... W_{k+1}; where that path runs through a
    kernel there is no matrix to compare with (NaN and a reason), elsewhere the angle is measured."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(),
                        nn.Linear(2 * 2 * 2, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    model = feedalign.convert(net, "dfa", seed=2)
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    table = alignment(model, x, y, F.cross_entropy)
    assert math.isnan(table[0].weight_angle) and "stands in for no matrix" in table[0].reason
    w3, w4 = [layer.weight.detach() for layer in trainable_layers(model)[2:]]
    blocks = feedalign.feedback_matrices(model)
    for k, path in ((1, w4 @ w3), (2, w4)):
        assert table[k].weight_angle == pytest.approx(angle(blocks[k], path)[0])
    assert "output layer" in table[3].reason
