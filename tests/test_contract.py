"""The contract every learning rule keeps, run over ``feedalign.rules()`` and the suite's own
rule (sample_rule.py). How a rule's contract differs is data in contracts.py.

``rule`` and ``net`` ("mlp", "conv") are parametrised by ``pytest_generate_tests`` below:
every rule on an MLP, and on a conv net where its contract says it converts Conv2d.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import register, trainable_layers
from feedalign.rules.fused import uses_fused_path

import reference
import reference_conv
import sample_rule
from contracts import contract, conv_net, forward, mlp_net, train_steps

RULES = [*feedalign.rules(), sample_rule.NAME]


# Contract failures found and left to the rules' owners: (test, rule, net or None) -> what fails.
# strict: the test reports when a fix lands, and the entry must then go.
KNOWN_FAILURES: dict = {}


def pytest_generate_tests(metafunc):
    if "rule" not in metafunc.fixturenames:
        return
    name = metafunc.function.__name__
    if "net" in metafunc.fixturenames:
        names, cases = "rule, net", [(r, n) for r in RULES for n in ("mlp", "conv") if n == "mlp" or contract(r).conv]
    else:
        names, cases = "rule", [(r, None) for r in RULES]

    def param(rule, net):
        values = (rule,) if net is None else (rule, net)
        reason = KNOWN_FAILURES.get((name, rule, net))
        return pytest.param(*values, marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [])
    metafunc.parametrize(names, [param(r, n) for r, n in cases])


@pytest.fixture(autouse=True)
def _register_sample_rule(request):
    if "rule" in request.fixturenames and request.getfixturevalue("rule") == sample_rule.NAME:
        request.getfixturevalue("sample_rule")


def build(net, *, bias=True, small=False):
    """A fresh network and a batch for it: ``(model, x, y)``."""
    if net == "mlp":
        model = feedalign.mlp("5-6-4-3") if small else mlp_net(bias)
        return model, torch.randn(6, 5), torch.randint(0, 3, (6,))
    return conv_net(bias), torch.randn(4, 2, 9, 9), torch.randint(0, 3, (4,))


def ready(model, x):
    """One forward pass without grad: sizes the lazily drawn feedback of Conv2d models (dfa, drtp)."""
    with torch.no_grad():
        model(x)
    return model


# --- the registry ---------------------------------------------------------------------------

def test_sample_rule_is_registered_only_inside_its_fixture(request):
    assert sample_rule.NAME not in feedalign.rules()
    with pytest.raises(ValueError, match="unknown rule"):
        feedalign.convert(feedalign.mlp("3-4-2"), sample_rule.NAME)
    request.getfixturevalue("sample_rule")
    assert sample_rule.NAME in feedalign.rules()
    assert feedalign.rule_of(feedalign.convert(feedalign.mlp("3-4-2"), sample_rule.NAME)) == sample_rule.NAME
    with pytest.raises(ValueError, match="already registered"):
        register(sample_rule.SparseFeedbackAlignment)


def test_every_rule_is_in_the_contract_run():
    """The contract tests are parametrised from the registry: a new rule is in them by registering it."""
    assert set(feedalign.rules()) <= set(RULES) and {"bp", "fa", "dfa", "ifa"} <= set(RULES)


# --- conversion -----------------------------------------------------------------------------

def test_conversion_keeps_forward_and_original(rule, net):
    net_, x, y = build(net, small=True)
    before = copy.deepcopy(net_.state_dict())
    model = feedalign.convert(net_, rule)
    if not contract(rule).own_model:  # an energy network settles: its forward is its own (test_energy.py)
        torch.testing.assert_close(model(x), net_(x))
    forward(model, rule, x, y).sum().backward()
    assert all(p.grad is None for p in net_.parameters()), "convert must copy unless inplace=True"
    for key, value in before.items():
        torch.testing.assert_close(net_.state_dict()[key], value)
    assert feedalign.rule_of(model) == rule


def test_inplace_conversion_keeps_the_parameters(rule, net):
    net_, x, y = build(net)
    params = list(net_.parameters())
    expected = net_(x)
    model = feedalign.convert(net_, rule, inplace=True)
    kept = {id(p) for p in model.parameters()}
    assert all(id(p) in kept for p in params), "an optimizer built before convert must keep working"
    if not contract(rule).own_model:
        torch.testing.assert_close(model(x), expected)


def test_conversion_errors(rule):
    with pytest.raises(ValueError, match="already converted"):
        feedalign.convert(feedalign.convert(feedalign.mlp("3-4-2"), rule), rule)
    for other in feedalign.rules():
        with pytest.raises(ValueError, match="already converted"):
            feedalign.convert(feedalign.convert(feedalign.mlp("3-4-2"), rule), other)
    with pytest.raises(ValueError, match="no nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Tanh()), rule)
    with pytest.raises(ValueError, match="feedback_init"):
        feedalign.convert(feedalign.mlp("3-4-2"), rule, feedback_init="normal")
    if not contract(rule).conv:
        with pytest.raises(ValueError):
            feedalign.convert(conv_net(), rule)


def test_a_single_layer(rule):
    """Rules that need a hidden layer refuse one nn.Linear; the others convert it and learn."""
    net = feedalign.mlp("3-2")
    if contract(rule).needs_hidden:
        with pytest.raises(ValueError, match="hidden layer"):
            feedalign.convert(net, rule)
        return
    model = feedalign.convert(net, rule)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    if contract(rule).own_model:  # one symmetric connection; its update is tested in test_energy.py
        forward(model, rule, x, y).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        return
    torch.testing.assert_close(model(x), net(x))
    if contract(rule).estimate:  # np, wp: the estimate, at many perturbations, near the output layer's gradient
        contract(rule).estimate(model)
    F.cross_entropy(model(x), y).backward()
    net_copy = copy.deepcopy(net)
    F.cross_entropy(net_copy(x), y).backward()
    # the output layer's gradient is exact
    assert_gradients(rule, [q.grad for q in model.parameters()], [p.grad for p in net_copy.parameters()],
                     [name for name, _ in model.named_parameters()])


def assert_gradients(rule, grads, expected, names):
    """Each of ``grads`` is the ``expected`` one; for a rule whose update is an estimate (contract ``estimate``),
    all of them together (concatenated) within 30 degrees of all the expected ones."""
    if contract(rule).estimate is None:
        for grad, want, name in zip(grads, expected, names):
            torch.testing.assert_close(grad, want, msg=name)
        return
    flat = [torch.cat([g.flatten().double() for g in gs]) for gs in (grads, expected)]
    cos = float(F.cosine_similarity(*flat, 0))
    assert cos > np.cos(np.radians(30)), f"{names}: the estimate is {np.degrees(np.arccos(cos)):.1f} degrees off"


# --- the backward pass ----------------------------------------------------------------------

def numpy_ops(model):
    act = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}
    ops = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            ops.append(("conv", m.weight.detach().numpy(), None if m.bias is None else m.bias.detach().numpy(),
                        m.stride[0], m.padding[0], m.dilation[0]))
        elif isinstance(m, nn.Linear):
            ops.append(("linear", m.weight.detach().numpy(), None if m.bias is None else m.bias.detach().numpy()))
        elif isinstance(m, nn.MaxPool2d):
            ops.append(("pool",))
        elif isinstance(m, nn.Flatten):
            ops.append(("flatten",))
        else:
            ops.append(("act", act[type(m)]))
    return ops


REFERENCE_CASES = [("mlp", True, "mse"), ("mlp", True, "cross_entropy"), ("mlp", False, "cross_entropy"),
                   ("conv", True, "cross_entropy"), ("conv", False, "cross_entropy")]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=["-".join(map(str, c)) for c in REFERENCE_CASES])
def test_gradients_match_float64_reference(rule, case):
    net, bias, loss = case
    kind = contract(rule).reference
    if kind is None:  # declared in contracts.py, reported by -ra
        pytest.skip(f"{rule}: its contract declares no float64 reference")
    assert kind in ("bp", "feedback", "dfa", "ifa", "drtp"), f"{rule}: no float64 reference named {kind!r}"
    if net == "conv" and not contract(rule).conv:
        with pytest.raises(ValueError):
            feedalign.convert(conv_net(bias), rule)
        return
    torch.manual_seed(5 + bias)
    net_, x, labels = build(net, bias=bias)
    x = x.double()
    target = torch.randn(len(x), 3, dtype=torch.float64) if loss == "mse" else labels
    oracle = contract(rule).reference_feedback
    scale = {} if oracle else {"feedback_scale": 0.8}  # an oracle's B is written for the default scale
    model = ready(feedalign.convert(net_.double(), rule, seed=3, **scale), x)
    if kind == "ifa":
        layers = trainable_layers(model)
        grad_w, grad_b = reference.reference_gradients(
            "ifa", [l.weight.detach().numpy() for l in layers], [None if l.bias is None else l.bias.detach().numpy()
                                                                 for l in layers],
            [b.detach().numpy() for b in feedalign.feedback_matrices(model)], x.numpy(), target.numpy(), "tanh", loss)
        expected = list(zip(grad_w, grad_b))
    else:
        feedback = oracle(model) if oracle else [b.detach().numpy() for b in feedalign.feedback_matrices(model)]
        expected = reference_conv.reference_gradients("fa" if kind == "feedback" else kind, numpy_ops(model),
                                                      feedback, x.numpy(), target.numpy(), loss)
    output = forward(model, rule, x, target)
    (F.mse_loss(output, target) if loss == "mse" else F.cross_entropy(output, target)).backward()
    for l, (layer, (gw, gb)) in enumerate(zip(trainable_layers(model), expected)):
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-6, atol=1e-10, err_msg=f"{rule} W{l + 1}")
        if layer.bias is not None:
            np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-6, atol=1e-10, err_msg=f"{rule} b{l + 1}")


@pytest.mark.parametrize("sizes", ["5-6x3-3", "5-6-3"])  # one hidden layer: the lean node where the rule allows
def test_fast_and_general_paths_agree(rule, sizes):
    """Rules with a fused path for feedalign.mlp stacks take it and give the general path's gradients."""
    torch.manual_seed(0)
    fast = feedalign.convert(feedalign.mlp(sizes).double(), rule, seed=2)
    general = copy.deepcopy(fast)
    general.fused = False
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    out = fast(x)
    if contract(rule).fused:
        assert uses_fused_path(out)
    out_general = general(x)  # one forward pass each: a rule may draw noise in every one (dtp)
    assert not uses_fused_path(out_general)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(out_general, y).backward()
    for (name, p), q in zip(fast.named_parameters(), general.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_exact_gradients_gives_backprop(rule, net):
    if contract(rule).own_model:  # declared in contracts.py, reported by -ra
        pytest.skip(f"{rule}: exact gradients are the energy model's own (test_energy.py), not the MLP's")
    torch.manual_seed(0)
    net_, x, y = build(net)
    net_, x = net_.double(), x.double()
    model = ready(feedalign.convert(net_, rule), x)
    F.cross_entropy(net_(x), y).backward()
    with feedalign.exact_gradients(model):
        F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    for name, p in net_.named_parameters():
        torch.testing.assert_close(p.grad, params.pop(name).grad, msg=name)
    assert all(p.grad is None for p in params.values()), "a trained feedback gets no gradient under exact_gradients"
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # the rule is back after the block
    if contract(rule).reference != "bp":
        assert not all(torch.allclose(p.grad, model.get_parameter(n).grad) for n, p in net_.named_parameters())


def test_gradients_reach_every_trainable_parameter(rule, net):
    torch.manual_seed(0)
    net_, x, y = build(net)
    model = feedalign.convert(net_, rule)
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert not any(b.requires_grad for b in model.buffers())


def test_eval_without_grad_and_repeated_forward(rule, net):
    torch.manual_seed(0)
    net_, x, y = build(net, small=True)
    model = feedalign.convert(net_, rule)
    with torch.inference_mode():
        model(x[:3])
    # two forward passes, one backward of the summed loss: each pass keeps its own signals
    x1, x2, y1, y2 = x[:3], x[3:5], y[:3], y[3:5]
    (forward(model, rule, x1, y1).sum() + forward(model, rule, x2, y2).square().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_deepcopy_of_converted_model_learns_the_same(rule, net):
    torch.manual_seed(0)
    net_, x, y = build(net, small=True)
    model = ready(feedalign.convert(net_.double(), rule), x.double())
    twin = copy.deepcopy(model)
    x = x.double()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x), y).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_gradients_accumulate_across_backward_calls(rule, net):
    """Two backward passes without zero_grad add up, as autograd's do (the fused path included)."""
    torch.manual_seed(0)
    net_, x, y = build(net)
    x = x.double()
    model = ready(feedalign.convert(net_.double(), rule), x)
    twice, once = copy.deepcopy(model), copy.deepcopy(model)
    for _ in range(2):
        F.cross_entropy(twice(x), y).backward()
    F.cross_entropy(once(x), y).backward()
    first = [p.grad.clone() for p in once.parameters()]
    once.zero_grad()
    F.cross_entropy(once(x), y).backward()
    for (name, p), g, q in zip(twice.named_parameters(), first, once.parameters()):
        torch.testing.assert_close(p.grad, g + q.grad, msg=name)


