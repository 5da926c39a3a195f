"""Alignment logged during training: the callback, and FA/DFA aligning on MNIST-1D."""
from __future__ import annotations

import math

import pytest
import torch

from feedalign.diagnostics.callback import AlignmentCallback, read_alignment
from feedalign.training.config import Config
from feedalign.training.engine import train


def run(tmp_path, rule, every, epochs=6, name=None):
    config = Config(dataset="mnist1d", architecture="40-100-100-10", activation="tanh", rule=rule, epochs=epochs,
                    lr=0.05, batch_size=64, out_dir=str(tmp_path), name=name or f"{rule}-{every}",
                    alignment_every=0)  # only the callback given here measures
    callbacks = [AlignmentCallback(every=every)] if every is not None else []
    return train(config, callbacks=callbacks, progress="none")


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_last_hidden_layer_aligns_on_mnist1d(tmp_path, rule):
    """A few hundred SGD steps of a 40-100-100-10 tanh net: the last hidden layer's signal
    angle starts near 90 degrees (random feedback) and falls well below it."""
    result = run(tmp_path, rule, every=50)  # 3200 training examples / 64 = 50 steps per epoch
    rows = [r for r in read_alignment(result.run_dir) if r["layer"] == 2]
    steps = [r["step"] for r in rows]
    assert steps == list(range(0, 301, 50))
    first, last = rows[0]["signal_angle"], rows[-1]["signal_angle"]
    assert last < 85.0 and last < first - 5.0, [round(r["signal_angle"], 1) for r in rows]
    assert all(r["rule"] == rule for r in rows)


def test_callback_rows_and_no_effect_on_training(tmp_path):
    with_probe = run(tmp_path, "dfa", every=20, epochs=1)
    without = run(tmp_path, "dfa", every=None, epochs=1)
    for p, q in zip(with_probe.model.parameters(), without.model.parameters()):
        assert torch.equal(p, q), "measuring alignment changed the training trajectory"
    rows = read_alignment(with_probe.run_dir)
    assert [r["step"] for r in rows[::3]] == [0, 20, 40]
    assert [r["layer"] for r in rows[:3]] == [1, 2, 3]
    assert rows[0]["epoch"] == 0 and rows[3]["epoch"] == 1
    assert math.isnan(rows[2]["weight_angle"]) and "output layer" in rows[2]["reason"]
    assert rows[2]["signal_angle"] == 0.0


def test_config_alignment_every_logs_without_explicit_callback(tmp_path):
    config = Config(dataset="mnist1d", architecture="40-16-10", rule="fa", epochs=1, out_dir=str(tmp_path),
                    name="cfg", alignment_every=25)
    result = train(config, progress="none")
    assert [r["step"] for r in read_alignment(result.run_dir)[::2]] == [0, 25, 50]
    with pytest.raises(ValueError, match="alignment_every must be >= 0"):
        config.replace(alignment_every=-1)


def test_callback_disabled_and_bad_arguments(tmp_path):
    result = run(tmp_path, "fa", every=0, epochs=1)
    assert not (result.run_dir / "alignment.jsonl").exists()
    with pytest.raises(ValueError, match="no alignment.jsonl"):
        read_alignment(result.run_dir)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="alignment interval"):
            AlignmentCallback(every=bad)
    with pytest.raises(ValueError, match="probe size"):
        AlignmentCallback(probe_size=0)
