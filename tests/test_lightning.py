"""PyTorch Lightning for real: the README's LightningModule moves the weights by the rule's signals, and
DDP on CPU (2 processes, gloo) keeps every rank's feedback matrices identical.

lightning is part of the test extra (pyproject.toml), so these tests fail rather than skip without it.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import feedalign

HERE = Path(__file__).parent


@pytest.mark.integration
def test_lightning_step_is_the_rules_update_not_backprops(monkeypatch, tmp_path, mnist):
    """One Lightning step of the README's module on one batch gives W - lr * (the rule's gradient), which
    for DFA's hidden layer is far from W - lr * (the true gradient)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from test_readme import needing, run_blocks
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace = {"torch": torch, "feedalign": feedalign, "data": None}
    block = needing("lightning")
    run_blocks([block[:block.index("trainer = L.Trainer")]], namespace)  # the class, as the README defines it
    torch.manual_seed(0)
    module = namespace["FeedbackAlignmentModule"](architecture="784-64-64-10", rule="dfa", lr=0.1)
    data = feedalign.data.load("mnist")
    x, y = data.train_x[:64], data.train_y[:64]

    def grads(model, exact: bool) -> list[torch.Tensor]:
        model = copy.deepcopy(model)
        with feedalign.exact_gradients(model) if exact else torch.enable_grad():
            torch.nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    start = [p.detach().clone() for p in module.model.parameters()]
    rule_grads, true_grads = grads(module.model, False), grads(module.model, True)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64))
    assert trainer.global_step == 1
    after = list(module.model.parameters())
    for w0, w1, g in zip(start, after, rule_grads):
        torch.testing.assert_close(w1.detach(), w0 - 0.1 * g)
    hidden = 0  # the first layer's weight: DFA's signal there is e B_1, not the backpropagated delta
    by_backprop = start[hidden] - 0.1 * true_grads[hidden]
    moved = (after[hidden].detach() - start[hidden]).norm()
    assert (after[hidden].detach() - by_backprop).norm() > 0.3 * moved


@pytest.mark.integration
@pytest.mark.slow
def test_lightning_ddp_on_cpu_broadcasts_feedback_and_trains_in_step(tmp_path, mnist):
    """`strategy="ddp"`, 2 processes, gloo: the ranks start with different feedback matrices and weights
    (seeded by rank), DDP broadcasts rank 0's buffers and parameters when it wraps the module, and after 4
    steps with averaged gradients every rank holds the same feedback and the same trained weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH")) if p)}
    ran = subprocess.run([sys.executable, str(HERE / "lightning_ddp.py"), str(tmp_path)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (zero["rank"], one["rank"], zero["world_size"], zero["steps"], one["steps"]) == (0, 1, 2, 4, 4)
    assert zero["backend"] == one["backend"] == "gloo"
    assert not torch.equal(zero["before"]["feedback"], one["before"]["feedback"])  # different seeds
    for key, value in zero["after"].items():
        assert torch.equal(value, one["after"][key]), key
    assert torch.equal(one["after"]["feedback"], zero["before"]["feedback"])  # rank 0's, never trained
    trained = [k for k in zero["after"] if k != "feedback"]
    assert trained and all(not torch.equal(zero["after"][k], zero["before"][k]) for k in trained)
