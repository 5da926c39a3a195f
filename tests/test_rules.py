"""Every rule's weight and bias gradients against a hand-written float64 reference (reference.py), the
fused path against the general one, and the rest of what convert and mlp promise. The contract every
rule keeps (forward unchanged, deepcopy, state_dict, exact_gradients, ...) is in test_contract.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import trainable_layers
from feedalign.rules.fused import uses_fused_path
from feedalign.rules.layers import FeedbackConv2d, FeedbackLinear, LayerwiseRule, random_feedback

from contracts import contract
from reference import reference_gradients

# every registered rule whose float64 reference reference.py writes ("feedback": FA's, with the rule's B)
REFERENCE = {"bp": "bp", "feedback": "fa", "dfa": "dfa", "ifa": "ifa"}
RULES = [rule for rule in feedalign.rules() if contract(rule).reference in REFERENCE]
# the fused path where a rule has one, and the general path
PATHS = [pytest.param(rule, fast, id=f"{rule}-{'fast' if fast else 'general'}")
         for rule in RULES for fast in ((True, False) if contract(rule).fused else (False,))]


def run_torch(model, x, target, loss):
    output = model(x)
    value = F.mse_loss(output, target) if loss == "mse" else F.cross_entropy(output, target)
    value.backward()


def check_against_reference(model, rule, x, target, activation, loss, bias=True, fast=None):
    layers = trainable_layers(model)
    weights = [layer.weight.detach().numpy() for layer in layers]
    biases = [layer.bias.detach().numpy() if bias else None for layer in layers]
    feedback = [b.detach().numpy() for b in feedalign.feedback_matrices(model)]
    grad_w, grad_b = reference_gradients(REFERENCE[contract(rule).reference], weights, biases, feedback, x.numpy(),
                                         target.numpy(), activation, loss)
    if fast is not None:  # pin the path, and check that it is the one taken
        model.fused = fast
        assert uses_fused_path(model(x)) == fast
    run_torch(model, x, target, loss)
    for l, layer in enumerate(layers):
        np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w[l], rtol=1e-6, atol=1e-10, err_msg=f"{rule} W{l + 1}")
        if bias:
            np.testing.assert_allclose(layer.bias.grad.numpy(), grad_b[l], rtol=1e-6, atol=1e-10, err_msg=f"{rule} b{l + 1}")


@pytest.mark.parametrize("rule, fast", PATHS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
# hidden widths unequal / equal (stacked) / one hidden layer (the lean node, fused._OneHiddenFunction)
@pytest.mark.parametrize("sizes", ["5-7-6-4-3", "5-6x3-3", "5-7-3"])
def test_gradients_match_reference(rule, activation, bias, batch, loss, sizes, fast):
    torch.manual_seed(batch + 10 * bias)
    net = feedalign.mlp(sizes, activation=activation, bias=bias).double()
    model = feedalign.convert(net, rule, seed=3, feedback_scale=0.8 if rule != "bp" else None)
    x = torch.randn(batch, 5, dtype=torch.float64)
    target = torch.randn(batch, 3, dtype=torch.float64) if loss == "mse" else torch.randint(0, 3, (batch,))
    check_against_reference(model, rule, x, target, activation, loss, bias, fast=fast)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rule", [r for r in RULES if contract(r).fused])
def test_stacked_weight_gradients_by_mm_and_by_bmm(rule, threads):
    """The fused path takes the hidden-to-hidden weight gradients in one bmm with more than one thread
    and layer by layer with one: both match the float64 reference."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(threads)
        net = feedalign.mlp("5-6x4-3", activation="tanh").double()
        model = feedalign.convert(net, rule, seed=3, feedback_scale=0.8 if rule != "bp" else None)
        x, target = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
        check_against_reference(model, rule, x, target, "tanh", "cross_entropy", fast=True)
    finally:
        torch.set_num_threads(before)


