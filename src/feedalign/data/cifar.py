"""CIFAR-10, from the python pickle batches in ``cifar-10-batches-py/``.

Sources: the user's folder, the cache, then the canonical tarball (verified by its
published MD5). No package registry ships CIFAR-10. Batches read from a folder get a
structural check instead of a checksum (``b'data'`` uint8 ``(n, 3072)``, ``b'labels'``
of length n), and are unpickled by an unpickler that only builds numpy arrays, since a
pickle from an arbitrary folder could otherwise run code. Batches unpacked into the cache
have their SHA-256 recorded (``.sha256.json`` in the batches' folder, renamed into place
with them) and are hashed at every load: a damaged one is fetched again, never unpickled.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .store import (Record, SourceUnavailable, cache_lock, cache_root, data_root, download, folder_size, install_stream,
                    new_folder, read_verified, remove)

FOLDER = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"),
            ("_codecs", "encode")}  # how Python 3 pickles bytes at protocol 2


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path, raw: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: images uint8 ``(n, 3, 32, 32)`` and labels int64 ``(n,)``; DatasetError if malformed.

    ``raw``: the file's bytes when already read (and hashed); ``path`` then only names it.
    """
    fix = "delete it and run `feedalign data fetch cifar10`, or point data_dir at a folder with the original batches"
    try:
        with (io.BytesIO(raw) if raw is not None else open(path, "rb")) as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetError(f"{path} is not a readable CIFAR-10 batch ({err}); {fix}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path} is not a CIFAR-10 batch: b'data' should be a uint8 array (n, 3072), got {got}; {fix}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros(0, dtype=np.int64) - 1
    if labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"{path} is not a CIFAR-10 batch: b'labels' should be {len(data)} labels in 0..9; {fix}")
    return data.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True)
