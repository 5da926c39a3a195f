"""The fused path's autograd nodes compiled (``nodes.cpp``), built once per machine.

On small networks a training step costs well under a millisecond on the CPU, and a Python autograd
Function's own bookkeeping a visible share of it: on 784-100-10:64 the Python one-hidden-layer node
(:class:`~feedalign.rules.fast._OneHiddenFunction`) cost about 25 us of a 0.53 ms step, enough for
BP's own C++ graph to beat every rule there although their arithmetic is the same (docs/speed.md).
The compiled nodes (the one-hidden-layer node, and the stack node for any depth, twin of
:class:`~feedalign.rules.fast._StackFunction`) run the same ATen kernels in the same order (the same
bits: tests/test_native.py) and call into Python once a step, for the rule's own part of backward.

They are built with ``torch.utils.cpp_extension`` the first time a network trains on the fused path
(about 30 s; needs a C++ compiler and Python's headers) into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), in a folder keyed by the source and the torch and Python versions;
later processes import them from there in milliseconds. ``make setup`` builds them ahead
(:func:`status`). Without a compiler, or where the build fails (a warning says why), the Python
nodes run: the same results, a little slower. ``FEEDALIGN_NATIVE=0`` turns them off;
``model.native_node = False`` for one model.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from feedalign.errors import ConfigError, first_line

NAME = "feedalign_nodes"
SOURCE = Path(__file__).with_name("nodes.cpp")
_LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"  # what cpp_extension.load writes

_log = logging.getLogger(__name__)
# The loaded module; False once it is known to be unavailable in this process (off, no compiler, a
# failed build: tried once, not at every step); None until first asked. A cache, as imports are.
_module = None


def enabled() -> bool:
    """Whether ``FEEDALIGN_NATIVE`` (default 1) lets the compiled nodes run."""
    value = os.environ.get("FEEDALIGN_NATIVE", "1").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"FEEDALIGN_NATIVE must be 1 or 0 (or on/off, true/false, yes/no); got {value!r}")


def build_directory() -> Path:
    """Where the module is built: one folder per source, torch and Python version."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    key = hashlib.sha256(SOURCE.read_bytes() + f"\n{torch.__version__}\n{sys.version}".encode()).hexdigest()[:16]
    return root / f"{NAME}-{key}"


def compiled():
    """The compiled module, built on first use; None where it is off or cannot be had. It has
    ``apply(input, w1, b1, w2, b2, inputs, plan, activation, slope, matrix_input, ask_source, save_output)``
    (the one-hidden-layer node),
    ``stack(input, weights, biases, has_bias, inputs, plan, activations, slopes, stacked, save_output, mode,
    ask_source)``
    and the nodes' autograd names ``NODE_NAME`` and ``STACK_NODE_NAME``."""
    global _module
    if _module is None:
        _module = _load() or False
    return _module or None


def loaded():
    """The compiled module if this process has loaded it, else None; never builds."""
    return _module or None


def _load():
    if not enabled():
        return None
    directory = build_directory()
    library = directory / f"{NAME}{_LIBRARY_SUFFIX}"
    try:
        if library.exists():  # it appears only by an atomic rename, so it is whole
            return _import(library)
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            return None  # no compiler: the Python nodes, quietly
        return _build(directory, library)
    except Exception as err:  # a compiler without Python's headers, an old torch, a library of another build
        warnings.warn(f"feedalign: the compiled fused-path nodes are unavailable ({first_line(err)}); using the "
                      f"Python nodes, which give the same results a little slower (build folder: {directory})",
                      RuntimeWarning, stacklevel=3)
        return None


def _import(library: Path):
    """The built module, imported straight from its file: no ``cpp_extension`` (which imports setuptools)."""
    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(directory: Path, library: Path):
    """Compile into a scratch folder of this process, then rename the library into place.

    Not ``cpp_extension``'s own lock in a shared folder: a build killed there (Ctrl-C, a killed
    worker) leaves its lock file, and every later build waits on it forever. Here a killed build
    leaves only its scratch folder; the lock that keeps concurrent processes from building twice
    is an ``flock``, which the system releases when its holder dies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory / "build.lock"):
        if library.exists():  # built by another process while this one waited
            return _import(library)
        _log.warning("feedalign: building the compiled fused-path nodes, once (about 30 s); "
                     "FEEDALIGN_NATIVE=0 skips it")
        from torch.utils import cpp_extension

        with tempfile.TemporaryDirectory(prefix="build-", dir=directory) as scratch:
            module = cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=["-O2"], build_directory=scratch)
            os.replace(Path(scratch) / library.name, library)
        return module


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (no lock where there is no ``fcntl``: concurrent builds then
    each finish in their own scratch folder, and the last rename wins)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def status() -> str:
    """One line: whether the compiled nodes are ready (building them now if they are not built yet) and where."""
    built = compiled() is not None
    return ("compiled fused-path nodes: " + (f"ready in {build_directory()}" if built else
                                             "unavailable; the Python nodes run (same results)"))
