"""Reproductions of the FA and DFA papers, one module per experiment, registered by name.

    feedalign reproduce toy1d --quick
    feedalign.experiments.run_experiment("linear", quick=True, out="runs/reproduce")
"""
from __future__ import annotations

import importlib

from .base import (Claim, DataUnavailable, Experiment, SeededExperiment, experiment_config, experiments,
                   get_experiment, register)
from .runner import run_experiment
from ._training import TrainingExperiment

# Experiment modules, each registering itself on import.
_MODULES = ("toy1d", "linear", "nonlinear", "review", "mnist_fa", "deep100", "fixed_first_layer", "nokland_mnist",
            "hidden_activations", "sensitivity", "family", "biotorch_cifar", "eqprop", "transformer", "dtp",
            "dkp_mnist", "ff_mnist", "pc_mnist", "linear_np", "rule_alignment", "nokland_dropout")
for _name in _MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Claim", "DataUnavailable", "Experiment", "SeededExperiment", "TrainingExperiment", "experiment_config",
           "experiments", "get_experiment", "register", "run_experiment"]