class Nested(nn.Module):
    """Nested containers and functional activations, as users write them."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Sequential(nn.Linear(6, 4)))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.encoder(x)))


@pytest.mark.parametrize("rule", RULES)
def test_nested_model_with_functional_activation(rule):
    torch.manual_seed(0)
    model = feedalign.convert(Nested().double(), rule, seed=1)
    x, target = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    check_against_reference(model, rule, x, target, "tanh", "cross_entropy")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sizes", ["4-5-5-2", "4-5-2"])  # one hidden layer: the lean node, where f is nn.Identity
def test_identity_activation(rule, sizes):
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp(sizes, activation="linear").double(), rule)
    x, target = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    check_against_reference(model, rule, x, target, "linear", "mse")


def test_feedback_shapes_and_default_scales():
    net = feedalign.mlp("20-50-30-10")
    fa = feedalign.feedback_matrices(feedalign.convert(net, "fa"))
    assert [tuple(b.shape) for b in fa] == [(50, 20), (30, 50), (10, 30)]
    assert all(b.abs().max() <= 1 / layer.in_features ** 0.5 for b, layer in zip(fa, trainable_layers(net)))
    dfa = feedalign.feedback_matrices(feedalign.convert(net, "dfa"))
    assert [tuple(b.shape) for b in dfa] == [(10, 50), (10, 30)]
    assert dfa[0].abs().max() <= 1 / 50 ** 0.5 and dfa[1].abs().max() <= 1 / 30 ** 0.5
    ifa = feedalign.feedback_matrices(feedalign.convert(net, "ifa"))
    assert [tuple(b.shape) for b in ifa] == [(10, 50)]
    gaussian = feedalign.feedback_matrices(feedalign.convert(net, "dfa", feedback_init="gaussian", feedback_scale=2.0))
    assert 1.5 < torch.cat([b.flatten() for b in gaussian]).std() < 2.5
    assert feedalign.feedback_matrices(feedalign.convert(net, "bp")) == []


class MatmulCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matrix products autograd runs."""

    MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
               torch.ops.aten.mm.out, torch.ops.aten.addmm.out, torch.ops.aten.bmm.out}

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.MATMULS:
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("rule, expected", [("bp", 2 * 4 - 1), ("fa", 2 * 4 - 1), ("dfa", 4 + 1)])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_backward_matmul_count(rule, expected, fast):
    """DFA computes no input gradient for hidden layers: one weight-gradient matmul per
    layer plus the single fused feedback matmul; BP and FA need 2L - 1."""
    model = feedalign.convert(feedalign.mlp("5-6-6-4-3"), rule)
    model.fused = fast
    loss = F.cross_entropy(model(torch.randn(8, 5)), torch.randint(0, 3, (8,)))
    with MatmulCounter() as counter:
        loss.backward()
    assert len(counter.shapes) == expected, counter.shapes


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_dfa_hidden_layers_get_no_input_gradient():
    model = feedalign.convert(feedalign.mlp("5-6-6-4-3"), "dfa")
    seen = {}
    for k, layer in enumerate(trainable_layers(model)):
        layer.register_full_backward_hook(lambda module, grad_in, grad_out, k=k: seen.__setitem__(k, grad_in[0]))
    F.cross_entropy(model(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
    assert set(seen) == {0, 1, 2, 3}
    assert all(grad is None for grad in seen.values())


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown rule 'nope'; known rules: .*bp.*dfa.*fa.*ifa"):
        feedalign.convert(feedalign.mlp("3-2"), "nope")
    with pytest.raises(ValueError, match="no nn.Linear"):
        feedalign.convert(nn.Sequential(nn.Tanh()), "fa")
    for rule in ("dfa", "ifa"):
        with pytest.raises(ValueError, match="hidden layer"):
            feedalign.convert(feedalign.mlp("3-2"), rule)
    with pytest.raises(ValueError, match="feedback_init"):
        feedalign.convert(feedalign.mlp("3-4-2"), "fa", feedback_init="normal")
    with pytest.raises(ValueError, match="already converted"):
        feedalign.convert(feedalign.convert(feedalign.mlp("3-4-2"), "fa"), "dfa")
    with pytest.raises(TypeError, match="nn.Module"):
        feedalign.convert("not a model", "fa")
    with pytest.raises(TypeError, match="seed"):
        feedalign.convert(feedalign.mlp("3-4-2"), "fa", seed=1.5)
    with pytest.raises(TypeError, match="feedback_scale"):
        feedalign.convert(feedalign.mlp("3-4-2"), "fa", feedback_scale="0.5")
    with pytest.raises(ValueError, match="feedback_scale"):
        feedalign.convert(feedalign.mlp("3-4-2"), "fa", feedback_scale=-1.0)
    with pytest.raises(TypeError, match="rule name"):
        feedalign.convert(feedalign.mlp("3-4-2"), None)


@pytest.mark.parametrize("spec", ["", "784", "784-", "a-10", "784--10", "784-0-10", "784-10x0-10", "784 10"])
def test_mlp_rejects_malformed_sizes(spec):
    with pytest.raises(ValueError, match="malformed architecture") as info:
        feedalign.mlp(spec)
    assert repr(spec) in str(info.value)


def test_mlp_builds_layers():
    net = feedalign.mlp("784-240x3-10", activation="relu", bias=False)
    linears = trainable_layers(net)
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 240), (240, 240), (240, 240), (240, 10)]
    assert all(l.bias is None for l in linears)
    assert sum(isinstance(m, nn.ReLU) for m in net) == 3
    assert isinstance(feedalign.mlp("3-4-2", activation="linear")[1], nn.Identity)
    with pytest.raises(ValueError, match="unknown activation"):
        feedalign.mlp("3-4-2", activation="swish2")


