"""Settings shared by the experiments of Nøkland 2016 (arXiv 1609.01596), from his code anokland/dfa-torch.

RMSprop, learning rate 1e-4, batches of 64, sigmoid outputs with binary cross-entropy
against one-hot targets, tanh hidden units. With FA, DFA and IFA the forward weights
and biases start at zero (IFA: see SETTINGS_NOTE); BP starts from U[-1/sqrt(fan_in), 1/sqrt(fan_in)]. Feedback
matrices are U[-1/sqrt(n), 1/sqrt(n)] (feedalign's default scale for these rules).
"""
from __future__ import annotations

NOKLAND = {"activation": "tanh", "loss": "bce", "optimizer": "rmsprop", "lr": 1e-4, "batch_size": 64}


def learner(rule: str, architecture: str, epochs: float, *, zero_init: bool = True, **extra) -> dict:
    # IFA reaches hidden layer k > 1 only through the forward weights W_k: from W_k = 0 it never learns them
    init = "zero" if (zero_init and rule in ("fa", "dfa")) else "uniform"
    return dict(NOKLAND, rule=rule, architecture=architecture, epochs=epochs, init=init, **extra)


SETTINGS_NOTE = ("Nøkland's code settings: RMSprop lr 1e-4, batch 64, sigmoid outputs + binary cross-entropy, "
                 "tanh; FA and DFA start from zero forward weights and biases, BP and IFA from U[-1/sqrt(n), 1/sqrt(n)] "
                 "(IFA sends the signal to layers above the first through their forward weights, so from zero "
                 "weights those layers never learn).")
