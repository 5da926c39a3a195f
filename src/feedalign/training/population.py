"""Population training: N independent runs of one MLP architecture trained as ONE batched model.

Users of this field spend their compute on seeds and small sweeps of small networks, where
per-step overhead, not arithmetic, dominates. Here member i's layer l is slice i of one
stacked weight ``W_l`` of shape (N, out, in); a step is one ``baddbmm`` per layer for every
member at once, each member reading its own batch from its own data order:

    x (N, B, in)  ->  a_l = h_{l-1} W_l^T + b_l  (batched, b_l (N, 1, out))  ->  y (N, B, out)

The loss is the sum of the members' mean losses, so member i's gradient is exactly the
gradient of its own run: the slices never mix. A step is taken by hand, without autograd:
:meth:`PopulationMLP.layer_outputs` (the forward, keeping every h_l), each member's
``dL/dy = (softmax(y) - onehot) / B``, the rule's signals ``delta_l`` for every layer
(:meth:`PopulationMLP.signals`), then ``dW_l = delta_l^T h_{l-1}`` inside
:meth:`PopulationOptimizer.step_linear`. The rules, batched (B of shape (N, out, in) per member):

- ``bp``: ``delta_l = (delta_{l+1} W_{l+1}) * f'(a_l)``;
- ``fa``, ``usf``, ``frsf``, ``brsf`` (which may mix): ``delta_{l+1} B_{l+1}`` in place of
  ``delta_{l+1} W_{l+1}``, B each member's fixed B (fa) or ``s sign(W)`` / ``|M| sign(W)`` /
  ``|R| sign(W)`` (R redrawn every step) from the current W (Lillicrap et al.
  2016; Liao, Leibo & Poggio 2016; the general paths are :mod:`feedalign.rules.fa` and
  :mod:`feedalign.rules.sign_symmetry`);
- ``kp``: as fa, with each member's B a stacked parameter that gets W's gradient and its own
  optimizer state (Akrout et al. 2019; :mod:`feedalign.rules.kp`);
- ``wm``: as fa, with each member's B a stacked buffer that a mirror step after every learning
  step moves toward W, each member drawing its noise from its own generator, as its separate
  run does (Akrout et al. 2019; :mod:`feedalign.rules.wm`);
- ``dfa``: every hidden layer gets ``e B_k`` from the output error, B of shape
  (N, out_features, sum of widths) (Nøkland 2016; :mod:`feedalign.rules.dfa`); ``drtp`` the
  same with the target ``t / N`` in place of ``e`` (Frenkel et al. 2021; :mod:`feedalign.rules.drtp`);
- ``ifa``: the first hidden layer gets ``e B_1``, each higher one the signal below sent forward
  through ``W_l^T`` (Nøkland 2016, Fig. 1d; :mod:`feedalign.rules.ifa`).

The optimizers are in :mod:`feedalign.training.population_optim`: SGD (momentum, Nesterov),
Adam, RMSprop and Graves' RMSprop, each torch's (or feedalign's) update with a per-member
learning rate and L2 weight decay as (N,) tensors; SGD's weight-gradient GEMM adds straight
into the momentum buffer. By hand because on a CPU the population's tensors outgrow the
cache and every pass over them counts: with autograd, ``.grad`` and the optimizer's
temporaries, a step of 8 members of 784-100-10 (SGD with momentum) took 4.6 ms; by
hand it takes 2.7 ms (1 thread).

:func:`train_population` is ``feedalign.train`` for several configs at once: every member
gets an ordinary run directory (config.toml, metrics.jsonl, summary.json, checkpoints with
its own model and optimizer state, alignment.jsonl at the config's interval), built
by the engine's own code, so each can be resumed, plotted and compared like any run.
Members may differ in ``seed`` (init, feedback, data order, validation split), ``lr``,
``init_scale``, ``feedback_scale``, ``weight_decay``, ``name`` and, among fa, usf, frsf and brsf,
``rule``; :func:`population_key` says which configs can share a population and
:func:`unsupported` why one cannot.

Each member's trajectory equals its separate run to float tolerance, not bitwise: batched
matmuls sum in another order than ``mm`` (tests/test_population.py checks it against
separate ``feedalign.train`` runs). ``train_seconds`` of a member is its share (1/N) of the
population's epoch time.
"""
from __future__ import annotations

import math
import time
import warnings

import torch
from torch import nn

from ..convert import rule_of
from ..rules import fast, trainable_layers, wm
from .config import Config
from .population_optim import PopulationOptimizer, PopulationSGD, make_population_optimizer  # noqa: F401 (re-exported)

