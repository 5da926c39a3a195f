"""Where datasets live on disk, and how files get there without ever looking valid when they are not.

The cache is ``~/.cache/feedalign/<name>/`` (root overridden by ``cache_dir`` or
``$FEEDALIGN_CACHE``). Every file is written to a temporary name in its final folder,
hashed while it is written, and renamed into place (``os.replace``) only once its
checksum matches: an interrupted or corrupt fetch leaves at most a ``.part`` file.
Verified files are stamped (size, mtime, SHA-256) in ``<name>/.verified`` so a reload
costs one ``stat`` instead of re-hashing 47 MB.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

from ..files import atomic_write, new_file_mode
from ..errors import DatasetError

ENV_CACHE = "FEEDALIGN_CACHE"
ENV_DATA = "FEEDALIGN_DATA"
TIMEOUT_S = 10.0  # per connection attempt: an unreachable mirror must fail fast, not hang
_CHUNK = 1 << 20


class SourceUnavailable(Exception):
    """One source could not provide the files; the reason is collected for the final error."""


def cache_root(cache_dir=None) -> Path:
    """The cache root: ``cache_dir``, else ``$FEEDALIGN_CACHE``, else ``~/.cache/feedalign``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "feedalign"


def data_root(data_dir=None) -> Path | None:
    """The user's own data folder: ``data_dir``, else ``$FEEDALIGN_DATA``, else None."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DatasetError(f"data directory {path} does not exist; pass an existing folder or leave data_dir unset")
        return path
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Stamps:
    """Remembered verifications, ``{absolute path: {size, mtime_ns, sha256}}``, in one JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._data = json.loads(self.path.read_text())
            if not isinstance(self._data, dict):
                self._data = {}
        except (OSError, ValueError):
            self._data = {}

    def verify(self, file: Path, sha256: str) -> bool:
        """Whether ``file``'s uncompressed bytes hash to ``sha256`` (from the stamp when size and mtime agree)."""
        file = Path(file).resolve()
        try:
            st = file.stat()
        except OSError:
            return False
        record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        if self._data.get(str(file)) == record:
            return True
        if file.suffix == ".gz":
            digest = hashlib.sha256()
            try:
                with gzip.open(file, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
            except (OSError, EOFError, zlib.error):
                return False
            actual = digest.hexdigest()
        else:
            actual = sha256_file(file)
        if actual != sha256:
            self.forget(file)
            return False
        self.record(file, sha256)
        return True

    def record(self, file: Path, sha256: str) -> None:
        file = Path(file).resolve()
        st = file.stat()
        self._data[str(file)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        self._save()

    def forget(self, file: Path) -> None:
        if self._data.pop(str(Path(file).resolve()), None) is not None:
            self._save()

    def _save(self) -> None:
        try:  # a read-only cache only costs a re-hash next time
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True))
        except OSError:
            pass


def install_stream(stream: BinaryIO, dest: Path, sha256: str | None, *, gz: bool = False, what: str = "",
                   algorithm: str = "sha256") -> None:
    """Copy ``stream`` (gunzipped when ``gz``) to ``dest``, renaming it into place only if it hashes to ``sha256``
    (a hex digest of ``algorithm``: CIFAR's mirror publishes an MD5).

    Raises :class:`SourceUnavailable` on a checksum mismatch or a broken stream, leaving ``dest`` untouched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out:
            source = gzip.GzipFile(fileobj=stream) if gz else stream
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise SourceUnavailable(f"{what or dest.name} has {algorithm} {digest.hexdigest()[:12]}..., expected {sha256[:12]}...")
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; a cache may be shared
        os.replace(tmp, dest)
    except (OSError, EOFError, zlib.error, http.client.HTTPException) as err:
        Path(tmp).unlink(missing_ok=True)
        raise SourceUnavailable(f"{what or dest.name}: {err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Progress:
    """A file-like reader that advances a tqdm bar as bytes pass."""

    def __init__(self, raw: BinaryIO, bar):
        self.raw, self.bar = raw, bar

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bar.update(len(data))
        return data


def download(url: str, dest: Path, sha256: str | None, *, gz: bool = False, progress: bool = True,
             algorithm: str = "sha256") -> None:
    """Fetch ``url`` into ``dest`` (gunzipping when ``gz``), verified; :class:`SourceUnavailable` on any failure."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SourceUnavailable(f"{url}: {reason}") from None
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        # disable=None: tqdm draws only on a terminal, so logs and CI stay clean.
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False,
                  disable=None if progress else True) as bar:
            install_stream(_Progress(response, bar), dest, sha256, gz=gz, what=url, algorithm=algorithm)


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
