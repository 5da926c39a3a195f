"""Attention and recurrent modules (feedalign.models.sequence) under every rule, against float64 NumPy references
(reference_sequence.py), and the taps of dfa/drtp (Launay et al. 2020)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import drtp
from feedalign.rules.layers import FeedbackLayer, LayerwiseRule
from feedalign.models.sequence import GRU, LSTM, MultiheadAttention, RecurrentLayer, swap_sequence_modules

import reference_sequence as ref

# the shipped rules by what they do (rules other tests register for themselves are not feedalign's)
SHIPPED = [r for r in feedalign.rules() if type(feedalign.get_rule(r)).__module__.startswith("feedalign.")]
FA_TYPE = [r for r in SHIPPED if feedalign.get_rule(r).exact or isinstance(feedalign.get_rule(r), LayerwiseRule)]
DIRECT = [r for r in SHIPPED if feedalign.get_rule(r).takes_taps]  # project the error to block outputs
UNSUPPORTED = [r for r in SHIPPED if r not in FA_TYPE + DIRECT]  # ifa, dtp (inverses of a Sequential), energy MLPs


@pytest.mark.parametrize("rule", UNSUPPORTED)
def test_rules_without_a_way_into_sequence_modules_refuse_them(rule):
    with pytest.raises((ValueError, feedalign.errors.ConfigError)):
        feedalign.convert(feedalign.lstm_classifier(), rule)


def numpy(t):
    return t.detach().numpy()


# --- the modules compute torch's functions ------------------------------------------------------

def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "causal"])
def test_attention_matches_torch(batch_first, masks):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(6, 2, batch_first=batch_first).double()
    ours = MultiheadAttention.from_torch(theirs)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    kwargs = {}
    if masks == "bool":
        kwargs = dict(key_padding_mask=torch.tensor([[False, False, False, True]] * 3),
                      attn_mask=torch.ones(4, 4, dtype=torch.bool).triu(1))
    elif masks == "float":
        kwargs = dict(attn_mask=torch.randn(6, 4, 4, dtype=torch.float64))
    elif masks == "causal":
        kwargs = dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64),
                      is_causal=True)
    for average in (True, False):
        a, wa = theirs(x, x, x, average_attn_weights=average, **kwargs)
        b, wb = ours(x, x, x, average_attn_weights=average, **kwargs)
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(wb, wa)
    (a * torch.arange(a.numel(), dtype=a.dtype).view_as(a)).sum().backward()
    (b * torch.arange(b.numel(), dtype=b.dtype).view_as(b)).sum().backward()
    torch.testing.assert_close(torch.cat([ours.q_proj.weight.grad, ours.k_proj.weight.grad, ours.v_proj.weight.grad]),
                               theirs.in_proj_weight.grad)
    torch.testing.assert_close(ours.out_proj.weight.grad, theirs.out_proj.weight.grad)
    assert ours(x, x, x, need_weights=False)[1] is None
    torch.testing.assert_close(ours.in_proj_weight, theirs.in_proj_weight)


def test_attention_dropout_draws_as_torch():
    """In training, the attention weights are dropped out (and returned so), with torch's draws."""
    theirs = nn.MultiheadAttention(6, 2, dropout=0.5, batch_first=True).double()
    ours = MultiheadAttention.from_torch(theirs)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    torch.manual_seed(1)
    a = theirs(x, x, x)
    torch.manual_seed(1)
    b = ours(x, x, x)
    torch.testing.assert_close(b, a)
    assert ours.training and not torch.equal(b[0], ours.eval()(x, x, x)[0])


