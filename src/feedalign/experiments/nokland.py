"""Settings shared by the experiments of Nøkland 2016 (arXiv 1609.01596), from his code anokland/dfa-torch.

RMSprop, learning rate 1e-4, batches of 64, sigmoid outputs with binary cross-entropy
against one-hot targets, tanh hidden units. With FA, DFA and IFA the forward weights
and biases start at zero; BP starts from U[-1/sqrt(fan_in), 1/sqrt(fan_in)]. Feedback
matrices are U[-1/sqrt(n), 1/sqrt(n)] (feedalign's default scale for these rules).
"""
from __future__ import annotations

NOKLAND = {"activation": "tanh", "loss": "bce", "optimizer": "rmsprop", "lr": 1e-4, "batch_size": 64}


def learner(rule: str, architecture: str, epochs: float, *, zero_init: bool = True, **extra) -> dict:
    init = "zero" if (zero_init and rule != "bp") else "uniform"
    return dict(NOKLAND, rule=rule, architecture=architecture, epochs=epochs, init=init, **extra)


SETTINGS_NOTE = ("Nøkland's code settings: RMSprop lr 1e-4, batch 64, sigmoid outputs + binary cross-entropy, "
                 "tanh; FA/DFA/IFA start from zero forward weights and biases, BP from U[-1/sqrt(n), 1/sqrt(n)].")
