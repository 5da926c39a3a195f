"""The compiled nodes of the fused path (feedalign.rules.native, nodes.cpp), the one-hidden-layer node and the
stack node: the same bits as the Python nodes they replace, for every rule, activation, bias and dtype, stacked
and unstacked hidden layers, one and two threads; built once, imported after; off, missing compiler and failed
builds fall back to the Python nodes."""
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import feedalign
import feedalign.bench
from feedalign.cli import main
from feedalign.errors import ConfigError
from feedalign.rules import drtp, fast as fast_path, native
from feedalign.rules.fast import uses_compiled_node, uses_fast_path

# the rules whose one-hidden-layer stack is the lean node (FA-type with a fixed or derived B, direct rules);
# kp (a trained B, which needs a gradient) takes the stack node
LEAN = ["fa", "usf", "frsf", "brsf", "wm", "dfa", "ifa", "drtp"]
# the rules whose deeper stacks run on the compiled stack node: all (kp's trained B gets its gradient there)
STACK = LEAN + ["kp"]


@pytest.fixture(scope="module")
def compiled():
    """The compiled module; skips only where this machine has no C++ compiler (a failed build fails)."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here: the Python node runs")
    module = native.compiled()
    assert module is not None, "a compiler is here, so the node must build (see the warning above)"
    return module


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """native's per-process cache emptied and its build folder in tmp_path, for tests that load it anew."""
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    return tmp_path


def pair(rule, activation, bias, dtype, seed=0, architecture="7-5-3"):
    """Two equal converted models: the compiled node's and the Python node's."""
    models = []
    for native_node in (True, False):
        torch.manual_seed(seed)
        model = feedalign.convert(feedalign.mlp(architecture, activation=activation, bias=bias).to(dtype), rule,
                                  seed=3, feedback_scale=0.8)
        model.native_node = native_node
        models.append(model)
    return models


