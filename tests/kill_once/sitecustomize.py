"""Fault injection for the sweep tests (tests/test_sweep_local.py, tests/test_sweep_population.py), kept out of the package.

A process started with this folder on PYTHONPATH and FEEDALIGN_TEST_KILL_ONCE_DIR set
SIGKILLs itself the first time it is about to train or resume each run, leaving a
marker named after the run in that folder: the sweep then sees a real worker death.

With FEEDALIGN_TEST_KILL_POPULATION_ONCE_DIR set instead, it SIGKILLs itself the first time
a population (feedalign.training.population) starts its last epoch, leaving a marker named
``population-<first member's run name>``: the members' run directories then hold the
checkpoints of the epochs before (none with one epoch).
"""
import os
import signal
from pathlib import Path


def _kill_once(markers: str, run_name: str) -> None:
    marker = Path(markers) / run_name
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("killed once\n")
        os.kill(os.getpid(), signal.SIGKILL)


_MARKERS = os.environ.get("FEEDALIGN_TEST_KILL_ONCE_DIR")
if _MARKERS:
    from feedalign.training import engine

    _train, _resume = engine.train, engine.resume

    def _killing_train(config, *args, **kwargs):
        _kill_once(_MARKERS, config.name)
        return _train(config, *args, **kwargs)

    def _killing_resume(run_dir, *args, **kwargs):
        _kill_once(_MARKERS, Path(run_dir).name)
        return _resume(run_dir, *args, **kwargs)

    # the sweep worker imports these names from the engine when it runs a job, so it gets the wrappers
    engine.train, engine.resume = _killing_train, _killing_resume

_POPULATION_MARKERS = os.environ.get("FEEDALIGN_TEST_KILL_POPULATION_ONCE_DIR")
if _POPULATION_MARKERS:
    from feedalign.training import population

    _train_epoch = population._train_epoch

    def _killing_train_epoch(runs, loops, model, optimizer, epoch, *args, **kwargs):
        if epoch == runs[0].config.epochs:
            _kill_once(_POPULATION_MARKERS, f"population-{runs[0].config.name}")
        return _train_epoch(runs, loops, model, optimizer, epoch, *args, **kwargs)

    # population._train looks the name up in its module when it trains an epoch, so it gets the wrapper
    population._train_epoch = _killing_train_epoch
