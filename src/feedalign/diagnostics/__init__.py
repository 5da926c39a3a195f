"""Diagnostics: how well a rule's learning signals align with backprop's.

    table = feedalign.diagnostics.alignment(model, x, y, F.cross_entropy)
    print(table)             # one row per linear layer, angles in degrees
    log(table.flat())        # {"signal_angle/layer1": ..., ...}
"""
from .alignment import AlignmentRow, AlignmentTable, alignment
from .angles import angle

__all__ = ["AlignmentRow", "AlignmentTable", "alignment", "angle"]