class CifarDataset:
    """CIFAR-10's six pickle batches and where to get them."""

    name: str = "cifar10"
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: str = "c58f30108f718f92721af3b95e74349a"
    num_classes: int = 10
    input_shape: tuple = (3, 32, 32)
    default_validation: int | float = 10000
    kind: str = field(default="cifar", repr=False)

    def _find(self, root: Path) -> Path | None:
        for folder in (root / self.name / FOLDER, root / FOLDER, root / self.name, root):
            if all((folder / b).is_file() for b in (*TRAIN_BATCHES, TEST_BATCH)):
                return folder
        return None

    def _cache(self, cache_dir) -> Path:
        return cache_root(cache_dir) / self.name / FOLDER

    def _check(self, folder: Path) -> None:
        for b in (*TRAIN_BATCHES, TEST_BATCH):
            read_batch(folder / b)

    def _cached(self, folder: Path) -> tuple[dict[str, bytes], list[str]]:
        """``(bytes of each sound batch, names of the missing or damaged ones)`` in the cache ``folder``.

        Sound: hashes to the SHA-256 recorded when it was unpacked; a batch with no record
        (unpacked by an older feedalign) must pass the structural check instead.
        """
        record, good, bad = Record(folder), {}, []
        for b in (*TRAIN_BATCHES, TEST_BATCH):
            try:
                raw, sha = read_verified(folder / b)
            except FileNotFoundError:
                bad.append(b)
                continue
            expected = record.get(b)
            if expected is None:
                try:
                    read_batch(folder / b, raw)
                except DatasetError:
                    bad.append(b)
                    continue
            elif sha != expected:
                bad.append(b)
                continue
            good[b] = raw
        return good, bad

    def status(self, data_dir=None, cache_dir=None) -> dict:
        root = data_root(data_dir)
        user = self._find(root) if root is not None else None
        if user is not None:
            return {"name": self.name, "present": True, "state": "present", "path": str(user),
                    "size_bytes": folder_size(user), "damaged": []}
        folder = self._cache(cache_dir)
        damaged = self._cached(folder)[1] if folder.is_dir() else []
        state = "missing" if not folder.is_dir() else "damaged" if damaged else "present"
        return {"name": self.name, "present": state == "present", "state": state, "path": str(folder),
                "size_bytes": folder_size(folder) if folder.is_dir() else 0, "damaged": damaged}

    def fetch(self, data_dir=None, cache_dir=None, progress: bool = True) -> Path:
        """Make the batches present and structurally sound in the cache; return their folder."""
        target = self._cache(cache_dir)
        with cache_lock(target.parent), new_folder(target.parent):
            if target.is_dir() and not self._cached(target)[1]:
                return target
            # missing or damaged: a damaged folder stays until the fresh one is renamed onto it
            return self._fill(target, data_dir, progress)

    def _fill(self, target: Path, data_dir, progress: bool) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        root = data_root(data_dir)
        user = self._find(root) if root is not None else None
        if user is not None:
            self._check(user)
            self._install_folder(target, {b: (user / b).read_bytes() for b in (*TRAIN_BATCHES, TEST_BATCH)})
            return target
        tarball = target.parent / TARBALL
        candidates = [root / TARBALL] if root is not None and (root / TARBALL).is_file() else []
        try:
            if candidates:
                with open(candidates[0], "rb") as src:
                    install_stream(src, tarball, self.md5, what=str(candidates[0]), algorithm="md5")
            else:
                download(self.url, tarball, self.md5, progress=progress, algorithm="md5")
        except SourceUnavailable as err:
            raise DatasetError(f"cannot fetch {self.name} ({err}); run `feedalign data fetch cifar10` with internet access, "
                               f"or pass --data-dir / set FEEDALIGN_DATA to a folder holding {FOLDER}/ or {TARBALL}") from None
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                # Only the six expected regular files, read as bytes: nothing can land outside the cache.
                files = {}
                for b in (*TRAIN_BATCHES, TEST_BATCH):
                    stream = tar.extractfile(f"{FOLDER}/{b}")
                    if stream is None:
                        raise KeyError(b)
                    files[b] = stream.read()
        except (KeyError, tarfile.TarError, OSError, EOFError) as err:
            tarball.unlink(missing_ok=True)
            raise DatasetError(f"{TARBALL} lacks the expected batches ({err}); delete it and fetch again") from None
        self._install_folder(target, files)
        self._check(target)
        tarball.unlink(missing_ok=True)  # the batches are all we read; keep the cache at one copy
        return target

    @staticmethod
    def _install_folder(target: Path, files: dict[str, bytes]) -> None:
        """Write the batches, and the record of their SHA-256, to a temporary folder beside ``target`` and rename it
        into place: the record and the batches arrive together."""
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
        try:
            record = Record(tmp)
            for name, data in files.items():
                (tmp / name).write_bytes(data)
                record.hashes[name] = hashlib.sha256(data).hexdigest()
            record.save()
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a cache may be shared
            remove(target)
            os.replace(tmp, target)
        except BaseException:
            remove(tmp)
            raise

    def arrays(self, data_dir=None, cache_dir=None, download: bool = True):
        """``(train_x, train_y, test_x, test_y)``: images float32 in [0, 1], ``(N, 3, 32, 32)``; labels int64 ``(N,)``.

        Cached batches are hashed as they are read; missing or damaged ones are fetched again
        when ``download``, otherwise :class:`DatasetError` says which and how to fix it.
        """
        root = data_root(data_dir)
        folder = self._find(root) if root is not None else None
        if folder is not None:
            raws = {b: None for b in (*TRAIN_BATCHES, TEST_BATCH)}
        else:
            folder = self._cache(cache_dir)
            raws, bad = self._cached(folder)
            if bad:
                if not download:
                    state = (f"{', '.join(bad)} in {folder} {'is' if len(bad) == 1 else 'are'} damaged (not the bytes "
                             "recorded when it was unpacked)") if folder.is_dir() else f"it is not in the cache ({folder})"
                    raise DatasetError(f"{self.name} is not available: {state}, and download=False; run `feedalign data "
                                       f"fetch cifar10` to fetch it afresh, or pass data_dir / set FEEDALIGN_DATA to a "
                                       f"folder holding {FOLDER}/")
                self.fetch(data_dir, cache_dir)
                raws, bad = self._cached(folder)
                if bad:  # replaced just now, yet not sound: say so rather than unpickle it
                    raise DatasetError(f"{folder / bad[0]} is damaged right after it was fetched; delete {folder} and "
                                       "run `feedalign data fetch cifar10` again")
        train = [read_batch(folder / b, raws[b]) for b in TRAIN_BATCHES]
        test_x, test_y = read_batch(folder / TEST_BATCH, raws[TEST_BATCH])
        train_x = np.concatenate([x for x, _ in train]).astype(np.float32) / 255.0
        train_y = np.concatenate([y for _, y in train])
        return train_x, train_y, test_x.astype(np.float32) / 255.0, test_y