def test_attention_kdim_vdim_unbatched_and_no_bias():
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(4, 2, kdim=3, vdim=5, bias=False, batch_first=True).double()
    ours = MultiheadAttention.from_torch(theirs)
    q, k, v = (torch.randn(2, n, d, dtype=torch.float64) for n, d in ((3, 4), (5, 3), (5, 5)))
    torch.testing.assert_close(ours(q, k, v)[0], theirs(q, k, v)[0])
    torch.testing.assert_close(ours(q[0], k[0], v[0])[0], theirs(q[0], k[0], v[0])[0])
    assert ours.in_proj_weight is None and ours.in_proj_bias is None


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_recurrent_matches_torch(cls, batch_first, bias):
    torch.manual_seed(2)
    theirs = cls.torch_class(3, 4, num_layers=2, batch_first=batch_first, bias=bias).double()
    ours = cls.from_torch(theirs)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    shape = (2, 2, 4)
    hx = (torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64))
    hx = hx if cls is LSTM else hx[0]
    for state in (None, hx):
        a, sa = theirs(x, state)
        b, sb = ours(x, state)
        torch.testing.assert_close(b, a)
        for p, q in zip(*(s if isinstance(s, tuple) else (s,) for s in (sb, sa))):
            torch.testing.assert_close(p, q)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    for k, layer in enumerate(ours.layers):
        torch.testing.assert_close(layer.input_map.weight.grad, getattr(theirs, f"weight_ih_l{k}").grad)
        torch.testing.assert_close(layer.recurrent_map.weight.grad, getattr(theirs, f"weight_hh_l{k}").grad)
    torch.testing.assert_close(ours(x[:, 0] if batch_first else x[:, 0])[0], theirs(x[:, 0])[0])  # unbatched


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_layers_run_the_swapped_attention():
    """nn.TransformerEncoderLayer calls self.self_attn(...): the swap keeps its function, in training
    and in eval (where torch's fused path must not bypass the converted projections)."""
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    theirs = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).double()
    ours = swap_sequence_modules(copy.deepcopy(theirs))
    assert all(isinstance(block.self_attn, MultiheadAttention) for block in ours.layers)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    torch.testing.assert_close(ours(x, src_key_padding_mask=padding), theirs(x, src_key_padding_mask=padding))
    ours.eval(), theirs.eval()
    with torch.no_grad():
        # torch's eval path packs the padded positions away (zeros there); compare the others
        torch.testing.assert_close(ours(x, src_key_padding_mask=padding)[~padding],
                                   theirs(x, src_key_padding_mask=padding)[~padding])
    model = feedalign.convert(nn.Sequential(theirs, nn.Linear(8, 3).double()), "fa")
    seen = []
    for block in model[0].layers:
        block.self_attn.out_proj.register_forward_hook(lambda *args: seen.append(1))
    with torch.no_grad():
        model.eval()(x)
    assert len(seen) == 2


# --- every weight matrix reaches the rule -------------------------------------------------------

@pytest.mark.parametrize("rule", [r for r in FA_TYPE if not feedalign.get_rule(r).exact])
@pytest.mark.parametrize("build", [feedalign.vit_tiny, feedalign.lstm_classifier,
                                   lambda: nn.Sequential(nn.GRU(3, 4, 2), nn.Flatten(0), nn.Linear(4, 2))],
                         ids=["vit-tiny", "lstm", "gru"])
def test_every_weight_matrix_is_a_converted_layer(rule, build):
    model = feedalign.convert(build(), rule)
    torch_modules = (nn.MultiheadAttention, nn.LSTM, nn.GRU, nn.RNNBase)
    assert not any(isinstance(m, torch_modules) for m in model.modules())
    owners = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            owners[id(p)] = (module, name)
    matrices = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2 and not n.endswith("feedback")]
    for name, p in matrices:
        if name == "position":  # the ViT's position embedding: added, never multiplied
            continue
        module, attribute = owners[id(p)]
        assert isinstance(module, FeedbackLayer) and attribute == "weight", name
        assert module.feedback_matrix().shape == p.shape, name
    assert sum(isinstance(m, FeedbackLayer) for m in model.modules()) == len(matrices) - ("position" in dict(matrices))


# --- float64 references -------------------------------------------------------------------------

class Block(nn.Module):
    """A residual self-attention block: ``x + attention(x)``; the tap of the direct rules."""

    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x, key_mask):
        return x + self.attn(x, x, x, key_padding_mask=key_mask, need_weights=False)[0]


