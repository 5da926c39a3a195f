"""Checkpoints that let a killed run resume bitwise.

A checkpoint written at the end of epoch E holds everything the rest of the run
depends on: model (feedback buffers included), optimizer, schedule, metrics so far,
and every random state (torch CPU/CUDA, Python, NumPy). The data order of epoch E+1
is drawn from a generator seeded by (data seed, epoch), so it too depends only on
what is saved.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from ..diagnostics.plots import check_run_dir
from ..errors import RunDirError
from . import integrity
from .build import build_model, load_data

FORMAT = 1


def rng_states() -> dict:
    """Every global random state, as plain types (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save_checkpoint(path: str | Path, *, epoch: int, step: int, model, optimizer, schedule, metrics: list,
                    extra: dict | None = None) -> None:
    state = {
        "format": FORMAT, "epoch": epoch, "step": step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "metrics": metrics, "rng": rng_states(), **(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    # RUN_DIR/checkpoints/NAME is recorded in RUN_DIR's integrity manifest (written atomically either way)
    integrity.write_file(path.parent.parent, f"{path.parent.name}/{path.name}", buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # permissions, a folder in its place: the command line names the path and the fix
    except Exception as err:
        raise RunDirError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}); it is damaged or not a "
                          "feedalign checkpoint; it was left as it is") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"checkpoint {str(path)!r} is not a feedalign checkpoint of format {FORMAT}")
    return state


def read_checkpoint(run_dir: str | Path, name: str, *, fix: str = "") -> dict:
    """The checkpoint ``run_dir/checkpoints/name``, verified against the run's manifest, then loaded.

    The one way a checkpoint is read (resume, ``plot hidden``, the sweep and reproduce workers through resume).
    """
    rel = f"checkpoints/{name}"
    integrity.verify(run_dir, rel, fix=fix)
    return load_checkpoint(Path(run_dir) / rel)


def load_run(run_dir: str | Path, checkpoint: str = "best"):
    """``(config, model, data)`` of a run: its config, its model with the ``checkpoint`` weights, its dataset."""
    run_dir = check_run_dir(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        raise RunDirError(f"{str(run_dir)!r} has no checkpoints/{checkpoint}.pt (the run has not finished an epoch)")
    if integrity.load(run_dir) is None:
        integrity.note_unverified(run_dir)
    config = integrity.read_config(run_dir)  # verified as resume verifies it: the model must match the weights
    state = read_checkpoint(run_dir, f"{checkpoint}.pt")
    model = build_model(config, torch.device("cpu"))
    model.load_state_dict(state["model"])
    return config, model.eval(), load_data(config)