def train(model, steps, dtype, seed=1, device="cpu", target=False):
    """``steps`` SGD steps on random batches; ``target``: drtp's target given at forward (the engine's way)."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = []
    for _ in range(steps):
        x = torch.randn(6, 7, generator=g, dtype=dtype).to(device)
        y = torch.randint(0, 3, (6,), generator=g).to(device)
        optimizer.zero_grad()
        with drtp.target(model, y) if target else contextlib.nullcontext():
            output = model(x)
        F.cross_entropy(output, y).backward()
        optimizer.step()
        outputs.append(output.detach())
    return outputs


def assert_same_state(a, b):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name
        assert (x.grad is None) == (y.grad is None) and (x.grad is None or torch.equal(x.grad, y.grad)), name
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("rule", LEAN)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "leaky_relu", "linear"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_same_bits_as_the_python_node(compiled, rule, activation, bias, dtype):
    fast, slow = pair(rule, activation, bias, dtype)
    x = torch.randn(2, 7, dtype=dtype)
    assert uses_compiled_node(fast(x)) and uses_fast_path(fast(x))
    assert not uses_compiled_node(slow(x)) and uses_fast_path(slow(x))
    for step, (a, b) in enumerate(zip(train(fast, 4, dtype), train(slow, 4, dtype))):
        assert torch.equal(a, b), f"output of step {step}"
    assert_same_state(fast, slow)  # weights, last gradients, and buffers (brsf's draw count, wm's B)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Both backward variants of the stack node: K - 1 mm calls (one thread), one bmm (more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("rule", STACK)
@pytest.mark.parametrize("architecture", ["7-5-5-3", "7-5-5-5-3", "7-6-4-3"], ids=["stacked", "stacked-3", "widths"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "leaky_relu", "linear"])
@pytest.mark.parametrize("bias", [True, False])
def test_stack_node_same_bits_as_the_python_node(compiled, threads, rule, architecture, activation, bias):
    dtype = torch.float64 if activation == "sigmoid" else torch.float32
    fast, slow = pair(rule, activation, bias, dtype, architecture=architecture)
    x = torch.randn(2, 7, dtype=dtype)
    assert fast(x).grad_fn.name() == compiled.STACK_NODE_NAME and uses_fast_path(fast(x))
    assert not uses_compiled_node(slow(x)) and uses_fast_path(slow(x))
    for step, (a, b) in enumerate(zip(train(fast, 4, dtype), train(slow, 4, dtype))):
        assert torch.equal(a, b), f"output of step {step}"
    assert_same_state(fast, slow)


def mixed_stack(kind):
    nn = torch.nn
    if kind == "mixed":  # kinds, biases, a layer with no activation
        return nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 5, bias=False), nn.Linear(5, 5),
                             nn.LeakyReLU(0.3), nn.Linear(5, 3, bias=False))
    if kind == "slopes":  # one kind, each layer its own slope
        return nn.Sequential(nn.Linear(7, 5), nn.LeakyReLU(0.1), nn.Linear(5, 5), nn.LeakyReLU(0.5), nn.Linear(5, 5),
                             nn.LeakyReLU(0.9), nn.Linear(5, 3))
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 4), nn.Identity(), nn.Linear(4, 6),  # widths
                         nn.Sigmoid(), nn.Linear(6, 3))


@pytest.mark.parametrize("rule", ["fa", "usf", "dfa", "ifa", "drtp"])
@pytest.mark.parametrize("kind", ["mixed", "slopes", "widths"])
def test_stack_node_with_mixed_biases_and_activations(compiled, threads, rule, kind):
    models = []
    for native_node in (True, False):
        torch.manual_seed(0)
        model = feedalign.convert(mixed_stack(kind), rule, seed=3)
        model.native_node = native_node
        models.append(model)
    fast, slow = models
    assert uses_compiled_node(fast(torch.randn(2, 7)))
    assert all(torch.equal(a, b) for a, b in zip(train(fast, 3, torch.float32), train(slow, 3, torch.float32)))
    assert_same_state(fast, slow)


def test_stack_node_leaves_inputs_with_gradients_and_batch_dims_to_the_python_node(compiled):
    model = feedalign.convert(feedalign.mlp("7-5-5-3"), "fa")
    assert uses_compiled_node(model(torch.randn(2, 7)))
    assert not uses_compiled_node(model(torch.randn(2, 7, requires_grad=True)))  # an input gradient
    out = model(torch.randn(4, 2, 7))  # leading batch dimensions
    assert out.shape == (4, 2, 3) and not uses_compiled_node(out) and uses_fast_path(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("architecture", ["7-5-3", "7-5-5-5-3"])
@pytest.mark.parametrize("rule", LEAN)
def test_same_bits_as_the_python_node_on_cuda(compiled, rule, architecture):
    fast, slow = (model.cuda() for model in pair(rule, "tanh", True, torch.float32, architecture=architecture))
    x = torch.randn(2, 7, device="cuda")
    assert uses_compiled_node(fast(x)) and not uses_compiled_node(slow(x))
    for step, (a, b) in enumerate(zip(train(fast, 4, torch.float32, device="cuda"),
                                      train(slow, 4, torch.float32, device="cuda"))):
        assert torch.equal(a, b), f"output of step {step}"
    assert_same_state(fast, slow)


@pytest.mark.parametrize("architecture", ["7-5-3", "7-5-5-3", "7-6-4-3"], ids=["one-hidden", "stacked", "widths"])
@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
@pytest.mark.parametrize("target", [True, False], ids=["given", "recovered"])
def test_stack_node_projects_drtp_target_itself(compiled, threads, monkeypatch, architecture, activation, target):
    """drtp's target, given at forward or recovered from y and e, comes from Python (direct_source), the
    projection and f' from the node, with the Python node's bits; its deltas are never asked of Python."""
    fast, slow = pair("drtp", activation, True, torch.float32, architecture=architecture)
    asked, sourced = [], []
    deltas, signals = fast_path.Plan.backward_signals, fast._feedalign_plan.signals
    monkeypatch.setattr(fast_path.Plan, "backward_signals", lambda *a: asked.append(1) or deltas(*a))
    source = signals.direct_source  # only the compiled node's model: the Python node asks its own rule
    monkeypatch.setattr(signals, "direct_source", lambda *a: sourced.append(1) or source(*a))
    for step, (a, b) in enumerate(zip(train(fast, 4, torch.float32, target=target),
                                      train(slow, 4, torch.float32, target=target))):
        assert torch.equal(a, b), f"output of step {step}"
    assert_same_state(fast, slow)
    assert not asked and len(sourced) == 4  # one source a step: the compiled node trained ``fast``, never asking


@pytest.mark.parametrize("rule, asks", [("dfa", False), ("ifa", False), ("fa", True), ("usf", True)])
def test_one_hidden_node_asks_python_for_the_matrix_only_when_it_is_not_an_input(compiled, rule, asks):
    """DFA's and IFA's M is their B, an input of the node (StackedSignals.one_hidden_input): read there."""
    model = feedalign.convert(feedalign.mlp("7-5-3"), rule)
    signals, asked = model._feedalign_plan.signals, []
    matrix = signals.one_hidden_matrix
    signals.one_hidden_matrix = lambda plan, inputs: asked.append(1) or matrix(plan, inputs)
    output = model(torch.randn(2, 7))
    assert uses_compiled_node(output)
    output.sum().backward()
    assert bool(asked) == asks and all(p.grad is not None for p in model.parameters())


def test_status_names_the_build_folder(compiled):
    assert native.status() == f"compiled fused-path nodes: ready in {native.build_directory()}"


def test_each_rule_takes_its_node(compiled):
    x = torch.randn(2, 7)

    def node(rule, architecture):
        output = feedalign.convert(feedalign.mlp(architecture), rule)(x)
        return {compiled.NODE_NAME: "one hidden", compiled.STACK_NODE_NAME: "stack"}.get(output.grad_fn.name(),
                                                                                          "python")
    fused = [rule for rule in feedalign.rules() if rule not in ("bp", "dtp", "eqprop", "chl")]
    assert {rule: node(rule, "7-5-3") for rule in fused} == {
        rule: "one hidden" if rule in LEAN else "stack" if rule in STACK else "python" for rule in fused}
    assert {rule: node(rule, "7-5-5-3") for rule in fused} == {
        rule: "stack" if rule in STACK else "python" for rule in fused}
    with torch.no_grad():
        assert feedalign.convert(feedalign.mlp("7-5-3"), "dfa")(x).grad_fn is None


@pytest.mark.parametrize("architecture, frozen",
                         [("7-5-3", name) for name in ("0.weight", "0.bias", "2.weight", "2.bias")]
                         + [("7-5-5-3", name) for name in ("0.weight", "2.bias", "4.weight", "4.bias")])
def test_frozen_parameters_get_no_gradient(compiled, architecture, frozen):
    fast, slow = pair("dfa", "tanh", True, torch.float64, architecture=architecture)
    for model in (fast, slow):
        model.get_parameter(frozen).requires_grad_(False)
    x, y = torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 3, (4,))
    for model in (fast, slow):
        F.cross_entropy(model(x), y).backward()
    assert fast.get_parameter(frozen).grad is None
    assert_same_state(fast, slow)


@pytest.mark.parametrize("architecture", ["7-5-3", "7-5-5-3", "7-6-4-3"], ids=["one-hidden", "stacked", "widths"])
@pytest.mark.parametrize("frozen", [None, "0.weight", "0.feedback", "2.weight", "2.feedback"])
def test_kp_feedback_gets_its_gradient_from_the_stack_node(compiled, threads, monkeypatch, architecture, frozen):
    """kp's trained B gets its W's dW from the compiled stack node, as from the Python node, also where the
    W or the B of a layer is frozen; the node asks Python for them once a step."""
    fast, slow = pair("kp", "tanh", True, torch.float32, architecture=architecture)
    for model in (fast, slow):
        if frozen:
            model.get_parameter(frozen).requires_grad_(False)
    asked, signals = [], fast._feedalign_plan.signals
    input_grads = signals.input_grads  # only the compiled node's model: the Python node asks its own rule
    monkeypatch.setattr(signals, "input_grads", lambda *a: asked.append(1) or input_grads(*a))
    for step, (a, b) in enumerate(zip(train(fast, 4, torch.float32), train(slow, 4, torch.float32))):
        assert torch.equal(a, b), f"output of step {step}"
    assert_same_state(fast, slow)
    assert len(asked) == 4
    feedback = [p for name, p in fast.named_parameters() if name.endswith("feedback") and name != frozen]
    assert feedback and all(p.grad is not None for p in feedback)
    if frozen:
        assert fast.get_parameter(frozen).grad is None


@pytest.mark.parametrize("architecture", ["7-5-3", "7-5-5-3", "7-6-4-3"])
def test_non_contiguous_error_retained_graph_and_a_second_backward(compiled, architecture):
    fast, slow = pair("usf", "tanh", True, torch.float64, architecture=architecture)
    x, weights = torch.randn(4, 7, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for model in (fast, slow):
        loss = (model(x).t() * weights).sum()  # dL/dy = weights.t(): not contiguous
        loss.backward(retain_graph=True)
        loss.backward()  # accumulates
    assert_same_state(fast, slow)


@pytest.mark.parametrize("architecture", ["7-5-3", "7-5-5-3"])
def test_in_place_change_of_the_feedback_before_backward_is_refused(compiled, architecture):
    """DFA's B is an input of the node, saved for backward: changing it in between raises, as in autograd."""
    model = feedalign.convert(feedalign.mlp(architecture), "dfa")
    loss = model(torch.randn(2, 7)).sum()
    with torch.no_grad():
        model.feedback.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("parameter", ["2.weight", "2.bias"])
