"""The errors feedalign raises for input a user can fix.

The command line prints these as one line (exit status 2); any other exception is a
bug and keeps its traceback. Each also subclasses the built-in exception it refines,
so ``except ValueError`` (or ``TypeError``) keeps catching them.
"""
from __future__ import annotations


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
