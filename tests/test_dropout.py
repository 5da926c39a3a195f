"""Dropout in MLPs (Config.dropout, Config.input_dropout), placed as Nøkland's code places it: a direct rule's
signal reaches a hidden layer through that layer's dropout mask."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.errors import ConfigError
from feedalign.rules import fused
from feedalign.training import Config, train
from feedalign.training.population import unsupported


def test_mlp_places_dropout_after_hidden_activations_and_on_the_input():
    model = feedalign.mlp("5-7-6-3", dropout=0.5, input_dropout=0.1)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Dropout", "Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.1, 0.5, 0.5]
    assert [type(m).__name__ for m in feedalign.mlp("5-7-3")] == ["Linear", "Tanh", "Linear"]  # none by default


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_probabilities_are_refused(p):
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        feedalign.mlp("5-7-3", dropout=p)
    with pytest.raises(ConfigError, match=r"input_dropout must be in \[0, 1\)"):
        Config(architecture="40-24-10", dataset="mnist1d", input_dropout=p).validate()


def test_dropout_is_for_mlps_and_not_for_populations():
    with pytest.raises(ConfigError, match="apply to MLP architectures"):
        Config(architecture="lenet5", dataset="mnist", dropout=0.5).validate()
    assert "dropout" in unsupported(Config(architecture="40-24-10", dataset="mnist1d", rule="dfa", dropout=0.5))


def test_dfa_signal_passes_through_the_dropout_mask_float64():
    """dW_k = ((e B_k) * m_k / (1 - p) * f'(a_k))^T h_{k-1}: the mask recorded in the forward pass, NumPy reference."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp("5-7-6-3", dropout=0.5), "dfa", seed=1).double().train()
    masks = []
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.register_forward_hook(lambda mod, inp, out: masks.append((out != 0).double().numpy() / (1 - mod.p)))
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    out = model(x)
    F.cross_entropy(out, y).backward()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    w = [layer.weight.detach().numpy() for layer in linears]
    b = [layer.bias.detach().numpy() for layer in linears]
    feedback = [B.detach().numpy() for B in feedalign.feedback_matrices(model)]
    a1 = x.numpy() @ w[0].T + b[0]
    h1 = np.tanh(a1) * masks[0]
    a2 = h1 @ w[1].T + b[1]
    h2 = np.tanh(a2) * masks[1]
    logits = h2 @ w[2].T + b[2]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(3)[y.numpy()]) / len(y)
    d1 = (e @ feedback[0]) * masks[0] * (1 - np.tanh(a1) ** 2)
    d2 = (e @ feedback[1]) * masks[1] * (1 - np.tanh(a2) ** 2)
    np.testing.assert_allclose(linears[0].weight.grad.numpy(), d1.T @ x.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(linears[1].weight.grad.numpy(), d2.T @ h1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(linears[2].weight.grad.numpy(), e.T @ h2, rtol=1e-10, atol=1e-12)
    assert 0 < masks[0].astype(bool).mean() < 1  # the mask dropped some units and kept others


def test_a_run_with_dropout_trains_and_evaluates_without_it(tmp_path):
    config = Config(dataset="mnist1d", architecture="40-24-16-10", rule="dfa", epochs=1, batch_size=64, threads=1,
                    train_size=640, test_size=300, dropout=0.5, input_dropout=0.1, out_dir=str(tmp_path))
    result = train(config, progress="none")
    assert [type(m).__name__ for m in result.model][:2] == ["Dropout", "Linear"]
    assert fused.plan_of(result.model) is None  # dropout trains through the general path
    x = torch.randn(8, 40)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(result.model(x), result.model(x))  # eval: no dropout
    assert result.summary["epochs_completed"] == 1


def test_nokland_dropout_experiment_is_his_code_with_dropout():
    from feedalign.experiments import experiment_config, get_experiment
    experiment = get_experiment("nokland-dropout")
    config = experiment_config("nokland-dropout", quick=False)
    learners = experiment.learners(config)
    assert set(learners) == {"DFA", "BP"}
    for fields in learners.values():
        assert (fields["architecture"], fields["dropout"], fields["input_dropout"]) == ("784-800x2-10", 0.5, 0.1)
        Config.from_dict({**fields, "dataset": "mnist"}).validate()  # every learner is a valid engine run
    assert learners["DFA"]["init"] == "zero"  # Nøkland's code: DFA from zero weights
    assert experiment.comparisons(config)["dfa_dropout"].number == "nokland2016/abstract/dfa-dropout"
    assert set(config["search"]["learners"]) == {"DFA", "BP"} and config["search"]["n_val"] > 0
