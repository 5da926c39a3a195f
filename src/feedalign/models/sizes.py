"""Size strings of MLPs (``"784-800-800-10"``, ``"784-240x7-10"``) and the memory a network needs to train."""
from __future__ import annotations

import os
import re

from ..errors import ConfigError, ConfigTypeError

_TOKEN = re.compile(r"^\(?(\d+)(?:x(\d+))?\)?$")
MAX_LAYERS = 100_000  # far past any network trained here; a bound so a typo cannot build a list of 10^11 sizes
GB = 1e9


def training_bytes(sizes: list[int]) -> int:
    """A lower bound on the memory (bytes) that training the MLP ``sizes`` needs: float32 weights and
    biases, their gradients, and feedback matrices of the same size (FA's; BP has none, DFA's are smaller,
    but the optimizer's momentum takes as much again). Exact Python integers: no overflow at any width."""
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return 3 * 4 * params


def available_memory_bytes() -> int | None:
    """Memory the system can give a new allocation now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(architecture: str, max_memory: float | None = None) -> None:
    """ConfigError (one line) when the MLP ``architecture`` cannot fit: its :func:`training_bytes` exceed
    ``max_memory`` (GB) or the memory available now. Called before any tensor is allocated."""
    sizes = parse_sizes(architecture)
    need = training_bytes(sizes)
    available = available_memory_bytes()
    for limit, what in ((None if max_memory is None else max_memory * GB, "max_memory"), (available, "available memory")):
        if limit is not None and need > limit:
            raise ConfigError(f"architecture {architecture!r} needs at least {need / GB:.3g} GB to train "
                              f"({sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])):.3g} parameters, plus "
                              f"gradients and feedback), more than the {limit / GB:.3g} GB of {what}; use narrower "
                              f"or fewer layers")


def parse_sizes(spec: str) -> list[int]:
    """Parse an architecture string into layer widths.

    ``"784-800-800-10"`` gives ``[784, 800, 800, 10]``; ``WxN`` repeats a width,
    so ``"784-240x7-10"`` (or ``"784-(240x7)-10"``) has seven hidden layers of 240.
    """
    expected = "sizes joined by '-', e.g. '784-800-800-10' or '784-240x7-10' (positive integers, at least input and output)"
    if not isinstance(spec, str):
        raise ConfigTypeError(f"architecture must be a string of {expected}; got {spec!r}")
    sizes: list[int] = []
    for token in spec.strip().split("-"):
        match = _TOKEN.match(token.strip())
        if not match:
            raise ConfigError(f"malformed architecture {spec!r}: token {token!r} is not a size; expected {expected}")
        width, repeat = int(match.group(1)), int(match.group(2) or 1)
        if width <= 0 or repeat <= 0:
            raise ConfigError(f"malformed architecture {spec!r}: sizes and repeats must be positive; expected {expected}")
        if len(sizes) + repeat > MAX_LAYERS:  # before the list is built: 240x99999999999 must not fill the memory
            raise ConfigError(f"architecture {spec!r} has more than {MAX_LAYERS} layers; use fewer")
        sizes.extend([width] * repeat)
    if len(sizes) < 2:
        raise ConfigError(f"malformed architecture {spec!r}: needs at least an input and an output size; expected {expected}")
    return sizes
