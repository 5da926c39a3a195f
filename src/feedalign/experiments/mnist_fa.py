"""Lillicrap et al., MNIST task: 784-1000-10 logistic units, BP vs FA vs shallow learning.

What the paper gives (arXiv 1411.0247v1, MNIST task and methods; the Nat. Commun. version's
methods could not be reached here): sigmoid hidden and output units, squared error
L = 1/2 e^T e, all 60000 training images, test error on the 10000 test images: BP 2.4 %
(mean of 20 runs), FA 2.1 % (20 runs), shallow learning 7.2 % (Fig. 2 axis labels).
Learning rate 1e-3, weight decay 1e-6; W0, W ~ U[-w, w] with w tuned by hand for BP,
B ~ U[-b, b] with b found by manual search; training stopped when BP began to overfit
(no epoch count, batch size or b given).

What the paper leaves open is chosen on a validation split (``config["search"]``: 10000 of the
training images held out, only their error read): FA's feedback scale b (feedalign's default
1/sqrt(fan) against U[-b, b] for b in 0.1-4.0) and shallow learning's fixed hidden-weight scale w.
The rest: SGD with momentum 0.9, learning rate 0.1 with a cosine schedule over 20 epochs, batches of
64, softmax cross-entropy (squared error on sigmoid outputs trains the same network more slowly),
PyTorch's default forward init; 5 seeds (the paper averages 20 runs). The paper's numbers come from
the registry (:mod:`feedalign.experiments.papers`).
"""
from __future__ import annotations

from ._training import TrainingExperiment
from .base import Claim, register
from . import papers
from .verdicts import Compare

# Why shallow can land far from the paper's 7.2 % either way: the scale is not in the paper, and the search shows
# how much it matters (its table lists the validation error at every scale tried).
SHALLOW_FINDING = ("shallow trains only the output layer on fixed random features, whose quality depends on the "
                   "hidden weights' scale w; the paper does not give w, and shallow's validation error changes by "
                   "points across the scales searched (report: Settings chosen on validation), so the paper's "
                   "number most likely reflects another w than the one validation chose")