def test_rules_registry_lists_core_rules():
    assert {"bp", "fa", "dfa", "ifa"} <= set(feedalign.rules())


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("rule", [r for r in feedalign.rules() if contract(r).fused])
def test_fused_path_taken_for_mlp_only(rule):
    x = torch.randn(4, 5)
    model = feedalign.convert(feedalign.mlp("5-6-6-3"), rule)
    assert uses_fused_path(model(x))
    assert isinstance(model, nn.Sequential) and repr(model).startswith("Sequential(")
    with torch.no_grad():
        assert not uses_fused_path(model(x))
    with feedalign.exact_gradients(model):
        assert not uses_fused_path(model(x))
    handle = trainable_layers(model)[1].register_forward_hook(lambda *args: None)
    assert not uses_fused_path(model(x)), "a hook on a layer must see the layer run"
    handle.remove()
    assert uses_fused_path(model(x))
    nested = feedalign.convert(Nested(), rule)
    assert not uses_fused_path(nested(x))
    gelu = feedalign.convert(feedalign.mlp("5-6-6-3", activation="gelu"), rule)
    assert not uses_fused_path(gelu(x))
    # a parametrized weight is computed, not stored in _parameters: the general path computes it
    torch.nn.utils.parametrize.register_parametrization(trainable_layers(model)[0], "weight", _Doubled())
    out = model(x)
    assert not uses_fused_path(out)
    F.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    assert trainable_layers(model)[0].parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("rule", [r for r in feedalign.rules() if contract(r).fused])
def test_fused_path_accumulates_and_keeps_state(rule):
    """Same .grad as the general path, accumulated across backward calls; same state_dict keys."""
    torch.manual_seed(0)
    fast = feedalign.convert(feedalign.mlp("5-6x4-3").double(), rule, seed=2)
    general = copy.deepcopy(fast)
    general.fused = False
    assert list(fast.state_dict()) == list(feedalign.convert(feedalign.mlp("5-6x4-3"), rule).state_dict())
    x, y = torch.randn(6, 5, dtype=torch.float64, requires_grad=True), torch.randint(0, 3, (6,))
    grads = []
    for model in (fast, general):
        x.grad = None
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()
    F.cross_entropy(fast(x[:, None]).squeeze(1), y).backward()  # extra leading dims are batch dims
    assert all(p.grad is not None for p in fast.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule, fast", PATHS)
def test_cuda_matches_cpu(rule, fast):
    torch.manual_seed(0)
    cpu = feedalign.convert(feedalign.mlp("20-16x3-5").double(), rule, seed=1)
    cpu.fused = fast
    gpu = copy.deepcopy(cpu).to("cuda")
    assert all(b.is_cuda for b in feedalign.feedback_matrices(gpu))
    x, y = torch.randn(9, 20, dtype=torch.float64), torch.randint(0, 5, (9,))
    F.cross_entropy(cpu(x), y).backward()
    out = gpu(x.cuda())
    assert uses_fused_path(out) == fast
    F.cross_entropy(out, y.cuda()).backward()
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(p.grad, q.grad.cpu())


def _hand_built_stack(kind):
    if kind == "mixed":  # some layers without bias, different activations, no activation between two linears
        return nn.Sequential(nn.Linear(5, 6, bias=False), nn.ReLU(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 6),
                             nn.Linear(6, 6, bias=False), nn.LeakyReLU(0.1), nn.Linear(6, 3))
    # equal widths (one stacked tensor) and one activation kind, but each layer its own slope: each layer's
    # derivative must use its own (DFA once used the first layer's for the whole stack)
    return nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.1), nn.Linear(6, 6), nn.LeakyReLU(0.5), nn.Linear(6, 6),
                         nn.LeakyReLU(0.9), nn.Linear(6, 3))


