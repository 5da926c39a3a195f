"""Fault injection for tests/test_sweep_local.py, kept out of the package.

A process started with this folder on PYTHONPATH and FEEDALIGN_TEST_KILL_ONCE_DIR set
SIGKILLs itself the first time it is about to train or resume each run, leaving a
marker named after the run in that folder: the sweep then sees a real worker death.
"""
import os

_MARKERS = os.environ.get("FEEDALIGN_TEST_KILL_ONCE_DIR")
if _MARKERS:
    import signal
    from pathlib import Path

    from feedalign.training import engine

    def _kill_once(run_name: str) -> None:
        marker = Path(_MARKERS) / run_name
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("killed once\n")
            os.kill(os.getpid(), signal.SIGKILL)

    _train, _resume = engine.train, engine.resume

    def _killing_train(config, *args, **kwargs):
        _kill_once(config.name)
        return _train(config, *args, **kwargs)

    def _killing_resume(run_dir, *args, **kwargs):
        _kill_once(Path(run_dir).name)
        return _resume(run_dir, *args, **kwargs)

    # the sweep worker imports these names from the engine when it runs a job, so it gets the wrappers
    engine.train, engine.resume = _killing_train, _killing_resume
