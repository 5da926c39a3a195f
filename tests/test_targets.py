"""The one place the target-reading rules (drtp, pepita, chl, ff, np, wp) take their target from."""
import pytest
import torch
import torch.nn.functional as F

import feedalign
from feedalign.rules._target import as_rows, holding, recover

from contracts import contract


def test_as_rows_takes_class_indices_or_rows_of_the_output_shape():
    indices = torch.tensor([[2, 0], [1, 1]])
    rows = as_rows(indices, torch.Size((2, 2, 3)), torch.float64, rule="drtp")
    assert rows.dtype == torch.float64 and rows.shape == (4, 3)
    torch.testing.assert_close(rows, F.one_hot(indices.reshape(-1), 3).double())
    soft = torch.rand(2, 2, 3, requires_grad=True)
    out = as_rows(soft, torch.Size((2, 2, 3)), torch.float32, rule="drtp")
    assert not out.requires_grad and torch.equal(out, soft.detach().reshape(4, 3))


@pytest.mark.parametrize("target, match", [
    (torch.tensor([0, 1, 2]), r"drtp target of class indices must have shape \(2,\), got \(3,\)"),
    (torch.tensor([0, 3]), r"drtp target must hold class indices in \[0, 3\), got values from 0 to 3"),
    (torch.tensor([-1, 0]), r"class indices in \[0, 3\), got values from -1 to 0"),
    (torch.rand(2, 4), r"drtp target must be class indices or of the output's shape \(2, 3\), got \(2, 4\)"),
])
def test_as_rows_errors_say_what_was_expected(target, match):
    with pytest.raises(ValueError, match=match):
        as_rows(target, torch.Size((2, 3)), torch.float32, rule="drtp")


def test_holding_restores_the_previous_target_even_after_an_error():
    class State:
        target = None
    state, first, second = State(), torch.zeros(1), torch.ones(1)
    with holding(state, "target", first, rule="x"):
        with pytest.raises(RuntimeError):
            with holding(state, "target", second, rule="x"):
                assert state.target is second
                raise RuntimeError
        assert state.target is first
    assert state.target is None
    with pytest.raises(TypeError, match="x target must be a tensor, got list"):
        with holding(state, "target", [0], rule="x"):
            pass
    assert state.target is None


def test_recover_inverts_the_mean_cross_entropy_and_names_the_rule():
    torch.manual_seed(0)
    y, t = torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randint(0, 3, (5,))
    F.cross_entropy(y, t).backward()
    torch.testing.assert_close(recover(y.detach(), y.grad), F.one_hot(t, 3).double())
    with pytest.raises(ValueError, match=r"pepita could not recover a target .*feedalign\.rules\.pepita\.target"):
        recover(y.detach(), -10 * y.grad, rule="pepita")
    with pytest.raises(ValueError, match=r"chl could not recover .*feedalign\.rules\.energy\.target"):
        recover(y.detach(), -10 * y.grad, rule="chl")


@pytest.mark.parametrize("rule", [r for r in feedalign.rules() if contract(r).target_context is not None])
def test_every_target_block_rejects_non_tensor_and_out_of_range_targets(rule):
    torch.manual_seed(0)
    model, given = feedalign.convert(feedalign.mlp("4-5-3"), rule, seed=0), contract(rule).target_context
    with pytest.raises(TypeError, match="must be a tensor"):
        with given(model, [0, 1]):
            pass
    if contract(rule).strict_target:
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            with given(model, torch.tensor([0, 1, 3, 0])):
                model(torch.rand(4, 4))
