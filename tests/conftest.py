import sys
from pathlib import Path

import pytest

# tests import shared helpers (reference.py) by name
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def sample_rule():
    """Registers the test suite's own FA-type rule (sample_rule.py) for one test; gone after it."""
    import feedalign
    from feedalign.rules import base, register
    import sample_rule as sample

    register(sample.SparseFeedbackAlignment)
    try:
        yield sample.NAME
    finally:
        del base._REGISTRY[sample.NAME]  # the registry has no public unregister
        assert sample.NAME not in feedalign.rules()


@pytest.fixture(scope="session")
def mnist():
    """Skips the test when MNIST is not fetched here (`make data` fetches it)."""
    import feedalign.data
    try:
        feedalign.data.load("mnist", download=False)
    except feedalign.data.DatasetError as err:
        pytest.skip(str(err).splitlines()[0])
