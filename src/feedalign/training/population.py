"""Population training: N independent runs of one MLP architecture and rule trained as ONE batched model.

Users of this field spend their compute on seeds and small sweeps of small networks, where
per-step overhead, not arithmetic, dominates. Here the members' converted models are stacked
(:func:`feedalign.rules.fused.stack_members`): member i's layer l is slice i of one weight of shape
(N, out, in), and the fused path's runner takes a step of every member at once, each member reading its
own batch from its own data order:

    x (N, B, in)  ->  a_l = h_{l-1} W_l^T + b_l  (batched, b_l (N, 1, out))  ->  y (N, B, out)

The loss is the sum of the members' mean losses, so member i's gradient is exactly the gradient of
its own run: the slices never mix. The rule's signals are the rule's own fused-path code
(:meth:`feedalign.rules.LearningRule.fused_signals`), run with a leading member dimension, and the
step is the engine's (:class:`~feedalign.training.step.Step`), with the runner's backward taken
without autograd where the trained tensors are the layers' own (:class:`StackedStep`; kp's B, which
takes W's gradient, goes through autograd): nothing here knows which rule it trains.
A rule with a fused path trains in a population; its after-step phase gets one generator per member
(wm's mirror draws each member's noise from its separate run's stream).

The optimizers are in :mod:`feedalign.training.population_optim`: each ``torch.optim`` update with a
per-member learning rate and L2 weight decay as (N,) tensors, tested against ``torch.optim`` member by
member.

:func:`train_population` is ``feedalign.train`` for several configs at once: every member gets an
ordinary run directory (config.toml, metrics.jsonl, summary.json, checkpoints with its own model and
optimizer state, alignment.jsonl at the config's interval), built by the engine's own code, so each can
be resumed, plotted and compared like any run. Members may differ in ``seed`` (init, feedback, data
order, validation split), ``lr``, ``init_scale``, ``feedback_scale``, ``weight_decay`` and ``name``;
:func:`population_key` says which configs can share a population and :func:`unsupported` why one cannot.

Each member's trajectory equals its separate run to float tolerance, not bitwise: batched matmuls sum
in another order than ``mm`` (tests/test_population.py checks it against separate ``feedalign.train``
runs). ``train_seconds`` of a member is its share (1/N) of the population's epoch time.
"""
from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F

from ..convert import learning_rule
from ..models import input_layout
from ..rules import fused, get_rule
from . import engine
from .config import Config
from .population_optim import PopulationOptimizer, make_population_optimizer
from .step import Step

# fields in which members of one population may differ
VARYING = {"seed": 0, "lr": 1.0, "init_scale": None, "feedback_scale": None, "weight_decay": 0.0, "name": None}


def population_key(config: Config) -> tuple:
    """Configs with equal keys can train as one population (when :func:`unsupported` allows): they
    differ only in the fields of ``VARYING``."""
    fields = config.replace(**VARYING).to_dict()
    return tuple(sorted(fields.items(), key=lambda kv: kv[0]))


def unsupported(config: Config) -> str | None:
    """Why ``config`` cannot train in a population, or None when it can."""
    if get_rule(config.rule).fused_signals() is None:
        return f"rule {config.rule!r} has no fused path (population training runs the fused path's runner)"
    if input_layout(config.architecture) != "flat":
        return f"architecture {config.architecture!r} is not an MLP"
    if config.dropout or config.input_dropout:  # the stacked runner is the fused path's, for plain stacks
        return "dropout (population training runs the fused path, which has no dropout)"
    for name, value, needed in (("augment", config.augment, "none"), ("normalize", config.normalize, "none")):
        if value != needed:
            return f"{name} {value!r} (population training needs {needed!r})"
    for name, value, needed in (("frozen", config.frozen, "none"),
                                ("weight_decay_mode", config.weight_decay_mode, "l2")):
        if value != needed:
            return f"{name} {value!r} (population training needs {needed!r})"
    if config.loss not in ("auto", "cross_entropy"):
        return f"loss {config.loss!r} (population training needs cross_entropy)"
    if config.clip_grad_norm is not None:  # the stacked step has no .grad to clip; one norm per member is not there
        return "clip_grad_norm (the population's step turns the rule's signals into updates without .grad to clip)"
    if config.warmup_steps:  # the members' own optimizers, whose step hooks warm up, never step in a population
        return "warmup_steps (the population optimizer takes each member's rate per epoch, not per step)"
    if config.optimizer not in ("sgd", "adam", "rmsprop", "rmsprop-graves"):
        return f"optimizer {config.optimizer!r} (population training has sgd, adam, rmsprop and rmsprop-graves)"
    if config.stop_train_error is not None:  # members would train every epoch, unlike their separate runs
        return "stop_train_error (population members train every epoch)"
    return None