SUPPORTED_RULES = ("bp", "fa", "usf", "frsf", "brsf", "kp", "wm", "dfa", "drtp", "ifa")
LAYERWISE = ("fa", "usf", "frsf", "brsf")  # delta_l = (delta_{l+1} B_{l+1}) * D_l, B_l of W_l's shape
# fields in which members of one population may differ
VARYING = {"seed": 0, "lr": 1.0, "init_scale": None, "feedback_scale": None, "weight_decay": 0.0, "name": None}


def population_key(config: Config) -> tuple:
    """Configs with equal keys can train as one population (when :func:`unsupported` allows): they
    differ only in the fields of ``VARYING`` and, within the FA family (``LAYERWISE``), in the rule."""
    fields = config.replace(**VARYING).to_dict()
    if fields["rule"] in LAYERWISE:
        fields["rule"] = "|".join(LAYERWISE)
    return tuple(sorted(fields.items(), key=lambda kv: kv[0]))


def unsupported(config: Config) -> str | None:
    """Why ``config`` cannot train in a population, or None when it can."""
    from ..models import input_layout
    if config.rule not in SUPPORTED_RULES:
        return f"rule {config.rule!r} (population training supports {', '.join(SUPPORTED_RULES)})"
    if input_layout(config.architecture) != "flat":
        return f"architecture {config.architecture!r} is not an MLP"
    for name, value, needed in (("augment", config.augment, "none"), ("normalize", config.normalize, "none")):
        if value != needed:
            return f"{name} {value!r} (population training needs {needed!r})"
    for name, value, needed in (("frozen", config.frozen, "none"),
                                ("weight_decay_mode", config.weight_decay_mode, "l2")):
        if value != needed:
            return f"{name} {value!r} (population training needs {needed!r})"
    if config.loss not in ("auto", "cross_entropy"):
        return f"loss {config.loss!r} (population training needs cross_entropy)"
    if config.stop_train_error is not None:  # members would train every epoch, unlike their separate runs
        return "stop_train_error (population members train every epoch)"
    return None


