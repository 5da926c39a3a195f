"""Ray backend: each run of the sweep is a Ray Tune trial (``pip install feedalign[ray]``).

``run_ray`` connects to ``address`` (``ray://HOST:10001``, ``HOST:6379`` or ``auto``)
or, with none, starts a local Ray instance for the sweep and stops it after.
Each trial declares ``threads_per_run`` CPUs (``tune.with_resources``), trains its
run with the same worker code as the local backend, and reports the run's
summary and validation curve back, so the results table is built on the driver
even when the run directories stay on the nodes' disks. A failed trial is retried
``retries`` times (``FailureConfig``) and then recorded as ``crashed``; it never
stops the sweep.

Every trial trains ONE run: the Ray backend does not group runs into populations
(``population = "auto"`` applies to the local backend only; see :mod:`feedalign.sweeps.runner`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import ConfigError, FeedalignError, first_line


def _trainable(cfg: dict) -> None:
    from ray import tune

    from .results import val_curve
    from .worker import run_job
    job = cfg["job"]
    t0 = time.perf_counter()
    try:
        summary = run_job(job)
    except FeedalignError as err:  # bad settings or data fail the same way every try: report, do not retry
        tune.report({"done": 1, "seconds": time.perf_counter() - t0, "invalid": first_line(err)})
        return
    tune.report({"done": 1, "seconds": time.perf_counter() - t0, "outcome": str(summary.get("outcome")),
                 "summary_json": json.dumps(summary), "curve_json": json.dumps(val_curve(Path(job["run_dir"])))})


def import_ray():
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise ConfigError(f"the ray backend needs Ray Tune ({err}); install it with `pip install 'feedalign[ray]'`") from None
    return ray, tune


def run_ray(jobs: list[dict], *, address: str | None, threads: int, retries: int, sweep_dir: Path, name: str,
            on_done, log, max_concurrent: int | None = None) -> None:
    """Run ``jobs`` as Tune trials; call ``on_done(job, summary, status, seconds, attempts, error)`` per trial."""
    ray, tune = import_ray()
    started_here = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                hint = ("" if os.environ.get("RAY_AUTH_MODE") else "; if the cluster uses token authentication, "
                        "copy the head's ~/.ray/auth_token here and set RAY_AUTH_MODE=token")
                raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {first}{hint}") from None
            log(f"sweep: connected to Ray at {address} ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        else:
            ray.init(address="local", **kwargs)  # a new instance, even if another cluster runs here
            started_here = True
            log(f"sweep: started a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    storage = (Path(sweep_dir) / "ray").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        by_key = {job["key"]: job for job in jobs}
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": threads}),
            param_space={"job": tune.grid_search([{**job, "threads": threads} for job in jobs])},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage),
                                      failure_config=tune.FailureConfig(max_failures=retries, fail_fast=False),
                                      verbose=0),
        )
        grid = tuner.fit()
        for result in grid:
            job = by_key[result.config["job"]["key"]]
            metrics = result.metrics or {}
            if result.error is None and metrics.get("invalid"):
                on_done(job, None, "invalid", metrics.get("seconds"), 1, metrics["invalid"])
            elif result.error is None and metrics.get("summary_json"):
                summary = json.loads(metrics["summary_json"])
                curve = json.loads(metrics.get("curve_json") or "[]")
                on_done(job, summary, "done", metrics.get("seconds"), 1, None, curve)
            else:
                error = str(result.error).strip().splitlines()
                message = next((l for l in reversed(error) if l.strip()), "trial failed") if error else "trial failed"
                on_done(job, None, "crashed", metrics.get("seconds"), retries + 1, f"ray trial: {message[:300]}")
    finally:
        if started_here:
            ray.shutdown()