class AttentionNet(nn.Module):
    """embed (3 -> 4) -> residual attention block (2 heads) -> mean over positions -> head (4 -> 3)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.block = Block(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x), key_mask(x)).mean(dim=1))


def key_mask(x):
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[0, -1] = True  # the last key of example 0 is padding
    return mask


class RecurrentNet(nn.Module):
    """A 2-layer LSTM/GRU (3 -> 4), read at the last step by a head (4 -> 3)."""

    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(3, 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def converted(net, rule, **kwargs):
    torch.manual_seed(4)
    options = {} if rule == "bp" else {"seed": 3}
    if rule in DIRECT:
        options["taps"] = kwargs.pop("taps")
    return feedalign.convert(net().double(), rule, **options)


def run_backward(model, rule, x, labels):
    if rule == "drtp":
        with drtp.target(model, labels):
            output = model(x)
    else:
        output = model(x)
    F.cross_entropy(output, labels).backward()
    return output


def weights(model, name):
    layer = model.get_submodule(name)
    return numpy(layer.weight), None if layer.bias is None else numpy(layer.bias)


def back_matrix(model, name, rule):
    """The B that carries the error to the input of linear layer ``name`` (W under bp)."""
    layer = model.get_submodule(name)
    return numpy(layer.weight if rule == "bp" else layer.feedback_matrix())


def direct_signal(rule, error, labels, feedback):
    """What the direct rules send to a tap: ``e B`` (dfa) or ``t B / N`` (drtp)."""
    if rule == "dfa":
        return error @ feedback
    target = np.eye(error.shape[1])[labels]
    return target / len(labels) @ feedback


def assert_grads(model, expected):
    for name, (dw, db) in expected.items():
        layer = model.get_submodule(name)
        np.testing.assert_allclose(numpy(layer.weight.grad), dw, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(numpy(layer.bias.grad), db, rtol=1e-9, atol=1e-12, err_msg=name)
        if hasattr(layer, "trained_feedback") and layer.trained_feedback() is not None:  # kp: B gets dW
            np.testing.assert_allclose(numpy(layer.feedback.grad), dw, rtol=1e-9, atol=1e-12, err_msg=name)


ATTENTION = {"q": "block.attn.q_proj", "k": "block.attn.k_proj", "v": "block.attn.v_proj",
             "out": "block.attn.out_proj"}


@pytest.mark.parametrize("rule", FA_TYPE + DIRECT)
def test_attention_gradients_match_float64_reference(rule):
    """FA-type: each projection's input gradient goes through its B (``dx = dq B_q + dk B_k + dv B_v``;
    ``d concat = dY B_out``). dfa/drtp with the block as tap: the block output receives
    ``e B`` (``t B / N``) and backpropagates inside the block; the head learns from e."""
    model = converted(AttentionNet, rule, taps=["block"])
    x, labels = torch.randn(3, 5, 3, dtype=torch.float64), torch.tensor([0, 2, 1])
    params = {k: weights(model, name) for k, name in ATTENTION.items()}
    # inside the tapped block the direct rules backpropagate; brsf: each layer runs once, so its
    # next draw is the B of this backward
    back = {k: back_matrix(model, name, "bp" if rule in DIRECT else rule) for k, name in ATTENTION.items()}
    direct = None if rule not in DIRECT else numpy(feedalign.feedback_matrices(
        run_forward_once(model, x))[0])  # (3, 5 * 4): sized by the first forward
    # forward
    x0 = numpy(x)
    u = ref.linear(x0, *weights(model, "embed"))
    attended, cache = ref.attention_forward(u, params, 2, numpy(key_mask(x)))
    h = u + attended
    pooled = h.mean(axis=1)
    y = ref.linear(pooled, *weights(model, "head"))
    e = ref.cross_entropy_error(y, labels.numpy())
    # backward
    expected = {"head": ref.linear_grads(pooled, e)}
    if rule in DIRECT:
        dh = direct_signal(rule, e, labels.numpy(), direct).reshape(h.shape)
    else:
        dh = np.repeat((e @ back_matrix(model, "head", rule))[:, None, :], h.shape[1], axis=1) / h.shape[1]
    grads, dx = ref.attention_backward(cache, dh, back)
    expected.update({ATTENTION[k]: g for k, g in grads.items()})
    expected["embed"] = ref.linear_grads(x0, dh + dx)
    output = run_backward(model, rule, x, labels)
    np.testing.assert_allclose(numpy(output), y, rtol=1e-12, atol=1e-12)
    assert_grads(model, expected)


def run_forward_once(model, x):
    with torch.no_grad():
        model(x)
    return model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("rule", FA_TYPE + DIRECT)
def test_recurrent_gradients_match_float64_reference(rule, cell):
    """FA-type: backprop through time with ``B_hh`` in place of ``W_hh`` and ``B_ih`` carrying the
    error to the layer below. dfa/drtp with the LSTM/GRU as tap: every layer's h_t receives its
    own slice of ``e B_k`` and the recurrence is cut (only the element-wise paths go back in time)."""
    cls = LSTM if cell == "lstm" else GRU
    model = converted(lambda: RecurrentNet(cls.torch_class), rule, taps=["rnn"])
    x, labels = torch.randn(3, 4, 3, dtype=torch.float64), torch.tensor([1, 0, 2])
    names = [(f"rnn.layers.{k}.input_map", f"rnn.layers.{k}.recurrent_map") for k in range(2)]
    if rule in DIRECT:
        assert all(layer.cut_recurrence for layer in model.rnn.layers)
        feedback = [numpy(b) for b in feedalign.feedback_matrices(run_forward_once(model, x))]
    steps = x.shape[1]

    inner = "bp" if rule in DIRECT else rule  # direct rules: nothing crosses a cut, W is never used

    def back_hh(name):
        if rule != "brsf":
            return back_matrix(model, name, inner)
        # brsf redraws B at every backward pass of the layer: the recurrent map runs once per step,
        # and its backward passes come last step first
        layer = model.get_submodule(name)
        base, draws = int(layer.feedback_draws), []
        for j in range(steps):
            layer.feedback_draws.fill_(base + j)
            draws.append(numpy(layer.feedback_matrix()))
        layer.feedback_draws.fill_(base)
        return draws[::-1]  # indexed by time step

    backs = [(back_matrix(model, i, inner), back_hh(r)) for i, r in names]
    states, inputs = [], numpy(x)
    for i, r in names:
        inputs, state = ref.recurrent_forward(cell, inputs, *weights(model, i), *weights(model, r))
        states.append(state)
    y = ref.linear(inputs[:, -1], *weights(model, "head"))
    e = ref.cross_entropy_error(y, labels.numpy())
    expected = {"head": ref.linear_grads(inputs[:, -1], e)}
    if rule in DIRECT:
        external = [direct_signal(rule, e, labels.numpy(), b).reshape(3, steps, 4) for b in feedback]
    else:
        top = np.zeros((3, steps, 4))
        top[:, -1] = e @ back_matrix(model, "head", rule)
        external = [None, top]
    for k in (1, 0):
        dw_ih, db_ih, dw_hh, db_hh, dx = ref.recurrent_backward(states[k], external[k], backs[k][0],
                                                                backs[k][1], rule in DIRECT)
        expected[names[k][0]], expected[names[k][1]] = (dw_ih, db_ih), (dw_hh, db_hh)
        if k == 1 and rule not in DIRECT:
            external[0] = dx
    output = run_backward(model, rule, x, labels)
    np.testing.assert_allclose(numpy(output), y, rtol=1e-12, atol=1e-12)
    assert_grads(model, expected)


def test_exact_gradients_undo_taps_and_the_recurrence_cut():
    torch.manual_seed(5)
    net = RecurrentNet(nn.LSTM).double()
    model = feedalign.convert(net, "dfa", taps=[net.rnn])  # a module of the original model names the tap
    x, labels = torch.randn(2, 4, 3, dtype=torch.float64), torch.tensor([0, 1])
    with feedalign.exact_gradients(model):
        F.cross_entropy(model(x), labels).backward()
    F.cross_entropy(net(x), labels).backward()
    for k, layer in enumerate(model.rnn.layers):
        torch.testing.assert_close(layer.recurrent_map.weight.grad, getattr(net.rnn, f"weight_hh_l{k}").grad)
        torch.testing.assert_close(layer.input_map.weight.grad, getattr(net.rnn, f"weight_ih_l{k}").grad)


# --- builders -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", FA_TYPE + DIRECT)
def test_builders_train_under_every_supported_rule(rule):
    torch.manual_seed(6)
    y = torch.randint(0, 10, (4,))
    for net, x in ((feedalign.vit_tiny(image_size=14), torch.randn(4, 1, 14, 14)),
                   (feedalign.lstm_classifier(input_size=1, hidden_size=8), torch.randn(4, 6))):
        model = feedalign.convert(net, rule)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(2):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            feedalign.learning_rule(model).after_step(model, (x, y), 1)
        assert torch.isfinite(loss)
        assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.requires_grad
                   and p.dim() > 0)


def test_builder_inputs():
    assert feedalign.vit_tiny()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert feedalign.vit_tiny(in_channels=3, num_classes=4, image_size=32, patch=8)(
        torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert feedalign.lstm_classifier(input_size=1, hidden_size=5)(torch.randn(2, 40)).shape == (2, 10)
    assert feedalign.lstm_classifier(hidden_size=5)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert feedalign.lstm_classifier(hidden_size=5)(torch.randn(2, 784)).shape == (2, 10)
    assert feedalign.vit_tiny()(torch.randn(2, 784)).shape == (2, 10)
    image = torch.randn(2, 1, 28, 28)
    lstm = feedalign.lstm_classifier(hidden_size=5)
    torch.testing.assert_close(lstm(image), lstm(image.flatten(1)))
    with pytest.raises(ValueError, match="expects images"):
        feedalign.vit_tiny()(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="cannot read"):
        feedalign.lstm_classifier()(torch.randn(2, 40))
    with pytest.raises(ValueError, match="multiple of patch"):
        feedalign.vit_tiny(image_size=30)
    with pytest.raises(ValueError, match="positive int"):
        feedalign.lstm_classifier(hidden_size=0)


# --- errors -------------------------------------------------------------------------------------

class SequenceFirst(nn.Module):
    """A tap whose output is (T, N, H) while the model's is (N, C): not batch first."""

    def __init__(self):
        super().__init__()
        self.inner, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.inner(x.transpose(0, 1)).mean(dim=0))


