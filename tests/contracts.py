"""What the contract tests expect of each registered rule, written as data.

Every rule in ``feedalign.rules()`` runs the contract tests of test_contract.py. A rule
gets :data:`DEFAULT` (every check, with the FA-type float64 reference: one feedback
matrix per layer, of its weight's shape) unless it is listed in :data:`CONTRACTS`; an
entry states how the rule's contract differs, so nothing is skipped silently.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np
import torch.nn.functional as F
from torch import nn

import feedalign
from feedalign.rules import energy
from feedalign.rules import drtp, ff, pepita, wm
from feedalign.rules import _perturbation
from feedalign.rules import trainable_layers


@dataclasses.dataclass(frozen=True)
class Contract:
    # the float64 reference the gradients must match: "bp", "feedback" (FA-type: the error
    # reaches a layer's input through its B = feedback_matrices()[k], of W's shape), "dfa",
    # "ifa" (reference.py only), "drtp"; None: none written yet (the test reports a skip; say why)
    reference: str | None = "feedback"
    conv: bool = True  # converts nn.Conv2d; False: convert must refuse a conv model
    needs_hidden: bool = False  # refuses a model with one nn.Linear
    has_feedback: bool = True  # feedback_matrices() is not empty
    seeded: bool = True  # the feedback is drawn from convert's seed
    trained_feedback: bool = False  # the feedback matrices are parameters the optimizer trains
    counters: tuple[str, ...] = ()  # buffers that every backward pass changes
    fused: bool = False  # feedalign.mlp models train through the fused path
    # backward recovers what it needs from a mean-reduced cross-entropy; any other loss
    # needs ``context(model, y)`` around the forward pass
    target_context: Callable | None = None
    strict_target: bool = False  # target_context refuses class indices out of range (np/wp fall back instead)
    after_step: Callable[[nn.Module], object] | None = None  # run after each optimizer step
    feedback_from_weights: bool = False  # B is computed from the current W (changes as W trains)
    # the FA-type reference's B written independently of the rule's code, from W and the
    # layer's stored state (then the rule's default feedback scale is used); None: feedback_matrices()
    reference_feedback: Callable[[nn.Module], list[np.ndarray]] | None = None
    # convert returns a model of the rule's own that settles to equilibrium (eqprop, chl): its forward
    # pass is not the MLP's, its exact gradient is the energy model's (both tested in test_energy.py,
    # with the float64 NumPy references), it keeps the MLP's parameters under other names
    own_model: bool = False
    # the update is a stochastic estimate of the gradient (np, wp), the gradient of no batch exactly: this sets
    # the converted model to so many perturbations that the estimate is near its mean, and the tests that compare
    # a layer's update with an exact one (a single layer; a frozen first layer, whose nodes or weights are then
    # left unperturbed, so the other layers' noise differs) check that the whole update (every parameter,
    # concatenated) is within 30 degrees of the exact gradient instead
    estimate: Callable[[nn.Module], object] | None = None
    # the update reaches each layer as a gradient at its output, which the alignment measures as the signal angle;
    # False (pepita): the updates come from two forward passes, so no signal angle (NaN, with the reason), and
    # the output layer learns from the modulated pass's error, near but not at e
    signals: bool = True


def _usf_feedback(model):
    out = []
    for layer in trainable_layers(model):
        w = layer.weight.detach().numpy()
        fan_in, fan_out = w[0].size, w.shape[0] * w[0, 0].size if w.ndim == 4 else w.shape[0]
        out.append(np.sign(w) * np.sqrt(2.0 / (fan_in + fan_out)))
    return out


def _brsf_feedback(model):  # the magnitude of the next draw, with the signs of the current W
    return [layer.magnitude().numpy() * np.sign(layer.weight.detach().numpy()) for layer in trainable_layers(model)]


def _frsf_feedback(model):
    return [layer.feedback_magnitude.numpy() * np.sign(layer.weight.detach().numpy())
            for layer in trainable_layers(model)]


def _many_perturbations(model):
    return _perturbation.configure(model, sigma=1e-2, samples=4000, antithetic=True)


DEFAULT = Contract()

CONTRACTS = {
    "bp": Contract(reference="bp", has_feedback=False, seeded=False),
    "fa": Contract(fused=True),
    "dfa": Contract(reference="dfa", needs_hidden=True, fused=True),
    "ifa": Contract(reference="ifa", conv=False, needs_hidden=True, fused=True),
    "usf": Contract(seeded=False, feedback_from_weights=True, reference_feedback=_usf_feedback,  # B = s sign(W)
                    fused=True),
    "brsf": Contract(counters=("feedback_draws",), feedback_from_weights=True,  # R redrawn every backward
                     reference_feedback=_brsf_feedback, fused=True),
    "frsf": Contract(feedback_from_weights=True, reference_feedback=_frsf_feedback, fused=True),
    "kp": Contract(trained_feedback=True, fused=True),
    "wm": Contract(after_step=lambda model: wm.mirror(model, 1), fused=True),
    "drtp": Contract(reference="drtp", needs_hidden=True, target_context=drtp.target, fused=True,
                    strict_target=True),
    # DFA's weight gradients; its B_k (views of one Parameter) trained with e^T h_k (test_dkp.py's reference); its
    # feedback must exist when the optimizer is built, so Conv2d layers after the first are refused
    "dkp": Contract(reference="dfa", conv=False, needs_hidden=True, trained_feedback=True, fused=True),
    # two forward passes, no backward one: its float64 reference (pass 2 on the input modulated by e F, the updates
    # from the passes' difference) is its own, in test_pepita.py; the target is recovered from a mean cross-entropy
    "pepita": Contract(reference=None, conv=False, needs_hidden=True, target_context=pepita.target, signals=False,
                      strict_target=True),
    # dtp's float64 reference (weights and inverses, with its noise) is its own, in test_dtp.py
    "dtp": Contract(reference=None, conv=False, needs_hidden=True, trained_feedback=True,
                    counters=("dtp_noise_draws",)),
    "eqprop": Contract(reference=None, conv=False, has_feedback=False, seeded=False, own_model=True),
    # pc's update is its inference's (not BP's unless at equilibrium under fixed prediction); its float64 NumPy
    # reference of inference and update, and the tests against backprop's theory, are in test_pc.py; its errors
    # travel through W^T itself, so it has no feedback matrices
    # pc's updates are written into .grad after inference, never through the layers' outputs: no signal angle
    "pc": Contract(reference=None, conv=False, has_feedback=False, seeded=False, signals=False),
    "chl": Contract(reference=None, conv=False, has_feedback=False, seeded=False, own_model=True,
                    target_context=energy.target, strict_target=True),
    # forward-forward returns a network of its own (hidden layers by goodness, the last nn.Linear its softmax readout);
    # its float64 reference (each layer's own goodness-loss gradient, nothing across layers) is in test_ff.py; the
    # wrong labels of its negative data are drawn per backward from a counter in its state
    "ff": Contract(reference=None, conv=False, needs_hidden=True, has_feedback=False, seeded=False, own_model=True,
                   counters=("negative_draws",), target_context=ff.target, strict_target=True),
    # node and weight perturbation: the estimate's mean and 1/K variance against the true gradient, and a float64
    # NumPy reference of one estimate given its noise, are in test_perturbation.py; no feedback matrices; the
    # noise comes from convert's seed through a counter buffer that every training forward pass advances
    "np": Contract(reference=None, has_feedback=False, seeded=False, counters=("perturbation_draws",),
                   target_context=_perturbation.target, estimate=_many_perturbations),
    "wp": Contract(reference=None, has_feedback=False, seeded=False, counters=("perturbation_draws",),
                   target_context=_perturbation.target, estimate=_many_perturbations),
}


def contract(rule: str) -> Contract:
    return CONTRACTS.get(rule, DEFAULT)


def forward(model: nn.Module, rule: str, x, y):
    """``model(x)``, inside the rule's target context where it has one (so any loss may follow)."""
    context = contract(rule).target_context
    with (context(model, y) if context else contextlib.nullcontext()):
        return model(x)


def train_steps(model: nn.Module, rule: str, x, y, optimizer, steps: int) -> None:
    """``steps`` plain training steps with cross-entropy, and the rule's after-step hook."""
    after = contract(rule).after_step
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if after is not None:
            after(model)


def mlp_net(bias: bool = True) -> nn.Module:
    return feedalign.mlp("5-7-6-4-3", activation="tanh", bias=bias)


def conv_net(bias: bool = True) -> nn.Module:
    """Strided, padded, dilated convolutions, max-pooling, three activations; input (N, 2, 9, 9), 3 classes."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias), nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=1, padding=2, dilation=2, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 2, stride=1, padding=1, bias=bias), nn.Sigmoid(), nn.Flatten(),
        nn.Linear(5 * 3 * 3, 6, bias=bias), nn.Tanh(), nn.Linear(6, 3, bias=bias))
