"""Check the FA/DFA review's sensitivity observations against a sweep's results.

The review (fa-dfa-review, "Reproducing the results") reports, on MNIST with
784-100-10 (FA) and 784-200-100-10 tanh (DFA) networks:

* starting weights can't be too small, can't be too large, and zeros don't work;
* a high-ish learning rate is needed;
* weight decay is essential for direct feedback (DFA);
* lots of configurations refuse to train;
* some runs gain accuracy, then lose it.

:func:`sensitivity_findings` turns the rows of one or more sweeps (for instance
``examples/sweeps/sensitivity-init-lr.toml`` and ``sensitivity-dfa-wd.toml``)
into one :class:`Finding` per observation and rule, each saying whether it holds
*on the swept grid* (``None``: the sweep does not test it), with its evidence;
:func:`sensitivity_report` renders them as markdown.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .results import read_results

MARGIN = 0.05  # accuracy difference counted as "worse"


@dataclass
class Finding:
    key: str
    rule: str
    text: str
    holds: bool | None
    evidence: str
    sweep: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _cfg(row: dict, key: str, default=None):
    if key in row and key not in ("config",):
        return row[key]
    return (row.get("config") or {}).get(key, default)


def _acc(row: dict) -> float:
    v = row.get("best_val_accuracy")
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _best(rows: list[dict]) -> float:
    vals = [_acc(r) for r in rows if math.isfinite(_acc(r))]
    return max(vals) if vals else float("nan")


def _learned(row: dict) -> bool:
    return row.get("outcome") in ("trained", "collapsed")


def _scale(row: dict):
    """Forward-init scale, 0.0 for zero init; None when the run used the default init."""
    init = _cfg(row, "init", "default")
    if init == "zero":
        return 0.0
    if init in ("uniform", "gaussian"):
        s = _cfg(row, "init_scale")
        return float(s) if s is not None else None
    return None


def _by(rows, fn) -> dict:
    out: dict = {}
    for r in rows:
        k = fn(r)
        if k is not None:
            out.setdefault(k, []).append(r)
    return dict(sorted(out.items()))


def _pct(a: float) -> str:
    return "n/a" if not math.isfinite(a) else f"{100 * a:.1f}%"


def _sources(results) -> list:
    if isinstance(results, (list, tuple)) and results and not isinstance(results[0], dict):
        return list(results)
    return [results]


def _label(source) -> str:
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = Path(source)
        return (path.parent if path.name == "results.json" else path).name
    return ""


def sensitivity_findings(results, *, margin: float = MARGIN) -> list[Finding]:
    """One Finding per (observation, rule) from sweep ``results``: a sweep directory, a results.json, a list
    of rows, or a list of several sweep directories (each checked on its own grid, never pooled)."""
    findings: list[Finding] = []
    for source in _sources(results):
        rows = [r for r in read_results(source)[0] if r.get("status") == "done"]
        for f in _findings(rows, margin):
            f.sweep = _label(source)
            findings.append(f)
    return findings


def _findings(rows: list[dict], margin: float) -> list[Finding]:
    findings: list[Finding] = []
    rules = list(dict.fromkeys(_cfg(r, "rule") for r in rows))
    for rule in rules:
        rr = [r for r in rows if _cfg(r, "rule") == rule]
        if not rr:
            continue
        # the init x lr map: rows with an explicit init scale and default weight decay of the sweep
        scales = _by(rr, _scale)
        zero = scales.get(0.0, [])
        if zero:
            n = sum(_learned(r) for r in zero)
            findings.append(Finding("zero-init", rule, "zero initial weights do not train", n == 0,
                                    f"{n}/{len(zero)} zero-init runs learned (best {_pct(_best(zero))})"))
        nonzero = {s: v for s, v in scales.items() if s > 0}
        if len(nonzero) >= 3:
            best_by_scale = {s: _best(v) for s, v in nonzero.items()}
            top = max(best_by_scale.values())
            lo, hi = min(nonzero), max(nonzero)
            arg = max(best_by_scale, key=best_by_scale.get)
            findings.append(Finding("init-too-small", rule, "initial weights can't be too small",
                                    best_by_scale[lo] < top - margin,
                                    f"smallest scale {lo:g}: best {_pct(best_by_scale[lo])} vs {_pct(top)} at {arg:g}"))
            findings.append(Finding("init-too-large", rule, "initial weights can't be too large",
                                    best_by_scale[hi] < top - margin,
                                    f"largest scale {hi:g}: best {_pct(best_by_scale[hi])} vs {_pct(top)} at {arg:g}"))
        lrs = _by(rr, lambda r: _cfg(r, "lr"))
        if len(lrs) >= 3:
            best_by_lr = {lr: _best(v) for lr, v in lrs.items()}
            top = max(best_by_lr.values())
            ordered = sorted(best_by_lr)
            arg = max(best_by_lr, key=best_by_lr.get)
            upper = ordered.index(arg) >= (len(ordered) - 1) / 2
            low_bad = best_by_lr[ordered[0]] < top - margin
            findings.append(Finding("high-lr", rule, "a high-ish learning rate is needed", upper and low_bad,
                                    f"best lr {arg:g} of {', '.join(f'{v:g}' for v in ordered)}; "
                                    f"lowest lr {ordered[0]:g} reaches {_pct(best_by_lr[ordered[0]])} vs {_pct(top)}"))
        wds = _by(rr, lambda r: _cfg(r, "weight_decay", 0.0))
        if len(wds) >= 2 and 0.0 in wds:
            with_wd = [r for wd, v in wds.items() if wd > 0 for r in v]
            b0, b1 = _best(wds[0.0]), _best(with_wd)
            arg = max((wd for wd in wds if wd > 0), key=lambda wd: _best(wds[wd]))
            learned0 = sum(_learned(r) for r in wds[0.0]) / len(wds[0.0])
            learned1 = sum(_learned(r) for r in with_wd) / len(with_wd)
            findings.append(Finding("weight-decay", rule, "weight decay is essential",
                                    b1 > b0 + margin or learned1 > learned0 + 0.25,
                                    f"best without weight decay {_pct(b0)}, with {_pct(b1)} (at {arg:g}); "
                                    f"runs that learned: {_pct(learned0)} without, {_pct(learned1)} with"))
        refused = sum(r.get("outcome") == "refused" for r in rr)
        findings.append(Finding("refusals", rule, "lots of configurations refuse to train (>= 25% of the grid)",
                                refused / len(rr) >= 0.25, f"{refused}/{len(rr)} runs refused"))
        collapsed = sum(r.get("outcome") == "collapsed" for r in rr)
        findings.append(Finding("collapse", rule, "some runs gain accuracy, then lose it", collapsed > 0,
                                f"{collapsed}/{len(rr)} runs collapsed"))
    return findings


def sensitivity_report(results, *, margin: float = MARGIN, title: str = "Sensitivity: the review's observations") -> str:
    """Markdown: a table of the review's observations, per rule, with holds / does not hold and the evidence."""
    findings = sensitivity_findings(results, margin=margin)
    several = len({f.sweep for f in findings}) > 1
    lines = [f"## {title}", "",
             f"Each observation is checked on the swept grid only; 'worse' means at least {100 * margin:.0f} points "
             "of best validation accuracy below the best of the rule.", "",
             ("| sweep " if several else "") + "| observation | rule | holds | evidence |",
             ("|---" if several else "") + "|---|---|---|---|"]
    verdict = {True: "yes", False: "no", None: "untested"}
    for f in findings:
        lines.append((f"| {f.sweep} " if several else "") + f"| {f.text} | {f.rule} | {verdict[f.holds]} | {f.evidence} |")
    if not findings:
        lines.append("| (no finished runs) | | untested | |")
    return "\n".join(lines) + "\n"