@pytest.mark.parametrize("rule", [r for r in feedalign.rules() if contract(r).fused])
@pytest.mark.parametrize("kind", ["mixed", "slopes"])
def test_fused_path_on_hand_built_stacks(rule, kind):
    """A hand-built stack through the fused path gives the general path's gradients."""
    torch.manual_seed(0)
    fast = feedalign.convert(_hand_built_stack(kind).double(), rule, seed=1)
    general = copy.deepcopy(fast)
    general.fused = False
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    out = fast(x)
    assert uses_fused_path(out)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(general(x), y).backward()
    for (name, p), q in zip(fast.named_parameters(), general.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_feedback_stream_differs_from_the_global_seed(seed):
    """torch.manual_seed(s) then convert(seed=s) must not give B == W (FA would be BP)."""
    torch.manual_seed(seed)
    net = feedalign.mlp("20-30-10")
    fa = feedalign.convert(net, "fa", seed=seed)
    for layer, feedback in zip(trainable_layers(net), feedalign.feedback_matrices(fa)):
        cosine = F.cosine_similarity(layer.weight.flatten(), feedback.flatten(), dim=0)
        assert abs(float(cosine.detach())) < 0.5


@pytest.mark.parametrize("rule", feedalign.rules())
def test_learning_rule_hooks_run_a_plain_loop(rule):
    """The loop every rule runs with: the rule's forward context and after-step call, asked of the rule object."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-6-4-3"), rule)
    learning_rule = feedalign.learning_rule(model)
    assert learning_rule.name == rule == feedalign.rule_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    before = [b.clone() for b in feedalign.feedback_matrices(model)]
    for step in (1, 2):
        optimizer.zero_grad()
        with learning_rule.forward_context(model, y):
            out = model(x)
        F.mse_loss(out, F.one_hot(y, 3).float()).backward()  # drtp: the context gives it the target
        optimizer.step()
        learning_rule.after_step(model, (x, y), step, generator=torch.Generator().manual_seed(step))
    layout = learning_rule.feedback_layout(model)
    assert len(layout) == len(trainable_layers(model))
    assert all(role.matrix is not None or role.reason for role in layout)
    if rule == "wm":  # its mirror phase ran
        assert not all(torch.equal(a, b) for a, b in zip(before, feedalign.feedback_matrices(model)))


class _ScaledFixedFeedback:
    """A made-up FA-type rule for the test below: B = 2 * M, M a fixed random buffer ``magnitude``."""

    def backward_weight(self):
        return 2.0 * self.magnitude


class _ScaledLinear(_ScaledFixedFeedback, FeedbackLinear):
    pass


class _ScaledConv2d(_ScaledFixedFeedback, FeedbackConv2d):
    pass


class _ScaledRule(LayerwiseRule):
    name = "test-scaled-fa"
    linear_class, conv_class = _ScaledLinear, _ScaledConv2d

    def init_layer(self, layer, *, generator, feedback_init, feedback_scale):
        layer.register_buffer("magnitude", random_feedback(
            layer, generator=generator, feedback_init=feedback_init, feedback_scale=feedback_scale))


@pytest.fixture
def scaled_rule():
    """Registers _ScaledRule for one test; gone after it, so no later test sees it in the registry."""
    from feedalign.rules import base
    feedalign.register(_ScaledRule)
    try:
        yield _ScaledRule.name
    finally:
        del base._REGISTRY[_ScaledRule.name]  # the registry has no public unregister


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_a_new_fa_type_rule_is_one_class_per_part(fast, scaled_rule):
    """A mixin, its two layers and a LayerwiseRule give a rule with both paths, feedback matrices
    and a layout; it matches FA's float64 reference with its own B."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-6x3-3").double(), _ScaledRule.name, seed=1)
    x, target = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    check_against_reference(model, "fa", x, target, "tanh", "cross_entropy", fast=fast)
    layout = feedalign.learning_rule(model).feedback_layout(model)
    assert [role.replaces for role in layout] == [(0,), (1,), (2,), (3,)]
    for role, layer in zip(layout, trainable_layers(model)):
        torch.testing.assert_close(role.matrix, 2.0 * layer.magnitude, rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["fa", "dfa", "drtp"])
def test_fused_path_runs_hooks_added_to_the_root(rule):
    """The fused path skips only the root hooks convert installed (DFA's cut); one added later runs,
    on the fused path still, and removing it restores the bypass."""
    model = feedalign.convert(feedalign.mlp("5-6-3"), rule)
    x = torch.randn(4, 5)
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(uses_fused_path(output)))
    pre = model.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    doubled = model(x)
    assert seen == [True]
    handle.remove()
    pre.remove()
    assert uses_fused_path(model(x))
    torch.testing.assert_close(doubled, model(2 * x))
