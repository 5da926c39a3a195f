"""Lillicrap et al., MNIST task: 784-1000-10 logistic units, BP vs FA vs shallow learning.

What the paper gives (arXiv 1411.0247v1, MNIST task and methods; the Nat. Commun. version's
methods could not be reached here): sigmoid hidden and output units, squared error
L = 1/2 e^T e, all 60000 training images, test error on the 10000 test images: BP 2.4 %
(mean of 20 runs), FA 2.1 % (20 runs), shallow learning 7.2 % (Fig. 2 axis labels).
Learning rate 1e-3, weight decay 1e-6; W0, W ~ U[-w, w] with w tuned by hand for BP,
B ~ U[-b, b] with b found by manual search; training stopped when BP began to overfit
(no epoch count, batch size or b given).

What the paper leaves open, we searched (single-seed runs with `feedalign train`, 20 epochs):
with feedalign's default feedback scale 1/sqrt(fan) FA ends at 6.03 % test error with 94 %
training accuracy (it underfits: the hidden layer's signal is too weak), with
B ~ U[-0.5, 0.5] at 2.11 %; BP with the same optimiser 2.23 %. So: B ~ U[-0.5, 0.5],
SGD with momentum 0.9, learning rate 0.1 with a cosine schedule over 20 epochs, batches
of 64, softmax cross-entropy (squared error on sigmoid outputs trains the same network
more slowly), PyTorch's default forward init.
"""
from __future__ import annotations

from ._training import TrainingExperiment
from .base import Claim, register

PAPER = {"BP": 2.4, "FA": 2.1, "shallow": 7.2}
# Why shallow misses 7.2%: measured with `feedalign train --rule bp --frozen hidden --architecture 784-1000-10
# --activation sigmoid --optimizer sgd --lr 0.1 --momentum 0.9 --batch-size 64 --epochs 20 --schedule cosine
# --init uniform --init-scale W --validation-size 10000` (seed 0, 2026-11-29).
SHALLOW_SEARCH = ("Shallow learning's error is set by the scale w of the fixed random hidden weights, which the paper "
                  "does not give (it tuned w by hand for BP). Searched (seed 0, settings above, U[-w, w] weights and "
                  "biases): w = 0.1: 7.65%, w = 0.3: 5.06%, w = 1.0: 5.08%, against 8.60% at PyTorch's default "
                  "w = 1/sqrt(784) = 0.036 used here. The paper's 7.2% lies inside that range; we keep the default "
                  "rather than choose w to match the paper's number.")


@register
class MnistFA(TrainingExperiment):
    name = "mnist-fa"
    title = "MNIST 784-1000-10 sigmoid: BP vs FA vs shallow (output layer only)"
    paper = "Lillicrap et al., arXiv 1411.0247v1, MNIST task (test error BP 2.4%, FA 2.1%, shallow 7.2%)"
    order = 50
    full_runtime = "about 15 min (3 seeds x 3 learners x 20 epochs, 2 workers)"
    default_seeds = {"quick": 2, "full": 3}

    def config(self, quick):
        return {"data": {"name": "mnist", "n_train": 3000 if quick else None, "n_val": 1000 if quick else None,
                         "n_test": 2000 if quick else None},
                "epochs": 4 if quick else 20, "lr": 0.1, "momentum": 0.9, "batch_size": 32 if quick else 64,
                "feedback_scale": 0.5}

    def learners(self, config):
        base = {"architecture": "784-1000-10", "activation": "sigmoid", "loss": "cross_entropy", "optimizer": "sgd",
                "lr": config["lr"], "momentum": config["momentum"], "batch_size": config["batch_size"],
                "epochs": config["epochs"], "schedule": "cosine", "feedback_init": "uniform",
                "feedback_scale": config["feedback_scale"]}
        return {"BP": dict(base, rule="bp"), "FA": dict(base, rule="fa"),
                "shallow": dict(base, rule="bp", frozen="hidden")}

    def deviations(self, config):
        return [self.data_deviation(config),
                f"{config['epochs']} epochs of SGD (lr {config['lr']}, cosine schedule, momentum {config['momentum']}, "
                f"batch {config['batch_size']}) with softmax cross-entropy, where the paper uses squared error, "
                "lr 1e-3 and stops when BP starts to overfit; feedback B ~ U[-{0}, {0}] (the paper's b is not "
                "given; our search: the default 1/sqrt(fan) leaves FA underfitting at 6 %).".format(
                    config["feedback_scale"]),
                "Shallow = the same network with only the output layer trained (hidden layer fixed at its random init).",
                SHALLOW_SEARCH]

    def summarize(self, config, runs, out):
        err = {k: self.final(runs, k) for k in ("BP", "FA", "shallow")}
        mean = {k: sum(v) / len(v) for k, v in err.items()}
        claims = [Claim(f"{k.lower()}_test", f"{k}: test error", f"{PAPER[k]}%", err[k], unit="%",
                        paper_value=PAPER[k], reproduced=mean[k] <= PAPER[k] + 0.3,
                        criterion="within 0.3 points of the paper, or lower") for k in ("BP", "FA", "shallow")]
        claims.append(Claim("ordering", "shallow minus FA test error (points): hidden learning under FA helps",
                            "7.2 - 2.1 = 5.1", [s - f for s, f in zip(err["shallow"], err["FA"])], unit="",
                            paper_value=5.1, reproduced=mean["FA"] < mean["shallow"], criterion="FA < shallow"))
        claims.append(Claim("fa_vs_bp", "FA minus BP test error (points)", "2.1 - 2.4 = -0.3",
                            [f - b for f, b in zip(err["FA"], err["BP"])], paper_value=-0.3,
                            reproduced=mean["FA"] - mean["BP"] < 0.5, criterion="FA at most 0.5 points above BP"))
        figures = [self.curves(config, runs, out, title="784-1000-10 sigmoid, MNIST: validation error")]
        return claims, figures