NUMBERS = {"BP": "lillicrap2016/mnist/bp", "FA": "lillicrap2016/mnist/fa", "shallow": "lillicrap2016/mnist/shallow"}
MIN_SEEDS = 5  # rows set against numbers the paper averages over 20 runs
FEEDBACK_SCALES = (None, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # None: the rule's default, U[-1/sqrt(fan), 1/sqrt(fan)]
# (1.0 was the edge of the first grid, and it won: the grid goes on until the choice lies inside it)
SHALLOW_INITS = ({"init": "default"}, {"init": "uniform", "init_scale": 0.1}, {"init": "uniform", "init_scale": 0.3},
                 {"init": "uniform", "init_scale": 1.0})
HISTORY = ("History (chose nothing): an earlier exploration read TEST errors: FA at the default feedback scale "
           "6.03 %, at b = 0.5 2.11 %; shallow at w = 0.1 7.65 %, 0.3 5.06 %, 1.0 5.08 %, at the default 8.60 %. "
           "The feedback scale was then fixed at 0.5 by that test error; both scales are now chosen on validation.")


@register
class MnistFA(TrainingExperiment):
    name = "mnist-fa"
    title = "MNIST 784-1000-10 sigmoid: BP vs FA vs shallow (output layer only)"
    paper = "Lillicrap et al., arXiv 1411.0247v1, MNIST task (test error BP 2.4%, FA 2.1%, shallow 7.2%)"
    order = 50
    full_runtime = ("about an hour on 2 workers: a validation search (7 feedback scales for FA, 4 init scales for "
                    "shallow, 20 epochs each), then 5 seeds x 3 learners x 20 epochs")
    default_seeds = {"quick": 2, "full": 5}
    searched = ("feedback scale",)
    searched_on_test_before = True

    def config(self, quick):
        if quick:
            search = {"learners": {"FA": [{"feedback_scale": None}, {"feedback_scale": 0.5}]}, "seeds": 1,
                      "epochs": 2, "n_val": 1000, "pick": "best"}
        else:
            search = {"learners": {"FA": [{"feedback_scale": b} for b in FEEDBACK_SCALES],
                                   "shallow": [dict(c) for c in SHALLOW_INITS]},
                      "seeds": 1, "epochs": None, "n_val": 10000, "pick": "best"}
        return {"data": {"name": "mnist", "n_train": 3000 if quick else None, "n_val": 1000 if quick else None,
                         "n_test": 2000 if quick else None},
                "epochs": 4 if quick else 20, "lr": 0.1, "momentum": 0.9, "batch_size": 32 if quick else 64,
                "selection": "validation", "search": search}

    def learners(self, config):
        base = {"architecture": "784-1000-10", "activation": "sigmoid", "loss": "cross_entropy", "optimizer": "sgd",
                "lr": config["lr"], "momentum": config["momentum"], "batch_size": config["batch_size"],
                "epochs": config["epochs"], "schedule": "cosine", "feedback_init": "uniform",
                "feedback_scale": config.get("feedback_scale")}
        return {"BP": dict(base, rule="bp"), "FA": dict(base, rule="fa"),
                "shallow": dict(base, rule="bp", frozen="hidden")}

    def comparisons(self, config):
        if config["size"] == "quick":  # 3000 training images, 4 epochs: no paper number describes it
            return {"ordering": Compare("check", holds=lambda v: min(v) > 0, min_seeds=1,
                                        criterion="shallow above FA on every seed",
                                        finding="FA's hidden learning did not beat a fixed hidden layer")}
        n = MIN_SEEDS  # the paper averages 20 runs
        return {"bp_test": Compare("value", number=NUMBERS["BP"], min_seeds=n),
                "fa_test": Compare("value", number=NUMBERS["FA"], min_seeds=n),
                "shallow_test": Compare("value", number=NUMBERS["shallow"], tolerance=0.5, min_seeds=n,
                                        finding=SHALLOW_FINDING),
                "ordering": Compare("gap", number=NUMBERS["shallow"], minus=NUMBERS["FA"], tolerance=0.5, min_seeds=n,
                                    finding=SHALLOW_FINDING),
                "fa_vs_bp": Compare("gap", number=NUMBERS["FA"], minus=NUMBERS["BP"], min_seeds=n)}

    def deviations(self, config):
        return [self.data_deviation(config),
                f"{config['epochs']} epochs of SGD (lr {config['lr']}, cosine schedule, momentum {config['momentum']}, "
                f"batch {config['batch_size']}) with softmax cross-entropy, where the paper uses squared error, "
                "lr 1e-3 and stops when BP starts to overfit; FA's feedback scale b and shallow's hidden-weight "
                "scale w (neither given by the paper) chosen on validation (search below).",
                "Shallow = the same network with only the output layer trained (hidden layer fixed at its random init).",
                "Tolerance: 0.3 points for the errors below 5 % and for FA minus BP, 0.5 for shallow's 7.2 % and the "
                "shallow-minus-FA gap.", HISTORY]

    def summarize(self, config, runs, out):
        err = {k: self.final(runs, k) for k in ("BP", "FA", "shallow")}
        claims = [Claim(f"{k.lower()}_test", f"{k}: test error", papers.label(NUMBERS[k]), err[k], unit="%",
                        paper_value=papers.value(NUMBERS[k])) for k in ("BP", "FA", "shallow")]
        claims.append(Claim("ordering", "shallow minus FA test error (points): hidden learning under FA helps",
                            "-", [s - f for s, f in zip(err["shallow"], err["FA"])]))
        claims.append(Claim("fa_vs_bp", "FA minus BP test error (points)", "-",
                            [f - b for f, b in zip(err["FA"], err["BP"])]))
        figures = [self.curves(config, runs, out, title="784-1000-10 sigmoid, MNIST: validation error")]
        return claims, figures
