"""RBMs and contrastive divergence (feedalign.rbm) against exact enumeration on tiny machines: the exact
log-likelihood gradient, the exact expectation of the CD-k estimator approaching it as k grows, the sampler
matching that expectation, and layer-wise pre-training of an MLP."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import feedalign
from feedalign.rbm import RBM, pretrain_mlp


def states(n):
    return np.array(list(itertools.product((0.0, 1.0), repeat=n)))


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_params(rbm):
    return (rbm.weight.detach().numpy(), rbm.visible_bias.detach().numpy(), rbm.hidden_bias.detach().numpy())


def exact_gradient(w, b, c, data):
    """d(-mean log p(data))/d(W, b, c) by enumerating every (v, h): -(<h v^T>_data - <h v^T>_model), etc."""
    vs, hs = states(w.shape[1]), states(w.shape[0])
    energy = -(vs @ b)[:, None] - (hs @ c)[None, :] - vs @ w.T @ hs.T  # (2^D, 2^H)
    joint = np.exp(-energy - (-energy).max())
    joint /= joint.sum()
    model_hv = np.einsum("vh,hi,vj->ij", joint, hs, vs)
    model_v, model_h = joint.sum(1) @ vs, joint.sum(0) @ hs
    ph = sigmoid(data @ w.T + c)
    return (-(ph.T @ data / len(data) - model_hv), -(data.mean(0) - model_v), -(ph.mean(0) - model_h))


def cd_expectation(w, b, c, data, k):
    """The exact expectation of the CD-k estimate: v_k's distribution is the data's times T^k, with
    T[v, v'] = sum_h p(h | v) p(v' | h), every factor a product of Bernoullis (enumerated)."""
    vs, hs = states(w.shape[1]), states(w.shape[0])
    def bernoulli(p, x):  # p (A, n) probabilities of each row; x (B, n) states: (A, B) probabilities
        return np.prod(np.where(x[None] == 1.0, p[:, None], 1.0 - p[:, None]), axis=2)
    h_given_v = bernoulli(sigmoid(vs @ w.T + c), hs)  # (2^D, 2^H)
    v_given_h = bernoulli(sigmoid(hs @ w + b), vs)  # (2^H, 2^D)
    transition = h_given_v @ v_given_h
    index = {tuple(v): i for i, v in enumerate(vs)}
    start = np.zeros(len(vs))
    for v in data:
        start[index[tuple(v)]] += 1.0 / len(data)
    p_k = start @ np.linalg.matrix_power(transition, k)
    ph_data, ph_all = sigmoid(data @ w.T + c), sigmoid(vs @ w.T + c)
    return (-(ph_data.T @ data / len(data) - (ph_all * p_k[:, None]).T @ vs),
            -(data.mean(0) - p_k @ vs), -(ph_data.mean(0) - p_k @ ph_all))


def tiny(seed=0, visible=4, hidden=3, scale=1.0):
    torch.manual_seed(seed)
    rbm = RBM(visible, hidden).double()
    with torch.no_grad():
        rbm.weight.normal_(0.0, scale)
        rbm.visible_bias.normal_(0.0, 0.5)
        rbm.hidden_bias.normal_(0.0, 0.5)
    data = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=float)[:, :visible]
    return rbm, data


@pytest.mark.parametrize("visible, hidden", [(4, 3), (3, 4)])  # both branches of log_partition
def test_exact_log_likelihood_gradient_by_enumeration(visible, hidden):
    rbm, data = tiny(visible=visible, hidden=hidden)
    (-rbm.log_likelihood(torch.tensor(data))).backward()
    for param, expected in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias), exact_gradient(*numpy_params(rbm), data)):
        np.testing.assert_allclose(param.grad.numpy(), expected, rtol=1e-10, atol=1e-12)
    # log Z against the joint sum
    w, b, c = numpy_params(rbm)
    vs, hs = states(visible), states(hidden)
    log_z = np.log(np.exp((vs @ b)[:, None] + (hs @ c)[None, :] + vs @ w.T @ hs.T).sum())
    np.testing.assert_allclose(rbm.log_partition().item(), log_z, rtol=1e-12)


def test_cd_k_expectation_approaches_the_exact_gradient_as_k_grows():
    """CD-1 is biased on a machine with strong weights; the bias shrinks with k and vanishes as the
    chain mixes (v_k's distribution -> the model's)."""
    rbm, data = tiny(scale=1.5)
    params = numpy_params(rbm)
    exact = np.concatenate([g.ravel() for g in exact_gradient(*params, data)])
    errors = []
    for k in (1, 2, 5, 20, 200):
        cd = np.concatenate([g.ravel() for g in cd_expectation(*params, data, k)])
        errors.append(np.linalg.norm(cd - exact) / np.linalg.norm(exact))
    assert errors[0] > 0.05, errors  # CD-1 really is biased here: the comparison below means something
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8, errors


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_cd_matches_its_exact_expectation(k):
    """The sampler: cd_loss's gradient averaged over many chains is the enumerated CD-k expectation
    (Monte Carlo error about 0.004 per entry at 24000 chains)."""
    rbm, data = tiny(scale=1.5)
    batch = torch.tensor(np.repeat(data, 4800, axis=0))
    rbm.cd_loss(batch, k, torch.Generator().manual_seed(k)).backward()
    expected = cd_expectation(*numpy_params(rbm), data, k)
    for param, e in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias), expected):
        np.testing.assert_allclose(param.grad.numpy(), e, atol=0.02)
    if k == 1:  # and CD-1 is told apart from the exact gradient at this sample size (its bias)
        far = exact_gradient(*numpy_params(rbm), data)
        assert np.abs(rbm.weight.grad.numpy() - far[0]).max() > 0.05


def test_cd_training_raises_the_exact_log_likelihood():
    torch.manual_seed(0)
    rbm = RBM(6, 4).double()
    prototypes = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    flips = torch.rand(200, 6, generator=generator, dtype=torch.float64) < 0.05
    data = (prototypes[torch.arange(200) % 2] + flips).remainder(2)
    before = rbm.log_likelihood(data).item()
    optimizer = torch.optim.SGD(rbm.parameters(), lr=0.3, momentum=0.5)
    for _ in range(60):
        optimizer.zero_grad()
        rbm.cd_loss(data, 1, generator).backward()
        optimizer.step()
    after = rbm.log_likelihood(data).item()
    assert after > before + 1.5, (before, after)  # from about uniform (-6 log 2 = -4.16 nats) to about -2


def test_pretrain_mlp_copies_each_rbm_into_its_layer():
    torch.manual_seed(0)
    model = feedalign.mlp("6-5-4-2", activation="sigmoid").double()
    output_before = model[-1].weight.detach().clone()
    x = (torch.rand(64, 6, dtype=torch.float64) < 0.3).double()
    rbms = pretrain_mlp(model, x, epochs=3, lr=0.1, k=1, batch_size=16, seed=1)
    assert [(r.visible, r.hidden) for r in rbms] == [(6, 5), (5, 4)]
    for layer, rbm in zip((model[0], model[2]), rbms):
        torch.testing.assert_close(layer.weight, rbm.weight, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias, rbm.hidden_bias, rtol=0, atol=0)
    torch.testing.assert_close(model[-1].weight, output_before, rtol=0, atol=0)
    # the sigmoid MLP's hidden layers are the RBMs' p(h | v), the second trained on the first's
    with torch.no_grad():
        torch.testing.assert_close(model[1](model[0](x)), rbms[0].hidden_probabilities(x))
    again = feedalign.mlp("6-5-4-2", activation="sigmoid").double()
    pretrain_mlp(again, x, epochs=3, lr=0.1, k=1, batch_size=16, seed=1)
    torch.testing.assert_close(again[0].weight, model[0].weight, rtol=0, atol=0)  # the seed fixes every draw
    converted = feedalign.convert(model, "dtp")  # then any rule trains it
    torch.nn.functional.cross_entropy(converted(x), torch.zeros(64, dtype=torch.long)).backward()


def test_errors():
    with pytest.raises(ValueError, match="positive"):
        RBM(0, 3)
    with pytest.raises(TypeError, match="hidden"):
        RBM(3, 2.5)
    rbm = RBM(3, 2)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        rbm.cd_loss(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rbm.cd_loss(torch.full((4, 3), 2.0))
    with pytest.raises(TypeError, match="tensor"):
        rbm.log_likelihood([[0, 1, 0]])
    with pytest.raises(ValueError, match="k"):
        rbm.cd_loss(torch.zeros(4, 3), k=0)
    with pytest.raises(TypeError, match="k"):
        rbm.gibbs(torch.zeros(4, 3), k=1.0)
    with pytest.raises(ValueError, match="too many"):
        RBM(30, 25).log_partition()
    x = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="nn.Sequential"):
        pretrain_mlp(torch.nn.Linear(3, 2), x)
    with pytest.raises(ValueError, match="hidden layer"):
        pretrain_mlp(feedalign.mlp("3-2"), x)
    with pytest.raises(ValueError, match="features"):
        pretrain_mlp(feedalign.mlp("4-3-2"), x)
    with pytest.raises(ValueError, match="biases"):
        pretrain_mlp(feedalign.mlp("3-3-2", bias=False), x)
    with pytest.raises(ValueError, match="parameter-free"):
        pretrain_mlp(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2)), x)
    with pytest.raises(ValueError, match="lr"):
        pretrain_mlp(feedalign.mlp("3-3-2"), x, lr=float("nan"))
    with pytest.raises(ValueError, match="epochs"):
        pretrain_mlp(feedalign.mlp("3-3-2"), x, epochs=0)
    with pytest.raises(TypeError, match="batch_size"):
        pretrain_mlp(feedalign.mlp("3-3-2"), x, batch_size=2.0)
    with pytest.raises(TypeError, match="tensor"):
        pretrain_mlp(feedalign.mlp("3-3-2"), [[0.0, 1.0, 0.0]])