def test_in_place_change_of_a_parameter_before_backward_is_refused_by_the_stack_node(compiled, parameter):
    model = feedalign.convert(feedalign.mlp("7-5-5-3"), "usf")  # sign(W_2) is read at backward
    loss = model(torch.randn(2, 7)).sum()
    with torch.no_grad():
        model.get_parameter(parameter).mul_(-1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_turned_off_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("FEEDALIGN_NATIVE", "0")
    assert native.compiled() is None
    model = feedalign.convert(feedalign.mlp("7-5-3"), "fa")
    output = model(torch.randn(2, 7))
    assert uses_fast_path(output) and getattr(output.grad_fn, "plan", None) is not None  # the Python node
    assert not (fresh / "extensions").exists()  # nothing built
    assert native.status() == "compiled fused-path nodes: unavailable; the Python nodes run (same results)"


def test_bad_environment_value_is_a_config_error(fresh, monkeypatch):
    monkeypatch.setenv("FEEDALIGN_NATIVE", "maybe")
    with pytest.raises(ConfigError, match="FEEDALIGN_NATIVE must be 1 or 0.*'maybe'"):
        native.compiled()


def test_bad_environment_value_is_one_line_and_status_2_from_the_cli(fresh, monkeypatch, capsys):
    monkeypatch.setenv("FEEDALIGN_NATIVE", "maybe")
    code = main(["train", "--dataset", "mnist1d", "--architecture", "40-32-10", "--rule", "dfa", "--epochs", "1",
                 "--threads", "1", "--quiet", "--out-dir", str(fresh / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "FEEDALIGN_NATIVE must be 1 or 0" in err, err
    assert len(err.strip().splitlines()) == 1


def test_no_compiler_falls_back_quietly(fresh, monkeypatch, recwarn):
    monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    assert native.compiled() is None
    assert not [w for w in recwarn if "compiled" in str(w.message)]


def test_failed_build_warns_once_and_the_python_node_trains(fresh, monkeypatch):
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here")
    broken = fresh / "nodes.cpp"
    broken.write_text("#error this source is broken on purpose\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="compiled fused-path nodes are unavailable.*Python nodes"):
        assert native.compiled() is None
    fast, slow = pair("dfa", "tanh", True, torch.float64)  # both on the Python node now
    outputs = [train(model, 2, torch.float64) for model in (fast, slow)]
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    assert native._module is False  # tried once, not at every step


def test_a_built_node_is_imported_without_building(compiled):
    """A later process finds the built library and imports it directly: no cpp_extension, no compiler."""
    code = ("import sys, torch, feedalign; from feedalign.rules import native; "
            "m = feedalign.convert(feedalign.mlp('7-5-3'), 'fa'); out = m(torch.randn(2, 7)); "
            "print(out.grad_fn.name() == native.compiled().NODE_NAME, 'torch.utils.cpp_extension' in sys.modules)")
    env = {**os.environ, "CXX": "/no/compiler", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_bench_says_which_rules_ran_on_it(compiled):
    rows = feedalign.bench.bench_size("20-8-5:8", ["fa", "dfa", "kp"], torch.device("cpu"), rounds=1,
                                      min_round_s=0.001, ceiling=1e9, log=lambda *args: None)
    assert {r.rule: (r.fast_path, r.compiled_node) for r in rows} == {
        "bp": (False, False), "fa": (True, True), "dfa": (True, True), "kp": (True, True)}
    rows[-1] = dataclasses.replace(rows[-1], compiled_node=False)  # as on the Python node (FEEDALIGN_NATIVE=0)
    lines = feedalign.bench.table(rows, 1e9, torch.device("cpu"), [], 2048).splitlines()
    assert [line.split("|")[8].strip() for line in lines if "| 20-8-5:8 |" in line] == ["no", "compiled", "compiled",
                                                                                          "yes"]


def test_a_killed_build_leaves_nothing_the_next_one_waits_on(fresh):
    """A build killed midway (a real SIGKILL of the process and its compiler) does not block the next build,
    as a lock file left in a shared build folder would (cpp_extension's own waits on it forever)."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here")
    source = fresh / "tiny.cpp"  # a small module: seconds to build, not the node's 30
    source.write_text('#include <pybind11/pybind11.h>\n'
                      'PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.attr("NODE_NAME") = "tiny"; }\n')
    build = ("import sys; from pathlib import Path; from feedalign.rules import native; "
             "native.SOURCE = Path(sys.argv[1]); print(native.compiled().NODE_NAME)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    killed = subprocess.Popen([sys.executable, "-c", build, str(source)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((fresh / "extensions").glob("*/build-*/*.ninja")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, "the build ended before it could be killed"
    time.sleep(0.3)  # the compiler running
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not list((fresh / "extensions").glob("*/*.so"))
    again = subprocess.run([sys.executable, "-c", build, str(source)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout.split() == ["tiny"], again.stderr
