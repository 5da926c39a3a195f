"""The one way feedalign writes and reads its files: atomic writes, JSON without NaN, JSON lines, folder locks.

Every file is written to a temporary name beside its target and renamed onto it, so a
reader (or a resume after SIGKILL) sees the old file or the new one, never half of one.
The exception is a JSON-lines log appended to as it grows (``alignment.jsonl``,
``steps.jsonl``): a kill or a full disk in the middle of an append leaves a torn last
line, which :func:`read_jsonl` drops (saying so once) and :func:`drop_torn_tail` cuts off
before the next append. :class:`FolderLock` keeps a second process out of a folder a
first one is writing (a run or sweep directory, a dataset's cache folder).
"""
from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from .errors import ConfigError, ConfigTypeError, RunDirError, first_line


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
        raise about_path(err, path) from None
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
            raise about_path(err, path) from err
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


def about_path(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path`` (not the temporary file, or nothing: a full disk fails in ``write``), so the
    one-line message (:func:`feedalign.errors.os_error_line`) names the file the user asked for."""
    if err.errno is None or err.filename == str(path):
        return err
    return type(err)(err.errno, err.strerror, str(path))


def check_writable(path: str | Path) -> Path:
    """Raise the ``OSError`` that writing ``path`` would raise later (a folder in its place, a file where
    its folder belongs, no permission), before a long computation whose result it is to hold."""
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
    """The rows of a JSON-lines file, [] when it does not exist: the one reader of every JSONL feedalign writes.

    A last line without its newline that is not a whole JSON object is torn (an append cut
    short by a kill or a full disk): it is dropped, and said once on stderr. Any other line
    that is not a JSON object means the file was damaged: :class:`~feedalign.errors.RunDirError`
    names the file and the line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines, torn = _split_lines(data)
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse(line)
        if row is None:
            shown = line[:60].decode("utf-8", "replace") + ("..." if len(line) > 60 else "")
            raise RunDirError(f"{str(path)!r} line {number} is damaged (not a JSON object: {shown!r}); restore the "
                              "file from a copy, or delete that line to keep the others")
        rows.append(row)
    if torn:
        _note_torn(path, len(lines) + 1)
    return rows


def drop_torn_tail(path: str | Path) -> bool:
    """Cut a torn last line (see :func:`read_jsonl`) off ``path`` before appending to it; True if one was cut.

    Only bytes after the last newline go, and only when they are not a whole JSON object (a
    whole one that lacks its newline gets it), so nothing a reader accepts is ever lost.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    lines, torn = _split_lines(data)
    if data.endswith(b"\n") or not data:
        return False
    if not torn:  # a whole last row without its newline: complete it, so the next append starts a line
        with open(path, "ab") as f:
            f.write(b"\n")
        return False
    try:
        os.truncate(path, len(data) - len(data.rsplit(b"\n", 1)[-1]))
    except OSError as err:
        raise about_path(err, path) from err
    _note_torn(path, len(lines) + 1, cut=True)
    return True


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """``(whole lines, torn)``: the newline-ended lines, and whether bytes after the last one are a torn line."""
    *lines, tail = data.split(b"\n")
    if not tail.strip():
        return lines, False
    if _parse(tail) is not None:  # whole, only its newline missing (a file written by hand, say)
        return lines + [tail], False
    return lines, True


def _parse(line: bytes) -> dict | None:
    """The JSON object on ``line``, or None if it is not one."""
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return None
    return row if isinstance(row, dict) else None


_NOTED: set[tuple[str, bool]] = set()


def _note_torn(path: Path, number: int, cut: bool = False) -> None:
    """Say once per file (per process) that its torn last line is ignored, or was cut off."""
    key = (str(path.resolve()), cut)
    if key in _NOTED:
        return
    _NOTED.add(key)
    what = "was cut off before appending" if cut else "is ignored"
    print(f"feedalign: note: {path} line {number} is torn (a write cut short by a kill or a full disk); "
          f"that line {what}", file=sys.stderr)


class FolderLock:
    """An exclusive OS lock on ``folder`` (``fcntl.flock`` on ``folder/.lock``) while this object is held.

    The kernel releases it when the process ends in any way, SIGKILL included, so a killed
    process never leaves a folder locked; the lock file stays (removing it would race with a
    process about to lock it) and holds the holder's pid and command line, for the message a
    second process gets. Without ``wait``, a folder another process holds raises
    :class:`~feedalign.errors.RunDirError` at once (one line naming the holder); with it, this
    waits. A closed or garbage-collected lock is released. Where the OS has no ``flock``
    (Windows) or the file system refuses it, the folder is used unlocked.

    Use as ``with FolderLock(run_dir, "run directory"):`` or call :meth:`release`. ``name``: the lock
    file's name in ``folder``; ``about``: the path the messages name (default ``folder``): a dataset's
    cache lock lives beside the dataset's folder, not in it.
    """

    def __init__(self, folder: str | Path, what: str = "folder", *, wait: bool = False, name: str = ".lock",
                 about: str | Path | None = None):
        self.folder, self.what = Path(folder), what
        shown = str(about if about is not None else self.folder)
        self._file = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        path = self.folder / name
        try:
            f = open(path, "a+b")
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and self.folder.is_dir():
                return  # a folder this process cannot write to: it cannot interleave writes there either
            raise about_path(err, path) from err
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                print(f"feedalign: note: waiting for another feedalign process{_holder(f)}, which is using {what} "
                      f"{shown}", file=sys.stderr, flush=True)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise RunDirError(f"{what} {shown!r} is in use by another feedalign process{holder}; wait for "
                              "it to finish or stop it, then run again (a killed process leaves no lock behind)") from None
        except OSError:  # ENOLCK and the like (some network file systems): go on without the lock
            f.close()
            return
        self._file = f
        try:  # who holds it, for the refusal above
            f.truncate(0)
            program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
            if program == "__main__.py":  # python -m feedalign
                program = Path(sys.argv[0]).parent.name
            f.write(f"pid {os.getpid()}: {' '.join([program, *sys.argv[1:]])}"[:500].encode())
            f.flush()
        except OSError:
            pass

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the only descriptor releases the flock
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(f) -> str:
    """`` (pid N: command)`` from a lock file's contents, or nothing when it holds none."""
    try:
        f.seek(0)
        text = f.read(500).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def read_mapping(path: str | Path, *, what: str) -> dict:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a dict, or a one-line ConfigError
    that starts with ``what`` and the path (config files and sweep specs share this)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give the file itself")
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{what} {str(path)!r}: expected a .toml, .yaml or .yml file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text") from None
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        else:
            import yaml
            values = yaml.safe_load(text)
            values = {} if values is None else values
    except Exception as err:  # tomllib.TOMLDecodeError and yaml.YAMLError alike
        raise ConfigError(f"{what} {str(path)!r} does not parse: {first_line(err)}") from None
    if not isinstance(values, dict):
        raise ConfigTypeError(f"{what} {str(path)!r}: expected a table of settings (key = value) at the top, "
                              f"got {type(values).__name__}")
    return values
