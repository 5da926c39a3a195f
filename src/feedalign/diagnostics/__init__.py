"""Diagnostics: how well a rule's learning signals align with backprop's.

    table = feedalign.diagnostics.alignment(model, x, y, F.cross_entropy)
    print(table)             # one row per linear layer, angles in degrees
    log(table.flat())        # {"signal_angle/layer1": ..., ...}
    train(config, callbacks=[AlignmentCallback(every=100)])  # RUN_DIR/alignment.jsonl
"""
from .alignment import AlignmentRow, AlignmentTable, alignment
from .angles import angle
from .callback import AlignmentCallback, read_alignment

__all__ = ["AlignmentCallback", "AlignmentRow", "AlignmentTable", "alignment", "angle", "read_alignment"]
