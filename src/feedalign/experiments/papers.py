"""The registry of paper numbers: ``paper_numbers.toml`` beside this module, one entry per number.

Every number an experiment compares with is read from here, with what it measures, how many runs
the paper averaged and whether it has been confirmed in a primary source. The page's marks
("unverified", "read off a plot", ...) come from each entry's ``status``, never from text typed
into an experiment.

    >>> from feedalign.experiments import papers
    >>> papers.value("lillicrap2016/mnist/fa")
    2.1
    >>> papers.label("nokland2016/table1/7x240/bp")
    '2.16% (unverified)'

:func:`use` points the registry at another file for a while (the tests change a value with it and
watch the verdict change).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT = Path(__file__).with_name("paper_numbers.toml")
STATUSES = ("confirmed", "one source", "read off a plot", "unverified")
_FIELDS = ("paper", "where", "measures", "value", "unit", "runs", "status", "source")
_source: Path = DEFAULT
_cache: dict[Path, tuple[float, dict]] = {}


@dataclass(frozen=True)
class Number:
    """One number of a paper, as the registry holds it."""

    id: str
    paper: str
    where: str
    measures: str
    value: float
    unit: str
    runs: str
    status: str
    source: str
    citation: str
    printed: str = ""  # the paper's words, where the number stands for a phrase ("zero training error")
    high: float | None = None  # upper end where the paper gives a range ("about 2-3 %"): value..high

    @property
    def interval(self) -> tuple[float, float]:
        """(low, high): the number itself twice, or the paper's range."""
        return (self.value, self.value if self.high is None else self.high)

    @property
    def mark(self) -> str:
        """What the page writes after the number: nothing when confirmed, else its status."""
        return "" if self.status == "confirmed" else f" ({self.status})"

    def label(self) -> str:
        unit = self.unit if self.unit == "%" else (f" {self.unit}" if self.unit else "")
        number = f"{self.value:g}{'' if self.high is None else f'-{self.high:g}'}{unit}"
        return f"'{self.printed}' ({number}){self.mark}" if self.printed else f"{number}{self.mark}"


class RegistryError(ValueError):
    """The registry file is malformed (a missing field, an unknown status or paper)."""


def load(path: str | Path | None = None) -> dict[str, Number]:
    """Every number of the registry at ``path`` (default: the one in use), checked; cached by modification time."""
    path = Path(path or _source)
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    papers, numbers = raw.get("papers", {}), {}
    for key, entry in raw.get("numbers", {}).items():
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            raise RegistryError(f"{path}: number {key!r} lacks {', '.join(missing)}")
        if entry["status"] not in STATUSES:
            raise RegistryError(f"{path}: number {key!r} has status {entry['status']!r}; known: {', '.join(STATUSES)}")
        if entry["paper"] not in papers:
            raise RegistryError(f"{path}: number {key!r} names paper {entry['paper']!r}, not in [papers]")
        high = entry.get("high")
        if high is not None and not float(high) > float(entry["value"]):
            raise RegistryError(f"{path}: number {key!r} has high = {high}; a range needs high > value ({entry['value']})")
        numbers[key] = Number(id=key, **{f: entry[f] for f in _FIELDS if f != "value"}, value=float(entry["value"]),
                              citation=papers[entry["paper"]]["citation"], printed=entry.get("printed", ""),
                              high=None if high is None else float(high))
    _cache[path] = (mtime, numbers)
    return numbers


def get(number_id: str) -> Number:
    numbers = load()
    if number_id not in numbers:
        raise KeyError(f"no paper number {number_id!r} in {_source}")
    return numbers[number_id]


def value(number_id: str) -> float:
    return get(number_id).value


def label(number_id: str) -> str:
    return get(number_id).label()


@contextlib.contextmanager
def use(path: str | Path):
    """Read the registry from ``path`` inside the ``with`` block (e.g. a copy with a corrected value)."""
    global _source
    previous, _source = _source, Path(path)
    try:
        load()  # a malformed file fails here, not in the middle of a page
        yield
    finally:
        _source = previous
