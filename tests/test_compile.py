"""``torch.compile`` on a converted model, the supported way to take per-step overhead away: every rule
with a fused path, and a rule's general path on a conv net, give eager mode's gradients under it."""
import pytest
import torch
import torch.nn.functional as F

import feedalign
from feedalign.training.step import Step

# one rule of each kind of fused signals (the FA family shares one): each compiles in seconds
_KINDS = {}
for _rule in feedalign.rules():
    _signals = feedalign.get_rule(_rule).fused_signals()
    if _signals is not None and not feedalign.get_rule(_rule).exact:  # bp keeps plain autograd
        _KINDS.setdefault(type(_signals), _rule)
FUSED = sorted(_KINDS.values())


def _pair(build, rule):
    eager = feedalign.convert(build(), rule, seed=0)
    twin = feedalign.convert(build(), rule, seed=0)
    twin.load_state_dict(eager.state_dict())
    return eager, twin


def _train_both(eager, twin, x, y, steps=2):
    compiled = torch.compile(twin)
    for model, called in ((eager, eager), (twin, compiled)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = Step(called, optimizer, F.cross_entropy, generator=torch.Generator().manual_seed(0))
        for k in range(steps):
            step(x, y, k + 1)
    for (name, a), b in zip(eager.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("rule", FUSED)
def test_compiled_fused_path_trains_as_eager(rule):
    torch.manual_seed(0)
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    _train_both(*_pair(lambda: feedalign.mlp("12-10-8-4"), rule), x, y)


def test_compiled_general_path_on_a_conv_net():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    conv = lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),  # noqa: E731
                                       torch.nn.Linear(72, 3))
    _train_both(*_pair(conv, "fa"), x, y)
