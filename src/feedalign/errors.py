"""The errors feedalign raises for input a user can fix.

The command line prints these as one line (exit status 2); any other exception is a
bug and keeps its traceback. Each also subclasses the built-in exception it refines,
so ``except ValueError`` (or ``TypeError``) keeps catching them.
"""
from __future__ import annotations

import errno
from pathlib import Path


class FeedalignError(Exception):
    """Base class: an input the user can fix (a setting, a file, a directory); the message says how."""


class ConfigError(FeedalignError, ValueError):
    """A setting with a bad value: a config field, a sweep spec entry, a command-line value."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type (text where a number belongs); still a ConfigError, so a ValueError too."""


class DatasetError(FeedalignError, ValueError):
    """A dataset that is unknown, missing, corrupt, or cannot be fetched or read here."""


class RunDirError(FeedalignError, ValueError):
    """A run or sweep directory (or a file in it) that is not what the command needs."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its class name if it has none): how errors are shown in one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# errno values of file-system problems the user can fix, and the fix for each: ``path`` is the path the
# operation named (made absolute-free as given); a folder where a file belongs and the reverse are told apart.
_READ_ONLY = "the file system there is read-only; choose an output folder on a writable disk"
_NO_SPACE = "no space left on the device (disk full or over quota); free some space or choose a folder on another disk, then run again"


def os_error_line(err: OSError) -> str | None:
    """One line that names the path of a file-system problem the user can fix, and the fix; None for anything else.

    Used by the command line for every ``OSError``: None (an error about no path that is not a full or
    read-only disk) means a bug, which keeps its traceback.
    """
    path = err.filename if err.filename is not None else None
    where = f"{path}: " if path is not None else ""
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"cannot write {where}{_NO_SPACE}"
    if code == errno.EROFS:
        return f"cannot write {where}{_READ_ONLY}"
    if path is None:
        return None
    if code in (errno.EACCES, errno.EPERM):
        target = Path(path)
        if not target.exists():  # it was to be made: the folder it goes into is what needs the permission
            target = next((p for p in target.parents if p.exists()), Path("."))
            return (f"{path}: permission denied: cannot create it in folder {str(target)!r}; make that folder "
                    f"writable for you (chmod u+rwx {target}) or choose another path")
        mode = "rwx" if target.is_dir() else "rw"
        return f"{path}: permission denied; give yourself access (chmod u+{mode} {target}) or choose another path"
    if code == errno.ENOTDIR:
        blocker = next((p for p in [Path(path), *Path(path).parents] if p.is_file()), None)
        if blocker is not None:
            return (f"{path}: {str(blocker)!r} is a file where a folder is needed; move or rename that file, "
                    f"or choose another path")
        return f"{path}: a folder is needed there but it is not one; choose another path"
    if code == errno.EISDIR:
        return f"{path}: is a folder where a file is needed; give a file name, or move the folder away"
    if code == errno.EEXIST:
        if Path(path).is_dir():
            return f"{path}: already exists; choose another name or move it away"
        return f"{path}: exists but is not a folder; move it away or choose another path"
    return f"{path}: {err.strerror or first_line(err)}"
