import sys
from pathlib import Path

import pytest

# tests import shared helpers (reference.py) by name
sys.path.insert(0, str(Path(__file__).parent))

import feedalign  # noqa: E402
from feedalign.rules import base, register  # noqa: E402

import sample_rule as _sample  # noqa: E402


@pytest.fixture
def sample_rule(monkeypatch):
    """Registers the test suite's own FA-type rule for one test; the registry is restored after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(_sample.SparseFeedbackAlignment)
    return _sample.NAME


@pytest.fixture(params=[*feedalign.rules(), _sample.NAME])
def contract_rule(request):
    """Every registered rule, and the test suite's own rule (registered for the test only)."""
    if request.param == _sample.NAME:
        request.getfixturevalue("sample_rule")
    return request.param
