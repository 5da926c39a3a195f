"""The README's Python examples run as written, in order, in one namespace (as a reader would type them).

Blocks whose first line is ``# needs lightning`` or ``# needs torch.compile`` run in their own
tests: lightning is part of the test extra (a missing one fails, never skips); the second is slow (it compiles).
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine a second one mostly spins."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run_blocks(blocks, namespace=None) -> dict:
    namespace = {} if namespace is None else namespace
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


def plain_blocks() -> list[str]:
    return [b for b in python_blocks() if not b.startswith("# needs ")]


def needing(what: str) -> str:
    (block,) = [b for b in python_blocks() if b.startswith(f"# needs {what}\n")]
    return block


@pytest.mark.integration
@pytest.mark.slow
def test_readme_python_examples_run_verbatim(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = plain_blocks()
    assert len(blocks) >= 4  # the first example, the DataLoader, the rule-agnostic loop, the alignment table
    namespace = run_blocks(blocks)
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy after one epoch: ([0-9.]+)", out).group(1))
    assert accuracy > 0.85  # one epoch of DFA on MNIST: the README says about 0.92
    listed = re.search(r"print\(feedalign\.rules\(\)\)\s+# (\[.*\])", README.read_text()).group(1)
    assert listed in out  # the README's comment shows what the line prints
    assert len(namespace["feedback"]) == 1  # DFA: one matrix for all hidden layers


@pytest.mark.integration
def test_readme_lightning_example_trains(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(python_blocks()[:1])  # the first example: data, torch, feedalign
    run_blocks([needing("lightning")], namespace)  # imports DataLoader itself: it runs pasted on its own
    assert namespace["trainer"].global_step == 50


@pytest.mark.integration
@pytest.mark.slow
def test_readme_torch_compile_example_trains(monkeypatch, tmp_path):
    import torch
    import feedalign
    monkeypatch.chdir(tmp_path)
    namespace = {"torch": torch, "feedalign": feedalign, "data": feedalign.data.load("mnist")}
    torch.manual_seed(0)
    run_blocks([needing("torch.compile")], namespace)
    torch.manual_seed(0)  # the same initial weights, untrained
    untrained = feedalign.convert(feedalign.mlp("784-256-10", activation="tanh"), "fa", seed=0)
    trained = namespace["model"]
    for (name, p), q in zip(trained.named_parameters(), untrained.parameters()):
        assert torch.isfinite(p).all() and not torch.equal(p, q), name  # every layer learned
    x, y = namespace["data"].test_x, namespace["data"].test_y
    with torch.no_grad():
        assert (trained(x).argmax(1) == y).float().mean() > 0.7  # 100 steps of FA
