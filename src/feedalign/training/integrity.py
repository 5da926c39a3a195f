"""A run directory's record of its own files: ``RUN_DIR/integrity.json``.

It holds the SHA-256 of ``config.toml`` and of every checkpoint, taken when each was
written, and the settings the run started with. Readers check through here:
:func:`read_config` (an edited ``config.toml`` is refused, naming the changed fields)
and :func:`feedalign.training.checkpoint.read_checkpoint` (a damaged checkpoint is refused, and left where it is).

A checkpoint and the manifest cannot be renamed into place together, so a checkpoint is
written in three steps: the manifest accepts the old and the new hash, the checkpoint is
renamed into place, the manifest keeps only the new hash. A kill between any two steps
leaves a checkpoint the manifest accepts.

Run directories made before the manifest existed are read unverified (said once, on
stderr); resuming one records its files from then on.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ..errors import RunDirError
from ..files import atomic_write, write_json
from .config import Config

MANIFEST = "integrity.json"
FORMAT = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(run_dir: str | Path) -> dict | None:
    """The manifest of ``run_dir``, or None for a run directory made before manifests."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise RunDirError(f"{str(path)!r} is damaged (not a feedalign integrity manifest); the run's files cannot be "
                          "verified: restore it, or move it away to use the run unverified")
    return manifest


def _save(run_dir: Path, manifest: dict) -> None:
    write_json(run_dir / MANIFEST, manifest)


def start(run_dir: Path, config_text: str, settings: dict) -> None:
    """Record a new run's ``config.toml`` (already written as ``config_text``) and its settings."""
    _save(run_dir, {"format": FORMAT, "settings": settings,
                    "files": {"config.toml": [sha256(config_text.encode())]}})


def note_unverified(run_dir: Path, then: str = "") -> None:
    """Say (on stderr, once per reading of a run) that an old run directory's files cannot be verified."""
    print(f"feedalign: note: {run_dir} has no {MANIFEST} (made by an older feedalign): its config.toml and "
          f"checkpoints are not verified{then}", file=sys.stderr)


def adopt(run_dir: Path, settings: dict) -> None:
    """Start recording an old run directory that has no manifest (its config.toml is trusted as it is now)."""
    note_unverified(run_dir, "; those written from now on are")
    files = {"config.toml": [file_sha256(run_dir / "config.toml")]}
    _save(run_dir, {"format": FORMAT, "settings": settings, "files": files})


def write_file(run_dir: str | Path, name: str, data: bytes) -> None:
    """Write ``run_dir/name`` atomically and record its hash, so that a kill at any point leaves them consistent."""
    run_dir = Path(run_dir)
    manifest = load(run_dir)
    if manifest is None:  # a run directory not recorded (an old one read by hand): write only
        atomic_write(run_dir / name, data)
        return
    new = sha256(data)
    old = manifest["files"].get(name, [])
    manifest["files"][name] = [h for h in old if h != new] + [new]
    _save(run_dir, manifest)
    atomic_write(run_dir / name, data)
    manifest["files"][name] = [new]
    _save(run_dir, manifest)


def verify(run_dir: str | Path, name: str, *, manifest: dict | None = None, fix: str = "") -> bool:
    """True when ``run_dir/name`` is as written; False when it is not recorded (an old run: unverified).

    A file whose hash is not the recorded one raises RunDirError naming it; it is never touched.
    """
    run_dir = Path(run_dir)
    manifest = load(run_dir) if manifest is None else manifest
    if manifest is None or name not in manifest["files"]:
        return False
    if file_sha256(run_dir / name) not in manifest["files"][name]:
        raise RunDirError(f"{str(run_dir / name)!r} is damaged: its SHA-256 is not the one recorded in {MANIFEST} "
                          f"when it was written{fix or '; it was left as it is: restore it from a copy'}")
    return True


def changed_settings(recorded: dict, current: dict) -> list[str]:
    """``field: old -> new`` for each setting that differs (the run directory name is not a setting here)."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(recorded) | set(current))
            if k != "name" and recorded.get(k) != current.get(k)]


def read_config(run_dir: str | Path):
    """The run's Config from ``config.toml``; RunDirError (one line, the changed fields) if it was edited."""
    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    manifest = load(run_dir)
    if manifest is None or "config.toml" not in manifest["files"]:
        return Config.from_file(path)
    if file_sha256(path) in manifest["files"]["config.toml"]:
        return Config.from_file(path)
    try:
        current = Config.from_file(path).replace(name=None).to_dict()
    except ValueError as err:
        raise RunDirError(f"{str(path)!r} was edited since the run started and no longer reads as a config ({err}); "
                          f"restore it (the original settings are in {MANIFEST})") from None
    changes = changed_settings(manifest["settings"], current)
    what = "; ".join(changes) if changes else "comments or layout only"
    raise RunDirError(f"{str(path)!r} was edited since the run started ({what}); a run continues with the settings "
                      f"it started with: restore them, or start a new run with `feedalign train --config {path}`")

