"""feedalign: learning rules without weight transport (FA, DFA, IFA, ...) for PyTorch.

    import feedalign
    model = feedalign.convert(feedalign.mlp("784-800-10"), "dfa")
    loss = criterion(model(x), y); loss.backward(); optimizer.step()
"""
from . import data, diagnostics
from ._version import __version__  # noqa: F401  (feedalign.__version__)
from .convert import convert, describe, feedback_matrices, learning_rule, rule_of
from .diagnostics import alignment
from .models import lenet5, lstm_classifier, mlp, nokland_conv, parse_sizes, vit_tiny
from .rules import exact_gradients, get_rule, register, rules
from .sweeps import compare
from .training import resume, train

__all__ = ["alignment", "compare", "convert", "data", "describe", "diagnostics", "exact_gradients", "feedback_matrices",
           "get_rule", "learning_rule", "lenet5", "lstm_classifier", "mlp", "nokland_conv", "parse_sizes", "register",
           "resume", "rule_of", "rules", "train", "vit_tiny"]
