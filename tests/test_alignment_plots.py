"""`feedalign plot ...` on two tiny MNIST-1D runs, and its one-line errors."""
from __future__ import annotations

import pytest
import torch

from feedalign.cli import main
from feedalign.diagnostics import AlignmentCallback
from feedalign.diagnostics.plots import hidden_activations
from feedalign.training.checkpoint import load_run
from feedalign.training.config import Config
from feedalign.training.engine import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for rule in ("bp", "dfa"):
        config = Config(dataset="mnist1d", architecture="40-16-12-10", rule=rule, epochs=1, out_dir=str(out), name=rule)
        train(config, callbacks=[AlignmentCallback(every=10)], progress="none")
    return out / "bp", out / "dfa"


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_alignment_curves_and_hidden(runs, tmp_path, capsys):
    bp, dfa = runs
    assert main(["plot", "alignment", str(bp), str(dfa), "-o", str(tmp_path / "a.png")]) == 0
    assert is_png(tmp_path / "a.png")
    assert main(["plot", "alignment", str(dfa), "--metric", "weight_angle"]) == 0
    assert is_png(dfa / "alignment.png")
    assert main(["plot", "curves", str(bp), str(dfa), "-o", str(tmp_path / "c.png")]) == 0
    assert is_png(tmp_path / "c.png")
    assert main(["plot", "hidden", str(bp), str(dfa), "-o", str(tmp_path / "h.png"), "--per-class", "5"]) == 0
    assert is_png(tmp_path / "h.png")
    assert f"wrote {tmp_path / 'h.png'}" in capsys.readouterr().out


def test_hidden_activations_are_the_layer_outputs(runs):
    config, model, data = load_run(runs[1])
    x = data.test_x[:4]
    h = hidden_activations(model, x, layer=1)
    torch.testing.assert_close(h, torch.tanh(model[0](x)))
    assert hidden_activations(model, x, layer=-1).shape == (4, 12)


@pytest.mark.parametrize("argv, message", [
    (["plot"], "choose what to draw"),
    (["plot", "alignment", "/no/such/run"], "does not exist"),
    (["plot", "hidden", "."], "not a run directory"),
    (["plot", "bogus", "x"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_run_without_alignment_or_layer(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text((runs[0] / "config.toml").read_text())
    assert main(["plot", "alignment", str(bare)]) == 2
    assert "no alignment.jsonl" in capsys.readouterr().err
    assert main(["plot", "hidden", str(bare)]) == 2
    assert "no checkpoints/best.pt" in capsys.readouterr().err
    assert main(["plot", "hidden", str(runs[0]), "--layer", "5"]) == 2
    assert "hidden layer 5 does not exist" in capsys.readouterr().err
