"""Verdicts: every claim judged two-sided against the registry of paper numbers, from its stored per-run values.

A verdict is one of :data:`VERDICTS`:

- ``reproduced``: |ours - paper| within the row's tolerance, or the paper's value inside ours' mean ± 2
  standard errors (where the paper gives a range, the distance is to its nearest end, and reproduced also when
  the range meets mean ± 2 se); a gap row (rule minus reference) also needs the paper's sign when it is decided by the
  tolerance;
- ``better``: ours below the paper (errors; above it for accuracies) by more than that: the gap is stated;
- ``miss``: ours worse than the paper by more than that;
- ``contradicted``: a qualitative claim that our evidence shows does not hold;
- ``-``: nothing to compare (no paper number, or fewer seeds than the row needs, or a stored result made
  under a protocol the paper number does not describe).

How a claim is judged is a :class:`Compare` that the experiment gives for the claim's key
(:meth:`~feedalign.experiments.Experiment.comparisons`); the paper's number comes from
:mod:`feedalign.experiments.papers`. :func:`judged` recomputes every verdict of a stored ``results.json``
each time a report or the page is written, so a corrected paper value or criterion reaches the page at
once; nothing of a stored verdict is reused but the qualitative outcome of claims that have no
:class:`Compare` (decided on evidence the stored values summarise, e.g. a swept grid).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import papers
from .base import format_number, get_experiment

VERDICTS = ("reproduced", "better", "miss", "contradicted", "-")
MIN_SEEDS = 3


@dataclass(frozen=True)
class Compare:
    """How one claim is judged.

    ``kind``: ``"value"`` (ours against the registry number ``number``), ``"gap"`` (ours, a per-seed difference
    rule minus reference, against ``number`` minus ``minus``) or ``"check"`` (a qualitative claim: ``holds``
    decides it on the per-seed values; ``criterion`` says how in words). ``finding``: what a failed check, or a
    value or gap row judged ``better`` or ``miss``, shows and the likely reason (the page's note: a number far
    from the paper's, either way, is a finding to explain). ``higher_is_better``: accuracies. ``min_seeds``:
    fewer seeds give ``-``.
    """

    kind: str
    number: str | None = None
    minus: str | None = None
    tolerance: float = 0.3
    higher_is_better: bool = False
    min_seeds: int = MIN_SEEDS
    holds: Callable[[list[float]], bool] | None = None
    criterion: str = ""
    finding: str = ""

    def __post_init__(self):
        if self.kind not in ("value", "gap", "check"):
            raise ValueError(f"Compare kind must be value, gap or check; got {self.kind!r}")
        if self.kind in ("value", "gap") and not self.number:
            raise ValueError(f"a {self.kind} comparison needs the registry number it compares with")
        if self.kind == "gap" and not self.minus:
            raise ValueError("a gap comparison needs `minus`, the reference's registry number")
        if self.kind == "check" and (self.holds is None or not self.criterion):
            raise ValueError("a check needs `holds` and its `criterion` in words")


@dataclass
class Verdict:
    verdict: str
    criterion: str
    paper: str            # the paper's number with its registry mark, or the claim's paper text
    delta: str = ""       # ours minus the paper, signed, when there is a number to compare
    note: str = ""

    def __post_init__(self):
        assert self.verdict in VERDICTS, self.verdict


def stats(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation (n - 1) and standard error of ``values``; std and se 0 for one value."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return mean, std, std / math.sqrt(len(v))


def _fmt(x: float) -> str:
    return format_number(x)


def ours(values: list[float], unit: str = "") -> str:
    """Mean ± sample std (se, seeds), as the page prints it."""
    if not values:
        return "n/a"
    u = unit if unit in ("%", "") else f" {unit}"
    mean, std, se = stats(values)
    if len(values) == 1:
        return f"{_fmt(mean)}{u} (1 seed)"
    return f"{_fmt(mean)} ± {_fmt(std)}{u} (se {_fmt(se)}, {len(values)} seeds)"


def judge(values: list[float], compare: Compare, paper_text: str = "") -> Verdict:
    """The verdict on ``values`` (one per seed) under ``compare``, read against the registry as it is now."""
    n = len(values)
    mean, std, se = stats(values)
    if compare.kind == "check":
        criterion = compare.criterion + (f" (needs {compare.min_seeds} seeds)" if compare.min_seeds > 1 else "")
        label = papers.label(compare.number) if compare.number else paper_text
        if n < compare.min_seeds:
            return Verdict("-", criterion, label, note=f"not judged: {n} seed{'s' * (n != 1)}, needs {compare.min_seeds}")
        if compare.holds(values):
            return Verdict("reproduced", criterion, label)
        return Verdict("contradicted", criterion, label, note=compare.finding)
    number = papers.get(compare.number)
    if compare.kind == "value":
        (low, high), label = number.interval, number.label()
        target = low if low == high else (low + high) / 2
        what = "ours"
    else:
        reference = papers.get(compare.minus)
        target = number.value - reference.value
        low = high = target
        marks = {m for m in (number.mark, reference.mark) if m}
        label = f"{number.value:g} - {reference.value:g} = {target:+.2f}{''.join(sorted(marks))}"
        what = "our gap"
    tol = compare.tolerance
    sign_rule = " with the paper's sign" if compare.kind == "gap" else ""
    if low == high:
        rule = f"|{what} - ({target:g})| <= {tol:g}{sign_rule}, or {target:g} within mean ± 2 se"
    else:
        rule = (f"{what} within {low:g}-{high:g}{f' ± {tol:g}' if tol else ''}, "
                f"or that range meeting mean ± 2 se")
    criterion = (f"reproduced: {rule}; "
                 f"beyond that better or miss ({'higher' if compare.higher_is_better else 'lower'} is better; "
                 f"needs {compare.min_seeds} seeds)")
    delta = mean - high if mean > high else mean - low if mean < low else 0.0  # to the nearest end of a range
    delta_text = f"{delta:+.2f}" if math.isfinite(delta) else ""
    if n < compare.min_seeds:
        return Verdict("-", criterion, label, delta_text,
                       note=f"not judged: {n} seed{'s' * (n != 1)}, needs {compare.min_seeds}")
    within_tolerance = abs(delta) <= tol + 1e-9
    note = ""
    if compare.kind == "gap" and target != 0 and mean * target < 0:
        if within_tolerance:  # say why a row this close is not reproduced
            note = (f"opposite sign to the paper's gap: ours {mean:+.3f}, paper {target:+.2f} (within {tol:g} of it, "
                    f"but the paper's value lies {abs(delta) / se:.1f} se from ours)" if se > 0 else
                    f"opposite sign to the paper's gap: ours {mean:+.3f}, paper {target:+.2f}")
        if std > abs(target):  # computed, so it shows only where it holds
            note += (f"; the paper's gap ({abs(target):.2f} points) is smaller than the seed-to-seed std of ours "
                     f"({std:.3f}): one run of each rule could show either sign")
        within_tolerance = False  # the opposite sign is not the paper's gap, however small
    if within_tolerance or (mean - 2 * se <= high and low <= mean + 2 * se):
        return Verdict("reproduced", criterion, label, delta_text)
    worse = delta < 0 if compare.higher_is_better else delta > 0
    note = "; ".join(n for n in (note, compare.finding) if n)
    return Verdict("miss" if worse else "better", criterion, label, delta_text, note=note)


def _from_stored(claim: dict) -> Verdict:
    """A claim the experiment gives no :class:`Compare` for: its stored qualitative outcome, in the vocabulary."""
    word = {True: "reproduced", False: "contradicted", None: "-"}[claim.get("reproduced")]
    criterion = "" if claim.get("reproduced") is None else claim.get("criterion") or ""  # a descriptive row: none
    return Verdict(word, criterion, claim.get("paper", ""))


def retired_reason(experiment, key: str) -> str | None:
    for pattern, reason in experiment.retired.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def judged(name: str, results: dict) -> tuple[list[dict], list[dict]]:
    """Rows of ``results`` (a stored results.json of experiment ``name``) with verdicts recomputed now.

    Returns ``(rows, retired)``: each row ``claim``, ``key``, ``paper``, ``ours``, ``verdict``, ``delta``,
    ``criterion``, ``note``; ``retired`` lists stored claims whose criterion was withdrawn, with the reason.
    """
    experiment = get_experiment(name)
    config = results.get("config", {})
    comparisons = experiment.comparisons(config)
    incomparable = experiment.incomparable(config)
    selection = experiment.selection_note(config)
    rows, retired = [], []
    for claim in results.get("claims", []):
        key = claim["key"]
        reason = retired_reason(experiment, key)
        if reason:
            retired.append({"key": key, "claim": claim["text"], "reason": reason})
            continue
        compare = comparisons.get(key)
        if compare is None:
            verdict = _from_stored(claim)
        else:
            verdict = judge(claim["values"], compare, claim.get("paper", ""))
            if incomparable and verdict.verdict != "-":
                verdict = Verdict("-", verdict.criterion, verdict.paper, verdict.delta, note=incomparable)
        notes = [verdict.note] if verdict.note else []
        if selection and compare is not None and compare.kind in ("value", "gap"):
            notes.append(selection)
        text = claim.get("evidence") or ours(claim["values"], claim.get("unit", ""))
        rows.append({"key": key, "claim": claim["text"], "paper": verdict.paper, "ours": text,
                     "verdict": verdict.verdict, "delta": verdict.delta, "criterion": verdict.criterion,
                     "note": "; ".join(notes)})
    return rows, retired
