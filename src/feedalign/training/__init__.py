"""Training engine: ``train(config) -> RunResult``, ``resume(run_dir)``, ``compare(config, rules, seeds)``.

    from feedalign.training import Config, train, compare
    result = train(Config(dataset="mnist1d", architecture="40-100-10", rule="dfa", epochs=5))
    result.summary["outcome"], result.run_dir

The ``feedalign train`` and ``feedalign compare`` commands are thin layers on these.
"""
from .compare import DEFAULT_RULES, CompareResult, compare
from .config import Config
from .engine import Callback, Run, RunResult, evaluate, resume, train
from .outcome import OUTCOMES, label_outcome

__all__ = ["Callback", "CompareResult", "Config", "DEFAULT_RULES", "OUTCOMES", "Run", "RunResult", "compare",
           "evaluate", "label_outcome", "resume", "train"]
