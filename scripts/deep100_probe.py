"""Why BP stalls on deep100's 100x240 tanh network: vanishing gradients from the init, or a rate too large?

Two measurements on the experiment's own learners (``feedalign reproduce deep100`` settings, MNIST):

1. at initialization, each learner's spread of a hidden unit across inputs and the norm of the loss gradient
   of layers 1, 10, 50, 100 and the output (one batch of 256 training images);
2. a short RMSprop run (600 steps of batch 64) of BP at several learning rates, printing the training loss and
   the accuracy on 2000 training images every 100 steps.

    python scripts/deep100_probe.py                        # both, BP from Nøkland's init and from orthogonal weights
    python scripts/deep100_probe.py --rates 1e-5 1e-4 --learners "BP, orthogonal init"

It reads nothing of the test set. Results go to stdout; the closing note of the session that added it quotes them.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from feedalign.experiments import get_experiment
from feedalign.experiments.base import experiment_config
from feedalign.training.build import build_model, load_data, make_loss


def learner_config(label: str):
    experiment = get_experiment("deep100")
    for name, _, _, run in experiment.search_configs(experiment_config("deep100", False), "/tmp/deep100-probe"):
        if name == label:
            return run
    raise SystemExit(f"deep100 has no learner {label!r}")


def at_init(run, x, y) -> None:
    model, loss_fn = build_model(run, torch.device("cpu")), make_loss(run.loss, 10)
    h, spread = x, []
    for module in model:
        h = module(h)
        if isinstance(module, nn.Tanh):
            spread.append(h.std(0).mean().item())
    loss_fn(model(x), y).backward()
    grads = [m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)]
    print(f"{run.rule} from {run.init} init:\n  unit spread across inputs, layers 1/10/50/100: "
          + " ".join(f"{spread[i]:.2e}" for i in (0, 9, 49, 99))
          + "\n  |dL/dW|, layers 1/10/50/100/output:         " + " ".join(f"{grads[i]:.2e}" for i in (0, 9, 49, 99, 100)))


def short_run(run, x, y, lr: float, steps: int = 600) -> None:
    model, loss_fn = build_model(run, torch.device("cpu")), make_loss(run.loss, 10)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=lr)
    generator, t0, log = torch.Generator().manual_seed(0), time.perf_counter(), []
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        loss = loss_fn(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                accuracy = (model(x[:2000]).argmax(1) == y[:2000]).float().mean().item()
            log.append(f"{step}: {loss.item():.3f} / {accuracy:.2f}")
    print(f"  lr {lr:g} (step: loss / training accuracy)  " + "  ".join(log) + f"  [{time.perf_counter() - t0:.0f} s]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--learners", nargs="+", default=["BP", "BP, orthogonal init"])
    parser.add_argument("--rates", nargs="+", type=float, default=[3e-6, 1e-5, 1e-4])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [learner_config(label) for label in args.learners]
    data = load_data(runs[0])
    x, y = data.train_x.reshape(len(data.train_x), -1).float(), data.train_y
    for run in runs:
        at_init(run, x[:256], y[:256])
        for lr in args.rates:
            short_run(run, x, y, lr)


if __name__ == "__main__":
    main()