def test_unsupported_pairs_and_bad_taps_give_clear_errors():
    for build in (feedalign.vit_tiny, feedalign.lstm_classifier):
        with pytest.raises(ValueError, match="ifa does not support attention or recurrent"):
            feedalign.convert(build(), "ifa")
        with pytest.raises(ValueError, match="dtp needs an nn.Sequential of nn.Linear layers"):
            feedalign.convert(build(), "dtp")
        for rule in ("eqprop", "chl"):
            with pytest.raises(ValueError, match=f"{rule} builds an energy network from an MLP's nn.Linear layers"):
                feedalign.convert(build(), rule)
    with pytest.raises(ValueError, match="taps"):  # no builder defaults: dfa must be told where to cut
        feedalign.convert(AttentionNet(), "dfa")
    with pytest.raises(ValueError, match="takes no taps"):
        feedalign.convert(AttentionNet(), "fa", taps=["block"])
    with pytest.raises(ValueError, match="not a submodule"):
        feedalign.convert(AttentionNet(), "dfa", taps=["blocks"])
    with pytest.raises(ValueError, match="not a submodule"):
        feedalign.convert(AttentionNet(), "dfa", taps=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="twice"):
        feedalign.convert(AttentionNet(), "dfa", taps=["block", "block"])
    with pytest.raises(TypeError, match="list"):
        feedalign.convert(AttentionNet(), "dfa", taps="block")
    model = feedalign.convert(SequenceFirst(), "dfa", taps=["inner"])
    with pytest.raises(ValueError, match="leading dimensions"):
        model(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="nn.RNN"):
        feedalign.convert(nn.Sequential(nn.RNN(3, 4), nn.Linear(4, 2)), "fa")
    with pytest.raises(ValueError, match="bidirectional"):
        feedalign.convert(nn.Sequential(nn.LSTM(3, 4, bidirectional=True), nn.Linear(8, 2)), "fa")
    with pytest.raises(ValueError, match="add_bias_kv"):
        feedalign.convert(nn.Sequential(nn.MultiheadAttention(4, 2, add_bias_kv=True), nn.Linear(4, 2)), "fa")
    class MyLSTM(nn.LSTM):
        pass
    with pytest.raises(ValueError, match="subclasses"):
        feedalign.convert(nn.Sequential(MyLSTM(3, 4), nn.Linear(4, 2)), "fa")
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(6, 4)
    with pytest.raises(ValueError, match="attn_mask"):
        MultiheadAttention(4, 2, batch_first=True)(*(torch.randn(1, 3, 4),) * 3, attn_mask=torch.zeros(2, 2))