def test_extra_leading_dimensions_are_batch_dimensions(rule):
    """nn.Linear takes (*, in): a (N, 1, in) input learns as the (N, in) one does."""
    torch.manual_seed(0)
    model = feedalign.convert(mlp_net().double(), rule)
    flat, nested = copy.deepcopy(model), copy.deepcopy(model)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    F.cross_entropy(flat(x), y).backward()
    F.cross_entropy(nested(x[:, None]).squeeze(1), y).backward()
    for (name, p), q in zip(flat.named_parameters(), nested.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_a_frozen_layer_gets_no_gradient_and_changes_nothing_else(rule, net):
    """requires_grad_(False) on the first layer before convert (a fixed random first layer)."""
    torch.manual_seed(0)
    net_, x, y = build(net)
    frozen = copy.deepcopy(net_)
    first = trainable_layers(frozen)[0]
    first.requires_grad_(False)
    model, reference_model = feedalign.convert(frozen, rule, seed=1), feedalign.convert(net_, rule, seed=1)
    if contract(rule).estimate:  # np, wp: the estimate, at many perturbations, near the unfrozen model's gradient
        contract(rule).estimate(model)
    F.cross_entropy(model(x), y).backward()
    with (feedalign.exact_gradients(reference_model) if contract(rule).estimate else contextlib.nullcontext()):
        F.cross_entropy(reference_model(x), y).backward()
    assert all(p.grad is None for p in trainable_layers(model)[0].parameters())
    pairs = [(name, p.grad, q.grad) for (name, p), q in zip(model.named_parameters(), reference_model.parameters())
             if p.requires_grad]
    assert_gradients(rule, [p for _, p, _ in pairs], [q for _, _, q in pairs], [name for name, _, _ in pairs])


def test_whole_model_saves_and_loads(rule, net):
    """torch.save of the model itself (not its state_dict) gives a model that learns the same."""
    torch.manual_seed(0)
    net_, x, y = build(net)
    model = ready(feedalign.convert(net_, rule, seed=1), x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert feedalign.rule_of(loaded) == rule
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(loaded(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


# --- state ----------------------------------------------------------------------------------

def test_feedback_state_dict_round_trip_and_seed(rule, net):
    """The feedback comes from the seed and is in the state_dict; a loaded model learns exactly as the saved one."""
    c = contract(rule)
    net_, x, y = build(net)
    a = ready(feedalign.convert(net_, rule, seed=1), x)
    b = ready(feedalign.convert(net_, rule, seed=2), x)
    same = ready(feedalign.convert(net_, rule, seed=1), x)
    fa, fb, fsame = (feedalign.feedback_matrices(m) for m in (a, b, same))
    assert bool(fa) == c.has_feedback
    for p, q in zip(fa, fsame):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    if c.seeded:
        assert not all(torch.equal(p, q) for p, q in zip(fa, fb))
        assert any("feedback" in key for key in a.state_dict())
    # train a, save, load into a fresh b (drawn from another seed, never run)
    train_steps(a, rule, x, y, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01), 2)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = feedalign.convert(net_, rule, seed=2)
    b.load_state_dict(torch.load(buffer))
    for m in (a, b):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    # after the step above: Conv2d models under dfa/drtp know their feedback's layout only after a forward pass
    for p, q in zip(feedalign.feedback_matrices(a), feedalign.feedback_matrices(b)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_touches_only_what_it_should(rule, optimizer):
    """The optimizer trains W and b (and a trained feedback); fixed feedback and other buffers stay."""
    c = contract(rule)
    net = feedalign.mlp("5-6-4-3")
    model = feedalign.convert(net, rule)
    feedback = [b.detach().clone() for b in feedalign.feedback_matrices(model)]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    names = {name for name, _ in model.named_parameters()}
    params = {id(p) for p in model.parameters()}
    if c.trained_feedback:
        # each B a parameter (kp), or a view of one (dkp's B_k are slices of its one feedback Parameter)
        assert all(id(b) in params or id(b._base) in params for b in feedalign.feedback_matrices(model))
    elif c.own_model:  # the MLP's parameters under the energy network's names
        assert [p.shape for p in model.parameters()] == [p.shape for p in net.parameters()]
        assert not any("feedback" in name for name in names)
    else:
        assert names == {name for name, _ in net.named_parameters()}
        assert not any("feedback" in name for name in names)
        assert all(not b.requires_grad for b in feedalign.feedback_matrices(model))
    opt = (torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
        opt.step()
    for name, b in model.named_buffers():
        if name.rsplit(".", 1)[-1] not in c.counters:
            torch.testing.assert_close(b, buffers[name], rtol=0, atol=0, msg=name)
    after = feedalign.feedback_matrices(model)
    if c.trained_feedback:
        assert all(not torch.equal(old, new) for old, new in zip(feedback, after))
    elif not c.feedback_from_weights:
        for old, new in zip(feedback, after):
            torch.testing.assert_close(old, new, rtol=0, atol=0)


@pytest.mark.parametrize("when", ["before", "after"], ids=["moved-before-forward", "moved-after-forward"])
def test_model_moves_with_to(rule, net, when):
    net_, x, y = build(net)
    model = feedalign.convert(net_, rule)
    if when == "after":
        ready(model, x)
    model = model.double()
    out = model(x.double())
    assert out.dtype == torch.float64
    tensors = [*model.parameters(), *model.buffers(), *feedalign.feedback_matrices(model)]
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    F.cross_entropy(out, y).backward()
    assert all(p.grad.dtype == torch.float64 for p in model.parameters())
    model = model.to("cpu", torch.float32)
    assert all(b.dtype == torch.float32 for b in feedalign.feedback_matrices(model))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    model = model.to(torch.bfloat16)  # low precision: the signals stay finite and in the model's dtype
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x.to(torch.bfloat16)).float(), y).backward()
    assert all(b.dtype == torch.bfloat16 for b in feedalign.feedback_matrices(model))
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(rule, net):
    torch.manual_seed(0)
    net_, x, y = build(net)
    cpu = ready(feedalign.convert(net_.double(), rule, seed=1), x.double())
    gpu = copy.deepcopy(cpu).to("cuda")
    assert all(b.is_cuda for b in feedalign.feedback_matrices(gpu))
    F.cross_entropy(cpu(x.double()), y).backward()
    F.cross_entropy(gpu(x.double().cuda()), y.cuda()).backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p.grad, q.grad.cpu(), msg=name)


# --- learning -------------------------------------------------------------------------------

def test_learns(rule, net):
    """Twenty plain SGD steps (and the rule's after-step hook) lower the training loss."""
    torch.manual_seed(0)
    model = feedalign.convert(mlp_net() if net == "mlp" else conv_net(), rule)
    x = torch.randn(32, 5) if net == "mlp" else torch.randn(32, 2, 9, 9)
    y = x.flatten(1)[:, :3].argmax(1)  # learnable labels: random ones make "the loss falls" a coin toss
    first = F.cross_entropy(model(x), y).item()
    train_steps(model, rule, x, y, torch.optim.SGD(model.parameters(), lr=0.1), 20)
    assert F.cross_entropy(model(x), y).item() < first


def test_contract_table_names_only_registered_rules():
    """An entry for a renamed or removed rule would describe nothing: the table follows the registry."""
    from contracts import CONTRACTS
    assert set(CONTRACTS) <= set(feedalign.rules())
    for name, _, _ in KNOWN_FAILURES:
        assert name in globals(), f"KNOWN_FAILURES names a test that does not exist: {name}"
