"""MNIST-1D (Greydanus, 2020), generated locally from the ``mnist1d`` package's templates.

``mnist1d.data.make_dataset`` with ``get_dataset_args()`` builds the standard set
(5000 examples, 80% train, seed 42) from code alone; its ``get_dataset`` would try
to download a pickle first, so it is never called. The arrays are cached as ``.npz``,
with the SHA-256 of the file recorded as it is written (:class:`~feedalign.data.store.Record`);
a cached file that does not match it (bit rot, a truncated copy, an edit) or has no record
is generated again, never loaded. Values are mnist1d's own (centred, unit variance), not
[0, 1]: that is the dataset.
"""
from __future__ import annotations

import hashlib
import io
import random
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..files import atomic_write
from .store import Record, cache_lock, cache_root, digest_or_none, folder_size, new_folder, read_verified

FILE = "mnist1d.npz"
_KEYS = ("x", "y", "x_test", "y_test")
_NOTED: set[Path] = set()


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
    """The cached arrays, or None if the file is absent, does not hash to its recorded SHA-256, or is not what
    :func:`generate` writes; a file that is there but unusable is said once on stderr (it is about to be replaced)."""
    recorded = Record(path.parent).get(path.name)
    try:
        raw, sha = read_verified(path)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error):
        raw, sha = b"", None
    if sha is None or sha != recorded:
        why = "has no recorded SHA-256 (written by an older feedalign)" if recorded is None else \
            "does not match the SHA-256 recorded when it was written"
        if path not in _NOTED:  # once: the caller looks again under the lock
            _NOTED.add(path)
            print(f"feedalign: note: {path} {why}; generating it again", file=sys.stderr)
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            data = {k: f[k] for k in _KEYS}
    except Exception:  # its recorded bytes, yet not arrays of ours: generate afresh rather than fail a run
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
        sha = digest_or_none(path) if path.is_file() else None
        state = "missing" if not path.is_file() else "present" if sha == Record(path.parent).get(FILE) else "damaged"
        return {"name": self.name, "present": state == "present", "state": state, "path": str(path.parent),
                "size_bytes": folder_size(path.parent) if path.parent.is_dir() else 0,
                "damaged": [FILE] if state == "damaged" else []}

    def fetch(self, data_dir=None, cache_dir=None, progress: bool = True) -> Path:
        """Generate the arrays into the cache unless a sound copy is there; needs no network.

        Holds the cache folder's lock, so two processes never generate at once; one that fails (a full disk)
        leaves no new folder.
        """
        path = self._path(cache_dir)
        with cache_lock(path.parent), new_folder(path.parent):
            if _read(path) is None:  # looked at again under the lock: another process may just have made it
                self._write(path, generate())
        return path.parent

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        blob = buffer.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
        # After the file: a kill in between leaves a file without its record, which is generated again.
        Record(path.parent).set(path.name, hashlib.sha256(blob).hexdigest())

    def arrays(self, data_dir=None, cache_dir=None, download: bool = True):
        """``(train_x, train_y, test_x, test_y)``: float32 ``(N, 40)`` and int64 ``(N,)``.

        Generating is local, so ``download=False`` still generates; an unwritable cache only costs a regeneration.
        """
        path = self._path(cache_dir)
        data = _read(path)
        if data is None:
            try:
                with cache_lock(path.parent), new_folder(path.parent):
                    data = _read(path)
                    if data is None:
                        data = generate()
                        self._write(path, data)
            except OSError:
                data = data or generate()
        return data["x"], data["y"], data["x_test"], data["y_test"]
