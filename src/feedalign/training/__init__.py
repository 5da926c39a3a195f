"""Training engine: ``train(config) -> RunResult``, ``resume(run_dir)`` (``feedalign.compare``, several rules and
seeds on one setting, is :mod:`feedalign.sweeps.compare`).

    from feedalign.training import Config, train
    result = train(Config(dataset="mnist1d", architecture="40-100-10", rule="dfa", epochs=5))
    result.summary["outcome"], result.run_dir

The ``feedalign train`` and ``feedalign compare`` commands are thin layers on these.
"""
from .config import Config
from .engine import Callback, Run, RunResult, evaluate, resume, train
from .outcome import OUTCOMES, label_outcome

__all__ = ["Callback", "Config", "OUTCOMES", "Run", "RunResult", "evaluate", "label_outcome", "resume", "train"]
