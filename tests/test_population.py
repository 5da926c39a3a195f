"""Population training (feedalign.training.population): N runs as one batched model, each member
equal to its separate ``feedalign.train`` run to float tolerance, each with an ordinary run directory."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

import feedalign
from feedalign.training import Config, resume, train
from feedalign.training.optimizers import GravesRMSprop
from feedalign.rules import fused
from feedalign.training.population import (StackedStep, member_losses, population_key, takes_stacked_step,
                                           train_population, unsupported)
from feedalign.training.population_optim import PopulationAdam, PopulationGravesRMSprop, PopulationRMSprop, PopulationSGD
from feedalign.training.step import Step

# every registered rule with a fused path trains in populations; the others are refused (test_refusals_are_clear)
SUPPORTED_RULES = [r for r in feedalign.rules() if feedalign.get_rule(r).fused_signals() is not None]
UNSUPPORTED_RULES = [r for r in feedalign.rules() if r not in SUPPORTED_RULES]

SMALL = dict(dataset="mnist1d", architecture="40-24-16-10", epochs=2, batch_size=64, threads=1, train_size=640, test_size=300,
             alignment_every=7)


@pytest.mark.parametrize("rule", SUPPORTED_RULES)
def test_members_match_their_separate_runs(tmp_path, rule):
    """Different seeds (init, feedback, data order, validation split), learning rates and init scales."""
    base = Config(**SMALL, rule=rule, momentum=0.9, init="uniform", out_dir=str(tmp_path / "pop"))
    configs = [base.replace(seed=0, lr=0.05, name="a"), base.replace(seed=1, lr=0.1, init_scale=0.3, name="b"),
               base.replace(seed=2, lr=0.02, feedback_scale=0.5, weight_decay=1e-3, name="c")]
    if rule != "fa":  # the suite stays fast: three members for one rule, two for the others
        configs = configs[1:]
    assert len({population_key(c) for c in configs}) == 1
    together = train_population(configs, progress="none")
    for config, member in zip(configs, together):
        alone = train(config.replace(out_dir=str(tmp_path / "alone")), progress="none")
        for a, b in zip(member.model.parameters(), alone.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(member.model.named_buffers(), alone.model.buffers()):  # wm's mirrored B, say
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        assert [r["epoch"] for r in member.metrics] == [0, 1, 2]
        for row, twin in zip(member.metrics, alone.metrics):
            for key in ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy"):
                if row[key] is not None:
                    assert row[key] == pytest.approx(twin[key], rel=1e-4, abs=1e-3), key
        assert member.summary["steps"] == alone.summary["steps"] == 20
        run_dir = member.run_dir
        assert (run_dir / "config.toml").is_file() and (run_dir / "checkpoints" / "latest.pt").is_file()
        assert json.loads((run_dir / "summary.json").read_text())["outcome"] == member.summary["outcome"]
        probes = [json.loads(line)["step"] for line in (run_dir / "alignment.jsonl").read_text().splitlines()]
        alone_probes = [json.loads(line)["step"] for line in (alone.run_dir / "alignment.jsonl").read_text().splitlines()]
        assert probes == alone_probes


def test_rules_do_not_mix_in_one_population(tmp_path):
    """A population is one rule: its key says so, and stacking models of two rules is refused."""
    base = Config(**SMALL, out_dir=str(tmp_path))
    assert population_key(base.replace(rule="fa")) != population_key(base.replace(rule="usf"))
    models = [feedalign.convert(feedalign.mlp("4-3-2"), rule) for rule in ("fa", "dfa")]
    with pytest.raises(ValueError, match="differ"):
        fused.stack_members(models, feedalign.learning_rule(models[0]).fused_signals())


@pytest.mark.parametrize("settings", [dict(schedule="step", step_size=1, gamma=0.5), dict(schedule="cosine"),
                                      dict(optimizer="adam", schedule="step", step_size=1, gamma=0.5),
                                      dict(optimizer="rmsprop", schedule="cosine", momentum=0.5)],
                         ids=["sgd-step", "sgd-cosine", "adam-step", "rmsprop-cosine"])
def test_each_member_follows_its_optimizer_and_schedule(tmp_path, settings):
    """Members with different learning rates under SGD, Adam or RMSprop and a step or cosine schedule:
    each epoch's lr and the final parameters are those of the separate runs."""
    settings = {"momentum": 0.9, **settings}
    scale = 0.01 if settings.get("optimizer") in ("adam", "rmsprop") else 1.0
    base = Config(**SMALL, rule="dfa", **settings, out_dir=str(tmp_path / "pop"))
    configs = [base.replace(seed=0, lr=0.1 * scale, name="a"), base.replace(seed=1, lr=0.02 * scale, name="b")]
    for config, member in zip(configs, train_population(configs, progress="none")):
        alone = train(config.replace(out_dir=str(tmp_path / "alone")), progress="none")
        assert [r["lr"] for r in member.metrics[1:]] == [r["lr"] for r in alone.metrics[1:]]
        assert member.metrics[2]["lr"] < member.metrics[1]["lr"] == pytest.approx(config.lr)
        for a, b in zip(member.model.parameters(), alone.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", ["fa", "wm"])
def test_a_diverging_member_stops_as_its_separate_run_and_the_others_go_on(tmp_path, rule):
    """lr 1e38 overflows the first step: that member stops where its separate run stops, with the
    same outcome and rows; the other member trains on (wm: and mirrors) and matches its separate run."""
    base = Config(**SMALL, rule=rule, momentum=0.9, out_dir=str(tmp_path / "pop"))
    configs = [base.replace(seed=0, lr=0.05, name="ok"), base.replace(seed=1, lr=1e38, name="bad")]
    for config, member in zip(configs, train_population(configs, progress="none")):
        alone = train(config.replace(out_dir=str(tmp_path / "alone")), progress="none")
        assert member.summary["outcome"] == alone.summary["outcome"]
        assert member.summary["steps"] == alone.summary["steps"] and len(member.metrics) == len(alone.metrics)
        if config.name == "ok":  # the other's weights are ~1e31: float tolerance there means nothing
            for a, b in zip([*member.model.parameters(), *member.model.buffers()],
                            [*alone.model.parameters(), *alone.model.buffers()]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert member.summary["outcome"] == "diverged" and member.summary["steps"] == 1


@pytest.mark.parametrize("rule,optimizer", [("fa", "sgd"), ("kp", "sgd"), ("wm", "sgd"), ("fa", "adam")])
def test_a_member_run_resumes_as_a_separate_run(tmp_path, rule, optimizer):
    """The checkpoint holds the member's model (wm: its mirrored B) and torch SGD state (kp: B's too):
    resuming it for a third epoch matches a separate 3-epoch run."""
    config = Config(**SMALL, rule=rule, optimizer=optimizer, momentum=0.9, lr=0.05 if optimizer == "sgd" else 1e-3,
                    weight_decay=1e-3, out_dir=str(tmp_path / "pop"))
    members = train_population([config.replace(seed=s, name=f"s{s}") for s in (0, 1)], progress="none")
    run_dir = members[1].run_dir
    text = (run_dir / "config.toml").read_text().replace("epochs = 2", "epochs = 3")
    (run_dir / "config.toml").write_text(text)
    # resume refuses an edited config.toml of a run that records its own (integrity.json); one without the
    # record (as older feedalign made) is taken as it is, which is how this test extends the run by an epoch
    (run_dir / "integrity.json").unlink()
    (run_dir / "summary.json").unlink()  # as if killed after epoch 2's checkpoint of a 3-epoch run
    resumed = resume(run_dir, progress="none")
    alone = train(config.replace(seed=1, epochs=3, out_dir=str(tmp_path / "alone")), progress="none")
    for a, b in zip(resumed.model.parameters(), alone.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(resumed.model.buffers(), alone.model.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


OPTIMIZERS = {  # population optimizer, its per-member counterpart, keyword arguments of both
    "sgd-nesterov": (PopulationSGD, torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    "adam": (PopulationAdam, torch.optim.Adam, {}),
    "rmsprop": (PopulationRMSprop, torch.optim.RMSprop, dict(momentum=0.5)),
    "rmsprop-plain": (PopulationRMSprop, torch.optim.RMSprop, {}),
    "rmsprop-graves": (PopulationGravesRMSprop, GravesRMSprop, dict(momentum=0.9)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_population_optimizers_are_their_counterparts_per_member(name):
    """Float64, four steps from .grad: each member's slice follows its own torch (or feedalign)
    optimizer with its own lr and weight decay, and member_state is that optimizer's state."""
    population_class, member_class, kwargs = OPTIMIZERS[name]
    torch.manual_seed(0)
    params = [torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)]
    lr = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    decay = torch.tensor([0.0, 0.01, 0.1], dtype=torch.float64)
    population = population_class(params, lr, weight_decay=decay, **kwargs)
    members = [torch.nn.Parameter(params[0][i].detach().clone()) for i in range(3)]
    optimizers = [member_class([p], lr=float(lr[i]), weight_decay=float(decay[i]), **kwargs)
                  for i, p in enumerate(members)]
    for _ in range(4):
        grad = torch.randn(3, 4, 5, dtype=torch.float64)
        params[0].grad = grad.clone()
        population.step()
        for i, (p, opt) in enumerate(zip(members, optimizers)):
            p.grad = grad[i].clone()
            opt.step()
    for i, (p, opt) in enumerate(zip(members, optimizers)):
        torch.testing.assert_close(params[0][i], p, rtol=1e-12, atol=1e-14)
        state = population.member_state(params[0], i)
        assert set(state) == set(opt.state[p])
        for key, value in state.items():
            torch.testing.assert_close(value.double(), torch.as_tensor(opt.state[p][key]).double(), rtol=1e-12,
                                       atol=1e-14)


@pytest.mark.parametrize("rule", SUPPORTED_RULES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_the_stacked_step_is_each_members_own_step(rule, momentum, nesterov):
    """Float64: the engine's step on the stacked members (the rule's own fused signals with a member
    dimension, PopulationSGD) against each member's own converted model, cross-entropy, autograd and
    torch.optim.SGD, for three steps. The members differ in seed, feedback scale (usf's scale becomes
    per member), learning rate and weight decay."""
    torch.manual_seed(0)
    n = 3
    members = [feedalign.convert(feedalign.mlp("6-5-4-3", activation="tanh").double(), rule, seed=seed,
                                 feedback_scale=scale if rule != "bp" else None)
               for seed, scale in ((1, None), (2, 0.5), (3, 0.2))]
    stacked = fused.stack_members(members, feedalign.learning_rule(members[0]).fused_signals())
    plain = fused.stack_members(members, feedalign.learning_rule(members[0]).fused_signals())
    lr = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    decay = torch.tensor([0.0, 0.05, 0.01], dtype=torch.float64)
    sgd = PopulationSGD(stacked.parameters(), lr, momentum=momentum, nesterov=nesterov, weight_decay=decay)
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    step = Step(stacked, sgd, member_losses, generator=generators)
    # the runner's own backward without autograd, where the trained tensors are the layers' (not kp's B)
    sgd_plain = PopulationSGD(plain.parameters(), lr, momentum=momentum, nesterov=nesterov, weight_decay=decay)
    plain_step = (StackedStep(plain, sgd_plain, generator=[torch.Generator().manual_seed(i) for i in range(n)])
                  if takes_stacked_step(plain) else None)
    optimizers = [torch.optim.SGD(m.parameters(), lr=float(lr[i]), momentum=momentum, nesterov=nesterov,
                                  weight_decay=float(decay[i])) for i, m in enumerate(members)]
    alone = [Step(m, o, F.cross_entropy, generator=torch.Generator().manual_seed(i))
             for i, (m, o) in enumerate(zip(members, optimizers))]
    for k in range(3):
        x, y = torch.randn(n, 7, 6, dtype=torch.float64), torch.randint(0, 3, (n, 7))
        for i in range(n):
            alone[i](x[i], y[i], k + 1)
        output, losses = step.forward(x, y)
        step.update(losses.sum(), (x, y), k + 1)
        if plain_step is not None:
            output, plain_losses = plain_step.forward(x, y)
            torch.testing.assert_close(plain_losses, losses.detach())
            plain_step.update(plain_losses, (x, y), k + 1)
    trained_feedback = any(isinstance(b, torch.nn.Parameter) or isinstance(b._base, torch.nn.Parameter)
                           for b in feedalign.feedback_matrices(members[0]))  # kp's B, or a view of dkp's
    assert (plain_step is None) == trained_feedback  # kp's and dkp's B take their gradient through autograd
    for model in (stacked, plain) if plain_step is not None else (stacked,):
        stacked_state = model.state_dict()
        for i, member in enumerate(members):
            for name, value in member.state_dict().items():  # weights, biases, kp's and wm's B, brsf's draw count
                torch.testing.assert_close(stacked_state[name][i], value, rtol=1e-10, atol=1e-12, msg=name)


def test_refusals_are_clear(tmp_path):
    base = Config(**SMALL, out_dir=str(tmp_path))
    for rule in UNSUPPORTED_RULES:
        assert f"{rule!r} has no fused path" in unsupported(base.replace(rule=rule))
    assert unsupported(base.replace(optimizer="adam")) is None
    assert "weight_decay_mode" in unsupported(base.replace(weight_decay=0.01, weight_decay_mode="constant"))
    assert unsupported(base.replace(schedule="cosine")) is None
    assert "stop_train_error" in unsupported(base.replace(stop_train_error=0.01))
    assert unsupported(base) is None
    with pytest.raises(ValueError, match="differ"):
        train_population([base, base.replace(architecture="40-10")], progress="none")
    with pytest.raises(ValueError, match="dtp"):
        train_population([base.replace(rule="dtp")], progress="none")
    with pytest.raises(ValueError, match="shape"):
        fused.stack_members([feedalign.mlp("4-3-2"), feedalign.mlp("4-5-2")], feedalign.get_rule("bp").fused_signals())
    with pytest.raises(ValueError, match="stacked members must be plain"):
        fused.stack_members([feedalign.mlp("4-2")] * 2, feedalign.get_rule("bp").fused_signals())
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule", SUPPORTED_RULES)
def test_cuda_members_match_cpu(rule):
    torch.manual_seed(0)
    members = [feedalign.convert(feedalign.mlp("6-5-4-3").double(), rule, seed=seed,
                                 feedback_scale=scale if rule != "bp" else None)
               for seed, scale in ((1, None), (2, 0.5))]
    signals = feedalign.learning_rule(members[0]).fused_signals()
    cpu = fused.stack_members(members, signals)
    gpu = fused.stack_members([copy.deepcopy(m).to("cuda") for m in members], signals)
    x, y = torch.randn(2, 7, 6, dtype=torch.float64), torch.randint(0, 3, (2, 7))
    for model, (xb, yb) in ((cpu, (x, y)), (gpu, (x.cuda(), y.cuda()))):
        with feedalign.learning_rule(model).forward_context(model, yb):
            member_losses(model(xb), yb).sum().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p.grad, q.grad.cpu(), msg=name)


def test_a_rule_registered_later_trains_in_a_population(sample_rule):
    """The suite's own FA-type rule (sample_rule.py) stacks and steps as its members do alone, with no
    line of population code for it."""
    torch.manual_seed(0)
    members = [feedalign.convert(feedalign.mlp("6-5-4-3").double(), sample_rule, seed=seed) for seed in (1, 2)]
    stacked = fused.stack_members(members, feedalign.learning_rule(members[0]).fused_signals())
    x, y = torch.randn(2, 7, 6, dtype=torch.float64), torch.randint(0, 3, (2, 7))
    member_losses(stacked(x), y).sum().backward()
    for i, member in enumerate(members):
        F.cross_entropy(member(x[i]), y[i]).backward()
        for (name, p), q in zip(member.named_parameters(), stacked.parameters()):
            torch.testing.assert_close(q.grad[i], p.grad, msg=name)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # members' optimizers never step
def test_the_engine_holds_every_members_run_directory_while_it_trains(tmp_path):
    """A population is the engine's run of N configs (train_together): each member's directory is locked as a
    separate run's is, so a resume from another caller is refused until the population ends."""
    from feedalign.errors import RunDirError
    from feedalign.training import engine
    from feedalign.training.population import PopulationTrainer

    base = Config(**SMALL, rule="fa", out_dir=str(tmp_path))
    configs = [base.replace(seed=s, name=f"m{s}") for s in (0, 1)]
    refused = []

    class Probing(PopulationTrainer):
        def train_epoch(self, epoch, members):
            for loop in self.loops:
                with pytest.raises(RunDirError, match="run directory"):
                    resume(loop.run.run_dir, progress="none")
                refused.append((epoch, loop.run.config.name))
            return super().train_epoch(epoch, members)

    results = engine.train_together(configs, Probing, progress="none")
    assert refused == [(1, "m0"), (1, "m1"), (2, "m0"), (2, "m1")]
    assert [r.summary["epochs_completed"] for r in results] == [2, 2]
    assert resume(results[0].run_dir, progress="none").summary == results[0].summary  # free once it ended
