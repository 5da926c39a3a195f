"""The shared shape of the MNIST experiments: several learners trained on one dataset, seeds, curves.

A :class:`TrainingExperiment` lists its learners (label -> keyword arguments of
:func:`~feedalign.experiments._common.train_classifier`) and its data sizes; each
seed trains every learner and keeps its history. Subclasses turn the histories into
claims with :meth:`summarize`, usually plotting with :meth:`curves`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ._common import load_data, mean_std_band, pyplot, train_classifier
from .base import Experiment


@functools.lru_cache(maxsize=4)
def _cached_data(name, n_train, n_val, n_test):
    return load_data(name, seed=0, n_train=n_train, n_val=n_val, n_test=n_test)


class TrainingExperiment(Experiment):
    hashed_helpers = ("_common", "_training")
    keep_models: tuple[str, ...] = ()  # learners whose trained weights are saved (seed 0) for later experiments

    def learners(self, config: dict) -> dict[str, dict]:
        raise NotImplementedError

    def data(self, config: dict) -> dict:
        d = config["data"]
        return _cached_data(d["name"], d.get("n_train"), d.get("n_val"), d.get("n_test"))

    def run_seed(self, config, seed, out):
        data = self.data(config)
        result = {}
        for label, kwargs in self.learners(config).items():
            model, history = train_classifier(data, seed=seed, **kwargs)
            result[label] = history
            if seed == 0 and label in self.keep_models:
                torch.save({"state_dict": model.state_dict(), "kwargs": kwargs}, Path(out) / f"model-{label}.pt")
        return result

    def curves(self, config, runs, out, labels=None, key="val_error", title="", name=None, ylabel=None,
               log=False, panels=None):
        """One panel per group in ``panels`` (lists of labels), error curves mean ± std over seeds."""
        plt = pyplot()
        labels = labels or list(runs[0])
        panels = panels or [labels]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
        for ax, group in zip(axes[0], panels):
            for label in group:
                x = np.asarray(runs[0][label]["examples"]) / max(1, len(self.data(config)["train"][0]))
                mean_std_band(ax, x, [r[label][key] for r in runs], label)
            ax.set(xlabel="epochs", ylabel=ylabel or key.replace("_", " ") + (" (%)" if "error" in key else ""))
            if log:
                ax.set_yscale("log")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        name = name or f"{self.name}-{key.replace('_', '-')}.png"
        fig.savefig(Path(out) / name, dpi=110)
        plt.close(fig)
        return name

    @staticmethod
    def final(runs, label, key="test_error"):
        values = [r[label][key] for r in runs]
        return [v[-1] if isinstance(v, list) else v for v in values]

    def data_deviation(self, config) -> str:
        d = config["data"]
        return (f"Data: {d['name']}, {d.get('n_train') or 'all 50000'} training examples, "
                f"{d.get('n_val') or 10000} validation, {d.get('n_test') or 10000} test "
                "(the first 50000 of MNIST's 60000 training images train, 10000 are held out for validation).")
