"""Send a run's metrics to TensorBoard, Weights & Biases or MLflow: ``train(config, callbacks=loggers("tensorboard"))``.

``feedalign train --log tensorboard`` (or ``wandb``, ``mlflow``, comma-separated) does the
same. Each logger is an ordinary :class:`~feedalign.training.engine.Callback`: at every
epoch end it sends the epoch's metrics row (``train_loss``, ``val_accuracy``, ...) and the
alignment angles measured since the last epoch (read back from ``RUN_DIR/alignment.jsonl``
when alignment is logged, ``--alignment-every``), all against the optimizer step, with
the epoch as a metric of its own. The run directory's ``metrics.jsonl``/``metrics.csv``
and ``alignment.jsonl`` stay the record; these are copies for the tools researchers use.

Where they write: TensorBoard event files in ``RUN_DIR/tensorboard/`` (``tensorboard
--logdir runs``); W&B and MLflow wherever those libraries are configured to (their own
environment variables: ``WANDB_PROJECT``, ``WANDB_MODE``, ``MLFLOW_TRACKING_URI``, ...).
None of the three is a dependency of feedalign: install the extra you use
(``pip install 'feedalign[tensorboard]'``, ``[wandb]``, ``[mlflow]``).
"""
from __future__ import annotations

import abc
import importlib.util
import math
import os
from pathlib import Path

from ..diagnostics.callback import FILE_NAME
from ..errors import ConfigError
from ..files import read_jsonl

# logger name -> (module that must be importable, pip extra)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
ANGLES = ("signal_angle", "signal_angle_per_example", "update_angle", "weight_angle", "norm_ratio")


class MetricsLogger(abc.ABC):
    """Base of the loggers: collects each epoch's values and hands them to :meth:`write`.

    Subclasses implement ``open(run)``, ``write(values: dict[str, float], step: int)`` and ``close()``.
    """

    def __init__(self):
        self.run = None
        self._sent_step = -1  # alignment rows up to this step have been sent

    def on_train_begin(self, run) -> None:
        self.run = run
        self._sent_step = run.step if run.step else -1  # a resumed run sent its earlier angles already
        self.open(run)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        by_step: dict[int, dict] = {}
        for row in self._alignment():
            if row["step"] <= self._sent_step:
                continue
            layer = f"layer{row.get('layer')}"
            for key in ANGLES:
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    by_step.setdefault(row["step"], {})[f"alignment/{layer}/{key}"] = float(value)
        self._sent_step = max([self._sent_step, *by_step])
        for at in sorted(by_step):  # in step order (W&B drops a step below one it has seen), the epoch's row last
            self.write(by_step[at], at)
        values = {f"metrics/{k}": float(v) for k, v in metrics.items()
                  if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        values["metrics/epoch"] = float(epoch)
        self.write(values, self.run.step)
        self.flush()

    def on_train_end(self, summary: dict) -> None:
        self.close()

    def _alignment(self) -> list[dict]:
        return read_jsonl(Path(self.run.run_dir) / FILE_NAME)

    def open(self, run) -> None: ...

    @abc.abstractmethod
    def write(self, values: dict, step: int) -> None:
        """Send ``values`` (name -> number) at optimizer step ``step`` to the backend."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger(MetricsLogger):
    """Event files in ``log_dir`` (default ``RUN_DIR/tensorboard``), one scalar series per metric and angle."""

    def __init__(self, log_dir: str | Path | None = None):
        super().__init__()
        _require("tensorboard")
        self.log_dir, self.writer = log_dir, None

    def open(self, run) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir or Path(run.run_dir) / "tensorboard"))

    def write(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(MetricsLogger):
    """A W&B run named after the run directory, with the config; project from ``WANDB_PROJECT`` (default feedalign)."""

    def __init__(self, **init_kwargs):
        super().__init__()
        _require("wandb")
        self.init_kwargs, self.wandb_run = init_kwargs, None

    def open(self, run) -> None:

        import wandb
        kwargs = {"project": os.environ.get("WANDB_PROJECT", "feedalign"), "name": Path(run.run_dir).name,
                  "config": run.config.to_dict(), "dir": str(run.run_dir), **self.init_kwargs}
        self.wandb_run = wandb.init(**kwargs)

    def write(self, values: dict, step: int) -> None:
        self.wandb_run.log(values, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class MlflowLogger(MetricsLogger):
    """An MLflow run named after the run directory, with the config as parameters (tracking URI from MLflow's settings)."""

    def __init__(self):
        super().__init__()
        _require("mlflow")
        self.active = False

    def open(self, run) -> None:
        import mlflow
        mlflow.start_run(run_name=Path(run.run_dir).name)
        mlflow.log_params({k: str(v) for k, v in run.config.to_dict().items()})
        self.active = True

    def write(self, values: dict, step: int) -> None:
        import mlflow
        mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self.active:
            import mlflow
            mlflow.end_run()
            self.active = False


_CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


def _require(name: str) -> None:
    module, extra = BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"logging to {name} needs the {module} package: pip install 'feedalign[{extra}]'")


def parse_log(text: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ``["tensorboard", "wandb"]``; ConfigError for an unknown name."""
    if text is None:
        return []
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"unknown logger {name!r}; choose from {', '.join(BACKENDS)} (comma-separated)")
    return list(dict.fromkeys(names))


def loggers(names: str | list[str] | None) -> list[MetricsLogger]:
    """The callbacks for ``names`` (``"tensorboard"``, ``"wandb,mlflow"``, a list); ConfigError when one is not installed."""
    names = parse_log(",".join(names) if isinstance(names, (list, tuple)) else names)
    return [_CLASSES[name]() for name in names]