def member_losses(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, (N,), for outputs (N, B, classes) and class indices (N, B)."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1), reduction="none").view(y.shape).mean(1)


class StackedStep(Step):
    """The engine's step on stacked members with the fused runner's backward taken without autograd.

    The same parts as :class:`~feedalign.training.step.Step` (the rule's forward context, the forward
    pass, each member's mean cross-entropy, the rule's signals, the optimizer, the rule's after-step
    phase), but the signals come from :meth:`feedalign.rules.fused.Plan.member_signals` as ``(delta,
    h)`` pairs, which the population optimizer turns into its update itself: SGD adds ``delta^T h``
    straight into its momentum. On the CPU the stacked weights outgrow the cache, and autograd's
    ``.grad`` costs a pass over them more, and its nodes their overhead (measured in
    docs/population.md). Only for models whose trained tensors are
    the layers' weights and biases (:func:`takes_stacked_step`); the rule's math is the fused
    path's, tested against :class:`Step` through autograd.
    """

    def __init__(self, model, optimizer: PopulationOptimizer, *, generator=None):
        super().__init__(model, optimizer, member_losses, generator=generator)
        self.plan = fused.plan_of(model)
        self.layers = [(layer.weight, layer.bias) for layer in self.plan.linears]
        self._saved = None

    def forward(self, x, y):
        if self.context is None:
            output, state = self.plan.member_forward(x)
        else:
            with self.context(self.model, y):
                output, state = self.plan.member_forward(x)
        log_p = output.log_softmax(2)
        self._saved = (state, log_p)
        return output, -log_p.gather(2, y.unsqueeze(2)).squeeze(2).mean(1)

    def update(self, losses, batch, step, live: torch.Tensor | None = None) -> None:
        """The step from the last :meth:`forward`; ``live`` (N,) bool: members whose error counts (a
        stopped member's NaN stays out of its slice)."""
        state, log_p = self._saved
        self._saved = None
        y = batch[1]
        # dL/dy of each member's mean cross-entropy: (softmax(y) - onehot) / B
        error = log_p.exp_().scatter_add_(2, y.unsqueeze(2), log_p.new_full((1, 1, 1), -1.0).expand_as(
            y.unsqueeze(2))).div_(y.shape[1])
        if live is not None:
            error = torch.where(live.view(-1, 1, 1), error, 0.0)
        terms = self.plan.member_signals(state, error)
        self.optimizer.step_linear([(w, b, delta, h) for (w, b), (delta, h) in zip(self.layers, terms)])
        if self.after is not None:
            self.after(self.model, batch, step, generator=self.generator)


def takes_stacked_step(model) -> bool:
    """Whether a stacked model's trained tensors are its layers' weights and biases only (not kp's B,
    which gets W's gradient through autograd), so :class:`StackedStep` can train it."""
    layers = {id(t) for layer in fused.plan_of(model).linears for t in (layer.weight, layer.bias) if t is not None}
    return all(id(p) in layers for p in model.parameters() if p.requires_grad)


def train_population(configs: list[Config], datasets: list | None = None, *, progress: str = "auto",
                     ) -> list:
    """Train ``configs`` (one population: equal :func:`population_key`, all supported) as one batched
    model; returns one :class:`~feedalign.training.RunResult` per config, in order, each with its own
    ordinary run directory. ``datasets[i]``: config i's data splits if already loaded.

    The engine runs it (:func:`~feedalign.training.engine.train_together`): this module only supplies the
    pass over the training set that steps every member at once (:class:`PopulationTrainer`)."""
    if not configs:
        raise ValueError("train_population needs at least one config")
    keys = {population_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("train_population: the configs differ in more than seed, lr, init_scale, feedback_scale, "
                         "weight_decay and name")
    reason = next((r for r in map(unsupported, configs) if r is not None), None)
    if reason is not None:
        raise ValueError(f"train_population: {reason}")

    def check(run):
        if run.loss_name != "cross_entropy":
            return f"train_population: loss {run.loss_name!r} (needs cross_entropy)"
        return None

    with warnings.catch_warnings():  # the members' own optimizers never step: their schedules set the lr
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        return engine.train_together(configs, PopulationTrainer, datasets=datasets, progress=progress, check=check)


class PopulationTrainer(engine.EpochTrainer):
    """The engine's pass over the training set for N runs stacked into one model (one per engine loop).

    After each epoch every member's own model and optimizer state get their slice of the population's, so
    the engine evaluates, checkpoints and resumes each member as a separate run.
    """

    def __init__(self, loops):
        self.loops = loops
        self.runs = [loop.run for loop in loops]
        run = self.runs[0]
        models = [r.model for r in self.runs]
        self.population = fused.stack_members(models, learning_rule(models[0]).fused_signals())
        dtype = next(self.population.parameters()).dtype
        lr = torch.tensor([r.config.lr for r in self.runs], dtype=dtype, device=run.device)
        decay = torch.tensor([r.config.weight_decay for r in self.runs], dtype=dtype, device=run.device)
        self.optimizer = make_population_optimizer(run.config, self.population.parameters(), lr, decay)

    def train_epoch(self, epoch, members):
        for i in members:  # each member's own schedule (stepped by the engine after every epoch) sets its lr
            self.optimizer.lr[i] = self.runs[i].optimizer.param_groups[0]["lr"]
        trained = _train_epoch(self.runs, self.loops, self.population, self.optimizer, epoch, members,
                               self.loops[0].bar)
        for i in members:
            if trained[i] is not None:
                fused.unstack_member(self.population, i, self.runs[i].model)
        _copy_state(self.optimizer, self.population, self.runs)
        return [trained[i] for i in members]

    def stop(self, member):
        self.optimizer.lr[member] = 0.0  # its slice trains on, unread


def _train_epoch(runs, loops, population, optimizer, epoch, alive, bar) -> list:
    """One pass of every live member over its own shuffled training set; per member a ``Trained`` or
    None (its loss went NaN/Inf: it stops, as a separate run would, the others go on)."""
    config = runs[0].config
    n = len(loops[0].train_set[0])
    if any(len(loop.train_set[0]) != n for loop in loops):
        raise ValueError("population members must have training sets of one size")
    size, batch = len(runs), config.batch_size
    # the data order of each member's separate run (feedalign.data.batches draws it the same way)
    orders = torch.stack([torch.randperm(n, generator=engine.epoch_generator(run.config, epoch)) for run in runs])
    # the rule's after-step noise: each member's separate run's stream
    generators = [engine.epoch_generator(run.config, epoch, stream=1) for run in runs]
    stacked_step = takes_stacked_step(population)
    step = (StackedStep(population, optimizer, generator=generators) if stacked_step
            else Step(population, optimizer, member_losses, generator=generators))
    xs = [loop.train_set[0] for loop in loops]
    ys = [loop.train_set[1] for loop in loops]
    shared = all(x is xs[0] for x in xs) and all(y is ys[0] for y in ys)
    device = xs[0].device
    orders = orders.to(device)
    total = torch.zeros(size, dtype=torch.float64, device=device)
    correct = torch.zeros(size, dtype=torch.int64, device=device)
    live = torch.zeros(size, dtype=torch.bool, device=device)
    live[alive] = True
    stopped: dict[int, bool] = {}
    probes = [(i, [m for m in (getattr(cb, "on_step", None) for cb in loops[i].callbacks) if m is not None])
              for i in alive]
    probes = [(i, methods) for i, methods in probes if methods]
    every = min([cb.every for i, _ in probes for cb in loops[i].callbacks if getattr(cb, "every", 0)] or [0])
    lr0 = [run.optimizer.param_groups[0]["lr"] for run in runs]
    batches: dict[int, tuple] = {}
    bar.start_epoch(epoch, math.ceil(n / batch))
    t0 = time.perf_counter()
    seen = 0
    for start in range(0, n, batch):
        idx = orders[:, start:start + batch]
        b = idx.shape[1]
        if shared:
            xb = xs[0].index_select(0, idx.reshape(-1)).view(size, b, *xs[0].shape[1:])
            yb = ys[0].index_select(0, idx.reshape(-1)).view(size, b, *ys[0].shape[1:])
        else:  # straight into one (N, B, ...) batch, no stack
            if b not in batches:
                batches[b] = (xs[0].new_empty((size, b, *xs[0].shape[1:])),
                              ys[0].new_empty((size, b, *ys[0].shape[1:])))
            xb, yb = batches[b]
            for k, (x, y, i) in enumerate(zip(xs, ys, idx)):
                torch.index_select(x, 0, i, out=xb[k])
                torch.index_select(y, 0, i, out=yb[k])
        out, losses = step.forward(xb, yb)
        losses_now = losses.detach()
        bad = live & ~torch.isfinite(losses_now)
        if bool(bad.any()):
            for i in bad.nonzero().flatten().tolist():
                fused.unstack_member(population, i, runs[i].model)  # the weights before the step
                stopped[i] = True
                live[i] = False
                optimizer.lr[i] = 0.0
                bar.line(f"{runs[i].config.rule} seed {runs[i].config.seed} epoch {epoch} step {runs[i].step + 1}: "
                         f"loss is {float(losses_now[i])}; stopping (diverged), the last good checkpoint stays")
        everyone = bool(live.all())
        if stacked_step:
            step.update(losses, (xb, yb), runs[alive[0]].step + 1, None if everyone else live)
        else:
            step.update(losses.sum() if everyone else torch.where(live, losses, 0.0).sum(), (xb, yb),
                        runs[alive[0]].step + 1)
        losses = losses.detach()
        out = out.detach()
        total += torch.where(live, losses.double(), 0.0) * b
        correct += ((out.argmax(2) == yb).sum(1)) * live
        seen += b
        stepped = [i for i in alive if i not in stopped]
        for i in stepped:
            runs[i].step += 1
        if every and stepped and runs[stepped[0]].step % every == 0:  # live members share the step count
            for i in stepped:
                fused.unstack_member(population, i, runs[i].model)
            for i, methods in probes:
                if i not in stopped:
                    for method in methods:
                        method(runs[i].step, runs[i].model, (xb[i], yb[i]))
        bar.update()
    seconds = (time.perf_counter() - t0) / len(alive)
    total, correct = total.tolist(), correct.tolist()
    return [None if (i not in alive or i in stopped) else
            engine.Trained(loss=total[i] / seen, accuracy=correct[i] / seen, lr=lr0[i], seconds=seconds)
            for i in range(size)]


def _copy_state(optimizer: PopulationOptimizer, population, runs) -> None:
    """Each member's torch optimizer state := its slice of the population's, so its checkpoint
    resumes as a separate run."""
    stacked = dict(population.named_parameters())
    for i, run in enumerate(runs):
        for name, member_param in run.model.named_parameters():
            state = optimizer.member_state(stacked[name], i)
            if state:
                run.optimizer.state[member_param] = state