class PopulationMLP(nn.Module):
    """N converted ``feedalign.mlp`` models of one architecture and rule (or of the FA family's rules
    mixed) as one batched model.

    Parameters ``weights[l]`` (N, out, in) and ``biases[l]`` (N, out), copies of the members' at
    construction (kp: its trained B as ``feedbacks[l]`` too); the rule's other tensors as buffers:
    fa, usf, frsf, brsf: ``feedback_l`` and ``magnitude_l`` (N, out, in), B = feedback + magnitude
    * sign(W) (:meth:`feedback_matrix`); wm: ``feedback_l`` for every layer, the first's too (its
    mirror steps, :meth:`after_step`, change them all); dfa, drtp: ``feedback`` (N, out_features, sum of hidden
    widths); ifa: ``feedback`` (N, out_features, width_1). :meth:`copy_to` writes the weights back
    into member models. Input (N, B, in), output (N, B, out).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("a population needs at least one member")
        rules = [rule_of(m) for m in members]
        if not (len(set(rules)) == 1 and rules[0] in SUPPORTED_RULES or set(rules) <= set(LAYERWISE)):
            raise ValueError(f"a population's members share one rule of {SUPPORTED_RULES}, or mix only "
                             f"{', '.join(LAYERWISE)}; got {sorted(set(map(str, rules)))}")
        self.rule = rules[0] if len(set(rules)) == 1 else "|".join(LAYERWISE)  # a mixed FA-family population
        layers = [trainable_layers(m) for m in members]
        activations = [_activations(m, ls) for m, ls in zip(members, layers)]
        if any(a is None for a in activations):
            raise ValueError("population members must be plain nn.Sequential MLPs (feedalign.mlp)")
        shapes = {tuple((tuple(l.weight.shape), l.bias is not None) for l in ls) for ls in layers}
        kinds = {tuple((type(a), getattr(a, "negative_slope", None)) for a in acts) for acts in activations}
        if len(shapes) != 1 or len(kinds) != 1:
            raise ValueError("population members must share one architecture and activation")
        self.activations = activations[0]
        n_layers = len(layers[0])
        with torch.no_grad():
            self.weights = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[l].weight.detach() for ls in layers])) for l in range(n_layers)])
            self.has_bias = [layers[0][l].bias is not None for l in range(n_layers)]
            self.biases = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[l].bias.detach() for ls in layers])) for l in range(n_layers)
                 if self.has_bias[l]])
            # FA family: member i's B_l = F_i + A_i sign(W_l), layer l's B carrying delta_l down to
            # h_{l-1}. fa: F = its fixed B, A = 0; usf: F = 0, A = s; frsf: F = 0, A = |M|; brsf:
            # F = 0, A = |R| redrawn every step from the member layer's own sequence (so its draw
            # count, a buffer of the member, stays the separate run's). A buffer only where some
            # member needs it, so a population of one rule pays only its own passes.
            self.stopped: set[int] = set()  # members that stopped (diverged): brsf draws no more for them
            self._redrawn = {l: [(i, ls[l]) for i, (rule, ls) in enumerate(zip(rules, layers)) if rule == "brsf"]
                             for l in range(1, n_layers)}  # plain lists: the member layers stay unregistered
            family = set(rules) <= set(LAYERWISE)
            self.layerwise = family or self.rule in ("kp", "wm")  # signals through feedback_matrix
            if self.rule == "kp":  # B is trained like W, with W's gradient (Kolen-Pollack)
                self.feedbacks = nn.ParameterList(
                    [nn.Parameter(torch.stack([ls[l].feedback.detach() for ls in layers])) for l in range(n_layers)])
            for l in range(1, n_layers) if family else ():
                fixed = [ls[l].feedback if rule == "fa" else torch.zeros_like(ls[l].weight)
                         for rule, ls in zip(rules, layers)]
                magnitude = [torch.full_like(ls[l].weight, ls[l].feedback_scale) if rule == "usf"
                             else ls[l].feedback_magnitude if rule == "frsf" else torch.zeros_like(ls[l].weight)
                             for rule, ls in zip(rules, layers)]  # brsf: drawn at every step
                if "fa" in rules:
                    self.register_buffer(f"feedback_{l}", torch.stack(fixed).detach())
                if set(rules) - {"fa"}:
                    self.register_buffer(f"magnitude_{l}", torch.stack(magnitude).detach())
            for l in range(n_layers) if self.rule == "wm" else ():
                self.register_buffer(f"feedback_{l}", torch.stack([ls[l].feedback for ls in layers]).detach())
            if self.rule in ("dfa", "drtp", "ifa"):  # (N, out, sum of hidden widths); ifa: (N, out, width_1)
                self.register_buffer("feedback", torch.stack([m.feedback for m in members]))
                self.widths = [ls.out_features for ls in layers[0][:-1]]

    @property
    def size(self) -> int:
        """N, the number of members."""
        return self.weights[0].shape[0]

    def _bias(self, l):
        return self.biases[sum(self.has_bias[:l])] if self.has_bias[l] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` (N, B, out) for ``x`` (N, B, in), without autograd: training takes its step by hand."""
        return self.layer_outputs(x)[-1]

    @torch.no_grad()
    def feedback_matrix(self, l: int) -> torch.Tensor:
        """``B_l`` (N, out, in), through which layer l >= 1 sends its signal down, as the rule has it
        now, member by member: fa's fixed B; usf's ``s sign(W_l)``; frsf's ``|M| sign(W_l)``; brsf's
        ``|R| sign(W_l)`` with the R of the last draw (:meth:`signals` draws the next at each step;
        :mod:`feedalign.rules.sign_symmetry`); kp's trained B (:mod:`feedalign.rules.kp`); wm's mirrored B."""
        if self.rule == "kp":
            return self.feedbacks[l].detach()
        fixed, magnitude = getattr(self, f"feedback_{l}", None), getattr(self, f"magnitude_{l}", None)
        if magnitude is None:
            return fixed
        signed = torch.sign(self.weights[l]).mul_(magnitude)
        return signed if fixed is None else signed.add_(fixed)

    @torch.no_grad()
    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, h_1, ..., h_L]``: the input (N, B, in) and every layer's output (N, B, width_l),
        ``h_L = y``, without autograd (what :meth:`signals` and
        :meth:`PopulationOptimizer.step_linear` read)."""
        outputs = [x]
        for l, weight in enumerate(self.weights):
            bias = self._bias(l)
            a = (torch.bmm(outputs[-1], weight.mT) if bias is None
                 else torch.baddbmm(bias.unsqueeze(1), outputs[-1], weight.mT))
            outputs.append(fast.activate_(self.activations[l] if l < len(self.weights) - 1 else None, a))
        return outputs

    @torch.no_grad()
    def signals(self, outputs: list[torch.Tensor], error: torch.Tensor) -> list[torch.Tensor]:
        """``delta_l`` (N, B, width_l), the signal each layer's pre-activation gets from the rule, for
        every layer; ``delta_L = error = dL/dy``. ``outputs`` from :meth:`layer_outputs`; D_l = f'(a_l):

        - bp: ``delta_l = (delta_{l+1} W_{l+1}) * D_l``;
        - fa, usf, frsf, brsf, kp, wm: ``delta_l = (delta_{l+1} B_{l+1}) * D_l`` (Lillicrap et al. 2016;
          Liao et al. 2016; Akrout et al. 2019), B from :meth:`feedback_matrix`;
        - dfa: ``delta_l = (e B_l) * D_l`` (Nøkland 2016, eq. 3), ``e B`` for all hidden layers in one bmm;
        - drtp: as dfa with the target ``t / N`` in place of ``e`` (Frenkel et al. 2021, Eq. 4);
        - ifa: ``delta_1 = (e B_1) * D_1``, then ``delta_l = (delta_{l-1} W_l^T) * D_l`` (Nøkland 2016,
          Fig. 1d).

        Each member's signals are those of its own converted model (tests check it in float64).
        """
        last = len(self.weights) - 1
        deltas = [None] * last + [error]
        if self.rule in ("dfa", "drtp"):
            source = error
            if self.rule == "drtp":  # the target t / N, recovered from e = (softmax(y) - t) / N as drtp does
                n = error.shape[1]
                source = (outputs[-1].softmax(2) - error * n) / n
            grads = source.bmm(self.feedback).split(self.widths, dim=2)
            for l in range(last):
                deltas[l] = fast.times_derivative(self.activations[l], grads[l], outputs[l + 1], grads[l])
            return deltas
        if self.rule == "ifa":
            for l in range(last):
                grad = error.bmm(self.feedback) if l == 0 else deltas[l - 1].bmm(self.weights[l].mT)
                deltas[l] = fast.times_derivative(self.activations[l], grad, outputs[l + 1], grad)
            return deltas
        for l in reversed(range(last)):
            if self.layerwise and self._redrawn.get(l + 1):
                self._draw(l + 1)
            matrix = self.feedback_matrix(l + 1) if self.layerwise else self.weights[l + 1]
            grad = deltas[l + 1].bmm(matrix)
            deltas[l] = fast.times_derivative(self.activations[l], grad, outputs[l + 1], grad)
        return deltas

    @torch.no_grad()
    def _draw(self, l: int) -> None:
        """brsf members' |R| for layer l: the next draw of each member layer's own sequence, counted
        there as its backward pass would (stopped members draw no more)."""
        magnitude = getattr(self, f"magnitude_{l}")
        for i, layer in self._redrawn[l]:
            if i not in self.stopped:
                magnitude[i] = layer.magnitude()
                layer.feedback_draws += 1

    @torch.no_grad()
    def after_step(self, generators: list[torch.Generator]) -> None:
        """What the rule does after each learning step, every member at once: for wm, one mirror step
        (:func:`feedalign.rules.wm.mirror` with ``WeightMirror.after_step``'s settings), member i drawing
        its noise for each layer in turn from ``generators[i]`` (its separate run's stream). A stopped
        member's slice mirrors on unread: its model keeps the B of its last good step. Other rules: nothing."""
        if self.rule != "wm":
            return
        settings = wm.AFTER_STEP
        std, batch = settings["noise_std"], settings["batch_size"]
        for l, weight in enumerate(self.weights):
            noise = torch.empty((self.size, batch, weight.shape[2]))
            for i, generator in enumerate(generators):
                torch.randn(batch, weight.shape[2], generator=generator, out=noise[i])
            estimate = wm.linear_estimate(weight, noise.mul_(std).to(weight), std)
            wm.mirror_update_(getattr(self, f"feedback_{l}"), estimate, lr=settings["lr"],
                              weight_decay=settings["weight_decay"])

    def linear_steps(self, outputs: list[torch.Tensor], deltas: list[torch.Tensor]) -> list[tuple]:
        """``(weights, bias, delta_l, h_{l-1})`` per layer, what :meth:`PopulationOptimizer.step_linear` takes;
        ``weights`` is ``(W_l,)``, or ``(W_l, B_l)`` for kp, whose B gets W's gradient."""
        kp = self.rule == "kp"
        return [((weight, self.feedbacks[l]) if kp else (weight,), self._bias(l), deltas[l], outputs[l])
                for l, weight in enumerate(self.weights)]

    @torch.no_grad()
    def copy_to(self, members: list[nn.Module], indices=None) -> None:
        """Member i's weights, biases (and kp's B) := slice i (for every i, or those in ``indices``)."""
        for i, member in enumerate(members):
            if indices is not None and i not in indices:
                continue
            for l, layer in enumerate(trainable_layers(member)):
                layer.weight.copy_(self.weights[l][i])
                if self.has_bias[l]:
                    layer.bias.copy_(self._bias(l)[i])
                if self.rule == "kp":
                    layer.feedback.copy_(self.feedbacks[l][i])
                elif self.rule == "wm":
                    layer.feedback.copy_(getattr(self, f"feedback_{l}")[i])


def _activations(model, layers):
    """The activation after each layer of a plain MLP (None for none), or None if ``model`` is not one."""
    plan = model.__dict__.get("_feedalign_plan")  # converted to the fused path: the plan knows
    return plan.activations if plan is not None and plan.linears == layers else fast.plan_for(model, layers)


def train_population(configs: list[Config], datasets: list | None = None, *, progress: str = "auto",
                     ) -> list:
    """Train ``configs`` (one population: equal :func:`population_key`, all supported) as one batched
    model; returns one :class:`~feedalign.training.RunResult` per config, in order, each with its own
    ordinary run directory. ``datasets[i]``: config i's data splits if already loaded."""
    from . import engine
    if not configs:
        raise ValueError("train_population needs at least one config")
    keys = {population_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("train_population: the configs differ in more than seed, lr, init_scale, feedback_scale, "
                         "weight_decay and name")
    reason = next((r for r in map(unsupported, configs) if r is not None), None)
    if reason is not None:
        raise ValueError(f"train_population: {reason}")
    datasets = list(datasets) if datasets is not None else [None] * len(configs)
    runs, loops = [], []
    bar = engine._Progress(progress, configs[0])
    try:
        for config, data in zip(configs, datasets):
            run = engine._prepare(config, data)
            if run.loss_name != "cross_entropy":
                raise ValueError(f"train_population: loss {run.loss_name!r} (needs cross_entropy)")
            run.run_dir = engine._new_run_dir(config)
            engine._create_run_dir(run.run_dir, config)
            runs.append(run)
        loops = [engine._Loop(run, engine._with_config_callbacks(run.config, ()), bar) for run in runs]
        return _train(runs, loops, bar)
    except BaseException as err:
        for loop in loops:
            loop.abort(err)
        for run in runs[len(loops):]:
            engine.shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    finally:
        for run in runs:
            run._close()


def _train(runs, loops, bar) -> list:
    from . import engine
    config, device = runs[0].config, runs[0].device
    metrics, diverged = [], [None] * len(runs)
    for loop in loops:
        metrics.append(loop.begin(None)[0])
    population = PopulationMLP([run.model for run in runs]).to(device)
    lr = torch.tensor([run.config.lr for run in runs], dtype=population.weights[0].dtype, device=device)
    decay = torch.tensor([run.config.weight_decay for run in runs], dtype=lr.dtype, device=device)
    optimizer = make_population_optimizer(config, population.parameters(), lr, decay)
    for epoch in range(1, config.epochs + 1):
        alive = [i for i, d in enumerate(diverged) if d is None]
        if not alive:
            break
        for i in alive:
            runs[i].epoch = epoch
            # each member's own schedule (stepped after every epoch, below) sets its lr for this epoch
            optimizer.lr[i] = runs[i].optimizer.param_groups[0]["lr"]
        trained = _train_epoch(runs, loops, population, optimizer, epoch, alive, bar)
        population.copy_to([run.model for run in runs], [i for i in alive if trained[i] is not None])
        _copy_state(optimizer, population, runs)
        for i in alive:
            loop, run = loops[i], runs[i]
            if trained[i] is None:  # _train_epoch stopped it
                diverged[i] = epoch
                continue
            with warnings.catch_warnings():  # the member's own optimizer never steps: its schedule sets the lr
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                run.schedule.step()
            row = loop.evaluate(epoch, trained[i])
            engine._call(loop.callbacks, "on_epoch_end", epoch, row)
            if not all(math.isfinite(row[k]) for k in ("val_loss", "test_loss") if row.get(k) is not None):
                bar.line(f"epoch {epoch}: evaluation loss is NaN/Inf; stopping (diverged)")
                diverged[i] = epoch
                _stop(i, population, optimizer)
                continue
            bar.line(engine._epoch_line(row, run.config))
            metrics[i].append(row)
            loop.save(metrics[i], epoch)
    results = []
    for run, loop, rows, at in zip(runs, loops, metrics, diverged):
        run._close()
        results.append(loop.finish(rows, at))
    bar.close()
    return results


def _train_epoch(runs, loops, population, optimizer, epoch, alive, bar) -> list:
    """One pass of every live member over its own shuffled training set; per member a ``_Trained`` or
    None (its loss went NaN/Inf: it stops, as a separate run would, the others go on)."""
    from . import engine
    config = runs[0].config
    n = len(loops[0].train_set[0])
    if any(len(loop.train_set[0]) != n for loop in loops):
        raise ValueError("population members must have training sets of one size")
    size, batch = len(runs), config.batch_size
    # the data order of each member's separate run (feedalign.data.batches draws it the same way)
    orders = torch.stack([torch.randperm(n, generator=engine._epoch_generator(run.config, epoch)) for run in runs])
    step_generators = [engine._epoch_generator(run.config, epoch, stream=1) for run in runs]  # what _rule_hooks gives a rule
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
    minus_one = torch.full((1, 1, 1), -1.0, dtype=population.weights[0].dtype, device=device)
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
        # the step by hand, no autograd: forward, each member's mean cross-entropy and dL/dy, the
        # rule's signals, the optimizer (tests check it against each member's own model and separate runs)
        outputs = population.layer_outputs(xb)
        out = outputs[-1]
        log_p = out.log_softmax(2)
        losses = -log_p.gather(2, yb.unsqueeze(2)).squeeze(2).mean(1)
        finite = torch.isfinite(losses)
        bad = live & ~finite
        if bool(bad.any()):
            population.copy_to([run.model for run in runs], bad.nonzero().flatten().tolist())  # weights before the step
            for i in bad.nonzero().flatten().tolist():
                stopped[i] = True
                live[i] = False
                _stop(i, population, optimizer)
                bar.line(f"{runs[i].config.rule} seed {runs[i].config.seed} epoch {epoch} step {runs[i].step + 1}: "
                         f"loss is {float(losses[i])}; stopping (diverged), the last good checkpoint stays")
        error = log_p.exp_().scatter_add_(2, yb.unsqueeze(2), minus_one.expand(size, b, 1)).div_(b)  # softmax - onehot
        if not bool(live.all()):
            error = torch.where(live.view(-1, 1, 1), error, 0.0)  # a stopped member's NaN stays out of its slice
        optimizer.step_linear(population.linear_steps(outputs, population.signals(outputs, error)))
        population.after_step(step_generators)
        total += torch.where(live, losses.double(), 0.0) * b
        correct += ((out.argmax(2) == yb).sum(1)) * live
        seen += b
        stepped = [i for i in alive if i not in stopped]
        for i in stepped:
            runs[i].step += 1
        if every and stepped and runs[stepped[0]].step % every == 0:  # live members share the step count
            population.copy_to([run.model for run in runs], stepped)
            for i, methods in probes:
                if i not in stopped:
                    for method in methods:
                        method(runs[i].step, runs[i].model, (xb[i], yb[i]))
        bar.update()
    seconds = (time.perf_counter() - t0) / len(alive)
    total, correct = total.tolist(), correct.tolist()
    return [None if (i not in alive or i in stopped) else
            engine._Trained(loss=total[i] / seen, accuracy=correct[i] / seen, lr=lr0[i], seconds=seconds)
            for i in range(size)]


def _stop(i: int, population: PopulationMLP, optimizer: PopulationOptimizer) -> None:
    """Member i diverged: its lr is 0 from now on and it draws no more feedback (brsf)."""
    optimizer.lr[i] = 0.0
    population.stopped.add(i)


def _copy_state(optimizer: PopulationOptimizer, population: PopulationMLP, runs) -> None:
    """Each member's torch optimizer state := its slice of the population's, so its checkpoint
    resumes as a separate run."""
    for i, run in enumerate(runs):
        for l, layer in enumerate(trainable_layers(run.model)):
            pairs = [(layer.weight, population.weights[l]), (layer.bias, population._bias(l))]
            if population.rule == "kp":
                pairs.append((layer.feedback, population.feedbacks[l]))
            for member_param, pop_param in pairs:
                if member_param is not None and pop_param is not None:
                    state = optimizer.member_state(pop_param, i)
                    if state:
                        run.optimizer.state[member_param] = state
