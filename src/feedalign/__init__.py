"""feedalign: learning rules without weight transport (FA, DFA, IFA, ...) for PyTorch.

    import feedalign
    model = feedalign.convert(feedalign.mlp("784-800-10"), "dfa")
    loss = criterion(model(x), y); loss.backward(); optimizer.step()
"""
from .convert import convert, feedback_matrices, rule_of
from .models import mlp, parse_sizes
from .rules import exact_gradients, get_rule, register, rules

__version__ = "0.1.0"

__all__ = ["convert", "exact_gradients", "feedback_matrices", "get_rule", "mlp", "parse_sizes", "register", "rule_of", "rules"]
from .models import lenet5, nokland_conv  # noqa: E402  (convolutional builders beside mlp)
__all__ += ["lenet5", "nokland_conv"]
