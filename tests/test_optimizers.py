"""GravesRMSprop (the centred RMSprop of Lee et al.'s DTP code) against a float64 NumPy transcription of
donghyunlee/dtp ``util.rms_prop``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from feedalign.training.optimizers import GravesRMSprop


def reference(w, grads, lr, momentum=0.9, decay=0.95, stabilizer=1e-3):
    inc, avg, avg_sqr = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        avg = decay * avg + (1 - decay) * g
        avg_sqr = decay * avg_sqr + (1 - decay) * g ** 2
        inc = momentum * inc - lr * g / np.sqrt(avg_sqr - avg ** 2 + stabilizer)
        w = w + inc
    return w


def test_steps_match_the_dtp_code_in_float64():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) * s for s in (1.0, 0.1, 3.0, 0.5, 2.0, 1e-3)]
    w = torch.nn.Parameter(torch.tensor(w0))
    optimizer = GravesRMSprop([w], lr=0.01)
    for g in grads:
        w.grad = torch.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(w.detach().numpy(), reference(w0, grads, 0.01), rtol=1e-12, atol=1e-14)


def test_groups_keep_their_own_rates_and_state_round_trips():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = GravesRMSprop([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    assert torch.allclose(1 - a.detach(), 10 * (1 - b.detach()))
    twin = GravesRMSprop([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    twin.load_state_dict(optimizer.state_dict())
    assert torch.equal(twin.state[a]["delta"], optimizer.state[a]["delta"])


@pytest.mark.parametrize("kwargs, message", [({"lr": -1.0}, "lr must be"), ({"decay": 1.0}, "decay must be"),
                                             ({"momentum": -0.1}, "momentum must be"),
                                             ({"stabilizer": 0.0}, "stabilizer must be positive")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GravesRMSprop([torch.nn.Parameter(torch.ones(1))], **kwargs)