def test_a_bare_torch_module_converts():
    for module in (nn.LSTM(3, 4), nn.GRU(3, 4), nn.MultiheadAttention(4, 2)):
        model = feedalign.convert(module, "fa")
        assert type(model).__name__ == type(module).__name__ and type(model) is not type(module)
        assert all(isinstance(m, FeedbackLayer) for m in model.modules() if isinstance(m, nn.Linear))


def test_recurrent_layer_repr_and_flags():
    layer = RecurrentLayer("gru", 3, 4)
    assert "gru, 3, 4" in repr(layer) and not layer.cut_recurrence
    with pytest.raises(ValueError, match="cell"):
        RecurrentLayer("rnn", 3, 4)


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def test_taps_on_a_residual_network_project_the_error_to_each_block_output():
    """A ResNet-style model: B_k (out, C*H*W) per block output; inside a block, backprop of ``e B_k``
    (checked with autograd on the block alone, its input detached)."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ResidualBlock(2), ResidualBlock(2), nn.Flatten(),
                        nn.Linear(2 * 4 * 4, 3)).double()
    model = feedalign.convert(net, "dfa", taps=["1", "2"], seed=1)
    x, labels = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    feedback = feedalign.feedback_matrices(run_forward_once(model, x))
    assert [tuple(b.shape) for b in feedback] == [(3, 32), (3, 32)]
    output = model(x)
    F.cross_entropy(output, labels).backward()
    error = torch.softmax(output.detach(), 1) - F.one_hot(labels, 3)
    error /= len(labels)
    block = copy.deepcopy(net[2])
    inner = model[1](model[0](x)).detach()
    block(inner).backward((error @ feedback[1]).view(3, 2, 4, 4))
    torch.testing.assert_close(model[2].conv1.weight.grad, block.conv1.weight.grad)
    torch.testing.assert_close(model[2].conv2.weight.grad, block.conv2.weight.grad)


def test_a_pooled_classifier_can_share_one_feedback_matrix_over_positions():
    """``feedalign_share_positions``: output (N, C), tap (N, T, D): B is (C, D) and every token gets ``e B``
    (the mean over tokens sends each the same true error); checked with autograd on the block alone."""
    torch.manual_seed(9)
    net = AttentionNet().double()
    net.feedalign_share_positions = True
    model = feedalign.convert(net, "dfa", taps=["block"], seed=3)
    x, labels = torch.randn(2, 5, 3, dtype=torch.float64), torch.tensor([0, 2])
    (feedback,) = feedalign.feedback_matrices(run_forward_once(model, x))
    assert tuple(feedback.shape) == (3, 4)
    output = model(x)
    F.cross_entropy(output, labels).backward()
    error = (torch.softmax(output.detach(), -1) - F.one_hot(labels, 3)) / len(labels)
    reference = swap_sequence_modules(copy.deepcopy(net))
    signal = (error @ feedback).unsqueeze(1).expand(2, 5, 4)
    reference.block(reference.embed(x), key_mask(x)).backward(signal)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(getattr(model.block.attn, name).weight.grad,
                                   getattr(reference.block.attn, name).weight.grad)
    torch.testing.assert_close(model.embed.weight.grad, reference.embed.weight.grad)
    unshared = feedalign.convert(AttentionNet().double(), "dfa", taps=["block"], seed=3)
    assert tuple(feedalign.feedback_matrices(run_forward_once(unshared, x))[0].shape) == (3, 20)


class TokenNet(nn.Module):
    """Per-token outputs (N, T, 3), as a language model: embed -> attention block -> head."""

    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(3, 4), Block(4, 2), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x), None))


def test_per_token_outputs_share_one_feedback_matrix_over_positions():
    """Output (N, T, V), tap (N, T, D): B is (V, D) and every position's h_t gets ``e_t B`` (Launay et al.'s
    language models); checked with autograd on the block alone."""
    torch.manual_seed(8)
    net = TokenNet().double()
    model = feedalign.convert(net, "dfa", taps=["block"], seed=2)
    x, labels = torch.randn(2, 5, 3, dtype=torch.float64), torch.randint(0, 3, (2, 5))
    (feedback,) = feedalign.feedback_matrices(run_forward_once(model, x))
    assert tuple(feedback.shape) == (3, 4)
    output = model(x)
    F.cross_entropy(output.reshape(-1, 3), labels.reshape(-1)).backward()
    error = (torch.softmax(output.detach(), -1) - F.one_hot(labels, 3)) / labels.numel()
    reference = swap_sequence_modules(copy.deepcopy(net))
    reference.block(reference.embed(x), None).backward(error @ feedback)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(getattr(model.block.attn, name).weight.grad,
                                   getattr(reference.block.attn, name).weight.grad)
    torch.testing.assert_close(model.embed.weight.grad, reference.embed.weight.grad)
