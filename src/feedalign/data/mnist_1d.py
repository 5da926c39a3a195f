"""MNIST-1D (Greydanus, 2020), generated locally from the ``mnist1d`` package's templates.

``mnist1d.data.make_dataset`` with ``get_dataset_args()`` builds the standard set
(5000 examples, 80% train, seed 42) from code alone; its ``get_dataset`` would try
to download a pickle first, so it is never called. The arrays are cached as ``.npz``.
Values are mnist1d's own (centred, unit variance), not [0, 1]: that is the dataset.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import atomic_write
from .store import cache_root, folder_size

FILE = "mnist1d.npz"
_KEYS = ("x", "y", "x_test", "y_test")


def generate() -> dict[str, np.ndarray]:
    """The default MNIST-1D: ``x`` (4000, 40), ``y`` (4000,), ``x_test`` (1000, 40), ``y_test`` (1000,)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DatasetError(f"mnist1d needs the `mnist1d` package ({err}); install it with `pip install mnist1d`") from None
    # make_dataset reseeds the global `random` and numpy generators: put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k], dtype=np.float32 if k.startswith("x") else np.int64) for k in _KEYS}


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is absent or not what :func:`generate` writes."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in _KEYS}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    ok = (data["x"].ndim == 2 and data["x_test"].ndim == 2 and data["x"].shape[1] == data["x_test"].shape[1]
          and data["y"].shape == (len(data["x"]),) and data["y_test"].shape == (len(data["x_test"]),))
    return data if ok else None


@dataclass(frozen=True)
class Mnist1dDataset:
    name: str = "mnist1d"
    num_classes: int = 10
    input_shape: tuple = (40,)
    default_validation: int | float = 0.2
    kind: str = field(default="mnist1d", repr=False)

    def _path(self, cache_dir) -> Path:
        return cache_root(cache_dir) / self.name / FILE

    def status(self, data_dir=None, cache_dir=None) -> dict:
        path = self._path(cache_dir)
        return {"name": self.name, "present": path.is_file(), "path": str(path.parent),
                "size_bytes": folder_size(path.parent) if path.parent.is_dir() else 0}

    def fetch(self, data_dir=None, cache_dir=None, progress: bool = True) -> Path:
        """Generate the arrays into the cache unless a sound copy is there; needs no network."""
        path = self._path(cache_dir)
        if _read(path) is None:
            buffer = io.BytesIO()
            np.savez(buffer, **generate())
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buffer.getvalue())
        return path.parent

    def arrays(self, data_dir=None, cache_dir=None, download: bool = True):
        """``(train_x, train_y, test_x, test_y)``: float32 ``(N, 40)`` and int64 ``(N,)``.

        Generating is local, so ``download=False`` still generates; an unwritable cache only costs a regeneration.
        """
        data = _read(self._path(cache_dir))
        if data is None:
            try:
                data = _read(self.fetch(cache_dir=cache_dir) / FILE)
            except OSError:
                data = None
            data = data or generate()
        return data["x"], data["y"], data["x_test"], data["y_test"]
