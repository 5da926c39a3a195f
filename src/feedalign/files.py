"""The one way feedalign writes and reads its files: atomic writes, JSON without NaN, JSON lines.

Every file is written to a temporary name beside its target and renamed onto it, so a
reader (or a resume after SIGKILL) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, content) -> None:
    """Write ``content`` (str, bytes, or a callable given the open binary file) to ``path`` atomically.

    The temporary file is fsynced before the rename, and the folder after it, so the new
    file survives a crash. It gets the mode ``open()`` would give a new file, 0666 less the
    umask (0644 under umask 022), not mkstemp's 0600: run directories and the data cache
    may be shared (a Ray cluster's nodes, colleagues).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        raise _about(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _about(err, path) from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not fsync directories
        pass


def new_file_mode() -> int:
    """0666 less the process umask: the mode ``open(path, "w")`` gives a new file."""
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _about(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path`` (not the temporary file, or nothing: a full disk fails in ``write``), so the
    one-line message (:func:`feedalign.errors.os_error_line`) names the file the user asked for."""
    if err.errno is None or err.filename == str(path):
        return err
    return type(err)(err.errno, err.strerror, str(path))


def check_writable(path: str | Path) -> Path:
    """Raise the ``OSError`` that writing ``path`` would raise later (a folder in its place, a file where
    its folder belongs, no permission), before a long computation whose result it is to hold."""
    import errno
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return path


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """``fig.savefig`` atomically (the format from the suffix): a failed save leaves the old figure or none."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def json_safe(value):
    """``value`` with every NaN/Inf float, at any depth of dicts, lists and tuples, made None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, value, *, indent: int = 2) -> None:
    """``value`` as JSON (NaN/Inf as null), atomically."""
    atomic_write(path, json.dumps(json_safe(value), indent=indent) + "\n")


def jsonl_line(row: dict) -> str:
    """One JSON-lines record (NaN/Inf as null), newline included."""
    return json.dumps(json_safe(row)) + "\n"


def write_jsonl(path: str | Path, rows) -> None:
    """Rewrite ``path`` with one JSON object per row, atomically."""
    atomic_write(path, "".join(jsonl_line(row) for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file, [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
