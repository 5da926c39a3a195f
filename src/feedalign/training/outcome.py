"""Outcome labels: did a run train, refuse, collapse or diverge?

Many FA/DFA configurations never leave chance ("refused"), and some gain
accuracy then lose it ("collapsed"); a learning curve says which, and this
module says it in one word, with the epoch it was decided at.
"""
from __future__ import annotations

import math

OUTCOMES = ("trained", "refused", "collapsed", "diverged")


def label_outcome(val_scores: list[float], *, task: str = "classification", num_classes: int | None = None,
                  initial: float | None = None, refuse_margin: float = 0.1, collapse_drop: float = 0.2,
                  diverged_at: int | None = None) -> tuple[str, int]:
    """``(outcome, epoch)`` of a run from its per-epoch validation scores.

    Args:
        val_scores: epoch 1, 2, ... validation accuracy (classification) or loss (regression).
        initial: validation loss before training (regression only).
        diverged_at: the epoch the loss became NaN/Inf, if it did.

    Rules, first match wins:

    - ``diverged``: ``diverged_at`` is set; decided then.
    - ``refused``: classification: the best accuracy never exceeds chance
      ``1/num_classes`` by more than ``refuse_margin``; regression: the final loss is
      not ``refuse_margin`` (a fraction) below ``initial``. Decided at the last epoch.
    - ``collapsed`` (classification): accuracy drops more than ``collapse_drop`` below
      its best and stays there to the end; decided at the first epoch of that stretch.
    - ``trained`` otherwise; decided at the last epoch.
    """
    if diverged_at is not None:
        return "diverged", int(diverged_at)
    if not val_scores:
        raise ValueError("label_outcome needs at least one epoch of validation scores")
    last = len(val_scores)
    if task == "regression":
        if initial is None:
            raise ValueError("label_outcome: regression needs the initial validation loss")
        final = val_scores[-1]
        if not (math.isfinite(final) and final < (1.0 - refuse_margin) * initial):
            return "refused", last
        return "trained", last
    if not num_classes:
        raise ValueError("label_outcome: classification needs num_classes")
    best = max(val_scores)
    if best <= 1.0 / num_classes + refuse_margin:
        return "refused", last
    best_epoch = val_scores.index(best) + 1
    start = None
    for epoch in range(last, best_epoch, -1):  # walk back over the final stretch below best - drop
        if val_scores[epoch - 1] < best - collapse_drop:
            start = epoch
        else:
            break
    if start is not None:
        return "collapsed", start
    return "trained", last
