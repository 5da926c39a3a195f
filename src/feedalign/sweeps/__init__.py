"""Sensitivity sweeps: map where each learning rule trains over a grid or random sample of settings.

    from feedalign.sweeps import load_spec, run_sweep, sensitivity_report
    spec = load_spec("examples/sweeps/sensitivity-init-lr.toml", overrides={"epochs": 1})
    result = run_sweep(spec)                 # local worker processes; backend="ray" for Ray Tune
    print(sensitivity_report(result.sweep_dir))

``feedalign sweep SPEC`` is the command-line form. See :mod:`feedalign.sweeps.spec`
for the spec format and :mod:`feedalign.sweeps.runner` for the sweep directory.
"""
from .compare import DEFAULT_RULES, CompareResult, compare
from .plots import plot_sweep
from .results import read_results
from .runner import SweepResult, run_sweep
from .sensitivity import Finding, sensitivity_findings, sensitivity_report
from .spec import SweepSpec, config_hash, load_spec, spec_from_dict

__all__ = ["CompareResult", "DEFAULT_RULES", "Finding", "SweepResult", "SweepSpec", "compare", "config_hash", "load_spec",
           "plot_sweep", "read_results", "run_sweep", "sensitivity_findings", "sensitivity_report", "spec_from_dict"]
