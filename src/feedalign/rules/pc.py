"""Predictive coding (Whittington & Bogacz 2017, Neural Computation 29(5):1229-1262, "An approximation of
the error backpropagation algorithm in a predictive coding network with local Hebbian synaptic
plasticity"), with the fixed-prediction assumption of Millidge, Tschantz & Buckley 2022 (Neural
Computation, "Predictive coding approximates backprop along arbitrary computation graphs") as an option.

The network. An MLP of ``L`` layers ``a_l = W_l x_{l-1} + b_l``, ``x_l = f_l(a_l)`` (``f_L`` the
identity: the output layer is the last ``nn.Linear``) becomes a predictive-coding network: every
hidden layer's output is a *value node* ``x_l`` (l = 1 .. L-1), free to move; the input ``x_0`` is
clamped to the data. Each layer predicts the next, ``mu_l = f_l(W_l x_{l-1} + b_l)``, and an *error
node* holds ``eps_l = x_l - mu_l``. Inference lowers the energy (summed over rows)::

    F = sum_{l<L} 1/2 ||x_l - mu_l||^2  +  (beta / 2) ||t - mu_L||^2

by gradient descent on the value nodes, ``T`` steps of size ``gamma``, all layers at once::

    x_l <- x_l - gamma * dF/dx_l,    dF/dx_l = eps_l - J_{l+1}^T eps_{l+1},
    J_{l+1}^T eps = W_{l+1}^T (f'_{l+1}(a_{l+1}) * eps)

and then every weight moves by the local, Hebbian product of its error node and its input::

    dW_l ~ (f'_l(a_l) * eps_l) x_{l-1}^T,    db_l ~ f'_l(a_l) * eps_l      (= -dF/dW_l, -dF/db_l)

with every ``x`` and ``a`` at the end of inference. Whittington & Bogacz write the same network with
the value node before the nonlinearity, ``mu_l = W_l f(x_{l-1})``, and the update ``eps_l f(x_{l-1})^T``
(their 2017 model; their code's ``net_type = 'bio'``); the form here, with the node after it and
``f'`` in the update, is their code's ``'bp'`` variant (djcrw/Supervised-Predictive-Coding,
``pc_learn_v1.m``), which is also Millidge et al.'s and fits an ``nn.Sequential`` of Linear and
activation modules. Their code's inference (``infer_bio_v1.m``) is the synchronous Euler step above.
Equation numbers are not cited: the paper's text could not be read here, only its abstract and code.

The output node and a general loss. Whittington & Bogacz clamp the output node to the target ``t``
with variance ``Sigma_L``: ``eps_L = (t - mu_L) / Sigma_L``, and scale the update by ``Sigma_L``
(their code: ``var_out``, default 1). Here the loss is the user's and only ``e = dL/dy`` reaches
``backward``, so the output node is clamped to the target one full gradient step away from the
feedforward prediction ``y``::

    t = y - g,    g = N e   (the gradient of the per-example loss: ``L`` is taken to be a mean over the
                             ``N`` rows, as every PyTorch loss is by default)

and ``beta`` (option ``output_precision``, 1/Sigma_L; default 1) weighs it, ``eps_L = beta (t - mu_L)``.
For the per-example squared error ``1/2 ||y - t*||^2`` this is exactly their clamp ``t = t*``; for any
other loss it is the loss's first-order expansion at ``y`` with an isotropic quadratic, the one term
of the loss that ``dL/dy`` determines. Before inference (``x = x_hat``, the feedforward values)
``eps_L = -beta g``. The update put into ``.grad`` is scaled by ``1 / (beta N)``, as their code scales
by ``Sigma_L / N``::

    W_l.grad = -(1 / (beta N)) sum_rows (f'_l(a_l) * eps_l) x_{l-1}^T

so that the output layer's gradient before inference is backprop's, and learning rates carry over.

What it approximates:

- standard PC (``fixed_prediction = 0``, the default): at the equilibrium of inference,
  ``eps_l = -beta N dL/dx_l + O(beta^2)`` and the update equals backprop's gradient up to a relative
  error O(beta) (Whittington & Bogacz: the weight change converges to backprop's "for certain
  parameters", as the output error is small against the hidden nodes' variance);
  ``tests/test_pc.py`` measures the slope (about 1 in log-log);
- fixed prediction (``fixed_prediction = 1``, Millidge et al. 2022): every prediction ``mu_l``, every
  ``f'`` and every ``x_{l-1}`` in the update is held at its feedforward value, so inference is linear
  and its equilibrium ``eps_l = J_{l+1}^T eps_{l+1}`` is backprop's recursion: the update equals
  backprop's gradient exactly, for any ``beta``. With ``inference_lr = 1`` it is reached after exactly
  ``L - 1`` steps (the error moves down one layer per step), the schedule under which Song, Lukasiewicz,
  Xu & Bogacz 2020 (NeurIPS, "Can the brain do backpropagation? Exact implementation of backpropagation
  in predictive coding networks", Z-IL) show exactness for standard PC too, with each layer updated at
  the step its error arrives (Z-IL itself is not implemented here).

How it fits ``convert`` and the user's loop (``loss.backward(); optimizer.step()``): the forward pass
is the feedforward prediction, unchanged (the value nodes start there); hooks record each layer's input
``x_hat_{l-1}`` and route the output through one autograd Function whose backward receives ``e``, runs
the inference above and returns the PC updates as the gradients of the weights and biases (the layers'
own backward is never run; no gradient reaches the model's input, which is clamped). Errors travel down
through ``W^T`` itself (Whittington & Bogacz's feedback connections have the forward weights' values),
so the feedback layout is backprop's and ``feedback_matrices`` is empty: PC removes the non-locality of
backprop, not its weight transport. Under :func:`feedalign.exact_gradients` the model is plain backprop.

Settings (rule options, or :func:`configure`): ``steps`` T (default 20), ``inference_lr`` gamma (0.1, the
authors' code's Euler step ``beta``), ``fixed_prediction`` (0 or 1), ``output_precision`` beta (1),
``step_halving`` (1). The authors' code runs up to 50 steps and stops early once the energy settles; T is
fixed here. Their safeguard is kept: standard PC's inference is gradient descent on F, which a fixed step
turns into a growing oscillation once the weights are large (the step must stay below 2 over F's largest
curvature, which grows with ``W^T W``; on MNIST, Adam at lr 1e-2 got there within an epoch and the updates
of the middle layer turned more than 90 degrees away from backprop's), so after
every step in which any row's energy rose, gamma is halved for the rest of that backward. Under fixed
prediction the dynamics is not a descent on F, and the step is never changed.

What a model must be: an ``nn.Sequential`` of ``nn.Linear`` layers with parameter-free, deterministic,
stateless modules between them (activations; ``feedalign.mlp``), ending with its output ``nn.Linear``:
inference evaluates those modules again at every step, so dropout and normalisation are refused, as are
Conv2d and other models.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._cut import LayerInputs
from .base import LearningRule, forward_flops, linear_stack, register

DEFAULTS = {"steps": 20, "inference_lr": 0.1, "fixed_prediction": 0, "output_precision": 1.0, "step_halving": 1}


class PredictiveCodingState(LayerInputs):
    """What a ``pc`` model carries (the root's ``_feedalign_cut``): its layers, the modules between them,
    the settings, and the inputs of the layers recorded during a training forward pass."""

    rule = "pc"

    def __init__(self, root: nn.Module, linears: list[nn.Linear], between: list[nn.Module]):
        super().__init__(root, linears)
        self.between = between
        self.steps, self.inference_lr = DEFAULTS["steps"], DEFAULTS["inference_lr"]
        self.fixed_prediction, self.output_precision = bool(DEFAULTS["fixed_prediction"]), DEFAULTS["output_precision"]
        self.step_halving = bool(DEFAULTS["step_halving"])

    def attach(self, root, output, inputs, params):
        return _PredictiveCoding.apply(output.detach(), self, len(inputs), *inputs, *params)


class _PredictiveCoding(torch.autograd.Function):
    """Identity on the output ``y`` (detached); backward runs inference from ``e = dL/dy`` and returns the PC
    updates as the gradients of the weights and biases."""

    @staticmethod
    def forward(ctx, output, state, n_layers, *tensors):
        ctx.state, ctx.n_layers = state, n_layers
        ctx.save_for_backward(output, *tensors)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, error):
        output, *tensors = ctx.saved_tensors
        state, n = ctx.state, ctx.n_layers
        inputs = tensors[:n]
        weights = [layer.weight for layer in state.linears]
        biases = [layer.bias for layer in state.linears]
        grad_w, grad_b = predictive_coding_updates(
            [w.detach() for w in weights], [None if b is None else b.detach() for b in biases], state.between,
            inputs, output, error, steps=state.steps, inference_lr=state.inference_lr,
            fixed_prediction=state.fixed_prediction, output_precision=state.output_precision,
            step_halving=state.step_halving)
        grads = [g for gw, gb, b in zip(grad_w, grad_b, biases) for g in ((gw,) if b is None else (gw, gb))]
        wanted = ctx.needs_input_grad[3 + n:]
        return (None, None, None, *([None] * n), *(g if w else None for g, w in zip(grads, wanted)))


@torch.no_grad()
def predictive_coding_updates(weights, biases, between, inputs, output, error, *, steps, inference_lr,
                              fixed_prediction, output_precision, step_halving=True):
    """The PC update of every layer: ``(grad_w, grad_b)``, lists in forward order (``grad_b[l]`` None without bias).

    ``weights[l]`` (out, in) and ``biases[l]`` of layer l (0-based); ``between[l]`` the modules from layer l's
    output ``a`` to the next layer's input (``f_{l+1}``; none after the last); ``inputs[l]`` (*lead, in) the
    feedforward input of layer l (``inputs[0]`` the data); ``output`` (*lead, out) the feedforward output y and
    ``error`` its gradient ``dL/dy``. See the module docstring for the equations.
    """
    n_layers = len(weights)
    dtype = error.dtype
    e = error.reshape(-1, error.shape[-1])
    rows = e.shape[0]
    x_hat = [x.reshape(-1, x.shape[-1]).to(dtype) for x in inputs]  # x_hat[l]: input of layer l
    y_hat = output.reshape(-1, output.shape[-1]).to(dtype)
    w = [m.to(dtype) for m in weights]
    b = [None if v is None else v.to(dtype) for v in biases]
    beta, gamma = float(output_precision), float(inference_lr)
    target = y_hat - rows * e  # t = y - g, g = N e

    def predict(l, x_in):
        """mu of layer l's output node from its input ``x_in``, and the vjp of f_l at a_l."""
        a = F.linear(x_in, w[l], b[l])
        if l == n_layers - 1:
            return a, None
        mu, vjp = torch.func.vjp(between[l], a)
        return mu, vjp

    def times_derivative(vjp, eps):
        return eps if vjp is None else vjp(eps)[0]

    # value nodes x[l] = input of layer l; x[0] is the clamped data; each starts at its feedforward value
    x = [x_hat[0]] + [v.clone() for v in x_hat[1:]]
    # the first layer's prediction never changes (its input is clamped): one evaluation
    fixed = [predict(l, x_hat[l]) for l in range(n_layers)] if fixed_prediction else [predict(0, x_hat[0])]

    def errors():
        """eps of every layer's output node (l = 0 .. L-1, the last is the output's) and the vjp at its a."""
        out = []
        for l in range(n_layers):
            mu, vjp = fixed[l] if fixed_prediction or l == 0 else predict(l, x[l])
            node = target if l == n_layers - 1 else x[l + 1]
            eps = beta * (node - mu) if l == n_layers - 1 else node - mu
            out.append((eps, vjp))
        return out

    def energy(eps):
        """F of every row: sum_{l<L} 1/2 |eps_l|^2 + 1/(2 beta) |eps_L|^2 (eps_L = beta (t - mu_L))."""
        return sum(0.5 * e.square().sum(1) for e, _ in eps[:-1]) + eps[-1][0].square().sum(1) / (2.0 * beta)

    eps = errors()
    halve = step_halving and not fixed_prediction
    level = energy(eps) if halve else None
    for _ in range(int(steps)):
        for l in range(1, n_layers):  # value node x[l] is layer l-1's output node
            down = times_derivative(eps[l][1], eps[l][0]).mm(w[l])  # J^T eps of the layer above
            x[l] = x[l] - gamma * (eps[l - 1][0] - down)
        eps = errors()
        if halve:  # the authors' safeguard: a rise of any row's energy means the step is too large
            new_level = energy(eps)
            if bool((new_level > level).any()):
                gamma /= 2.0
            level = new_level
    scale = -1.0 / (beta * rows)
    grad_w, grad_b = [], []
    for l, (eps_l, vjp) in enumerate(eps):
        delta = times_derivative(vjp, eps_l)
        source = x_hat[l] if fixed_prediction else x[l]
        grad_w.append((scale * delta.t().mm(source)).to(weights[l].dtype))
        grad_b.append(None if b[l] is None else (scale * delta.sum(0)).to(biases[l].dtype))
    return grad_w, grad_b


def _pc_state(model: nn.Module) -> PredictiveCodingState:
    state = getattr(model, "_feedalign_cut", None)
    if not isinstance(state, PredictiveCodingState):
        raise ValueError("model was not converted with rule 'pc' (feedalign.convert(model, 'pc'))")
    return state


def configure(model: nn.Module, *, steps: int | None = None, inference_lr: float | None = None,
              fixed_prediction: bool | None = None, output_precision: float | None = None,
              step_halving: bool | None = None) -> nn.Module:
    """Set a ``pc`` model's inference: ``steps`` T (an integer >= 0), ``inference_lr`` gamma (> 0),
    ``fixed_prediction`` and ``step_halving`` (False/True or 0/1), ``output_precision`` beta (> 0); returns
    ``model``.

    They are settings of the model object (kept by ``copy.deepcopy`` and ``torch.save(model)``), not of
    its ``state_dict``."""
    state = _pc_state(model)
    switches = ("fixed_prediction", "step_halving")
    for name, value in (("steps", steps), ("inference_lr", inference_lr), ("fixed_prediction", fixed_prediction),
                        ("output_precision", output_precision), ("step_halving", step_halving)):
        if value is None:
            continue
        if (isinstance(value, bool) and name not in switches) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if name == "steps":
            if not (math.isfinite(value) and value >= 0 and float(value).is_integer()):
                raise ValueError(f"steps must be a whole number >= 0, got {value!r}")
            state.steps = int(value)
        elif name in switches:
            if value not in (0, 1):
                raise ValueError(f"{name} must be 0 or 1, got {value!r}")
            setattr(state, name, bool(value))
        else:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
            setattr(state, name, float(value))
    return model


@register
class PredictiveCoding(LearningRule):
    """``pc``: inference on value nodes, then local Hebbian updates (see the module docstring)."""

    name = "pc"
    options = {"steps": "T, inference steps per backward (default 20)",
               "inference_lr": "gamma, the inference step size (default 0.1)",
               "fixed_prediction": "1: hold predictions at their feedforward values (Millidge et al. 2022; exact "
                                   "backprop at equilibrium), 0: standard PC (default 0)",
               "output_precision": "beta, the output node's precision 1/Sigma_L (default 1)",
               "step_halving": "1: halve gamma whenever a row's energy rises during inference (the authors' code; "
                               "standard PC only), 0: never (default 1)"}

    def configure(self, model, **options):
        configure(model, **{k: options[k] for k in DEFAULTS if k in options})

    def convert(self, model, *, generator, feedback_init, feedback_scale):
        linears, between = linear_stack(model, "pc", stateless=True)
        model._feedalign_cut = PredictiveCodingState(model, linears, between)
        return model

    def step_flops(self, widths, batch):
        """The forward pass, then per inference step every layer above the first forward and back (the first
        layer's prediction is fixed: its input is clamped), then every weight's update."""
        forward = forward_flops(widths, batch)
        above_first = forward - 2 * batch * widths[0] * widths[1]
        steps = DEFAULTS["steps"]
        return float(forward + (steps + 1) * above_first + steps * above_first + forward)
