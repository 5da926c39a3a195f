"""The models ``--model``/``architecture`` names: size strings (``"784-800-800-10"``), the registry of
named models with the input layout each reads, and user models given as ``module:function``."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError
from .conv import lenet5, nokland_conv, resnet20, resnet32, resnet56
from .mlp import mlp
from .sizes import parse_sizes


def flat_inputs(x):
    """(N, ...) -> (N, features): what an MLP reads (N may be 0: an empty validation set)."""
    return x.flatten(1)


def image_inputs(x):
    """(N, C, H, W) as it is (checked by the model spec)."""
    return x


def native_inputs(x):
    """(N, *the dataset's input_shape) as it is."""
    return x


# How a model wants its inputs: layout name -> fn((N, *input_shape) tensor) -> the tensor the model is fed.
INPUT_LAYOUTS = {"flat": flat_inputs, "image": image_inputs, "native": native_inputs}


@dataclass(frozen=True)
class Recipe:
    """How the literature trains a model: ``settings`` (training Config fields: optimizer, lr, schedule, warm-up,
    weight decay, batch size, clipping, epochs, augmentation, ...), the ``family`` a learning rule may adjust a recipe
    for (:meth:`feedalign.rules.LearningRule.adjust_recipe`: "mlp", "conv", "resnet", "transformer", "recurrent"),
    and ``sources``: where each setting comes from. Settings it leaves out keep Config's defaults."""

    settings: dict
    family: str
    sources: str


# MLP size strings (and LeNet-5, Nøkland's network): the settings feedalign has always trained them with.
MLP_RECIPE = Recipe({}, "mlp", "feedalign's defaults (training.Config): SGD, lr 0.05, momentum 0.9, batch 64, constant "
                               "rate, 3 epochs, no weight decay, clipping or warm-up; the README's `make run` and "
                               "`feedalign compare` train BP, FA, DFA and IFA with them")


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``build(input_shape, num_classes, activation) -> nn.Module`` and the input layout it reads.

    ``inputs``: a key of :data:`INPUT_LAYOUTS` ("flat": (N, features); "image": (N, C, H, W); "native": the
    dataset's own shape). ``needs``: what the dataset must be ("image classification" or "" for anything).
    ``recipe``: how it is trained when the command line names nothing else (:class:`Recipe`; None: Config's defaults).
    """

    build: Callable[[tuple, int | None, str], nn.Module]
    inputs: str
    description: str
    needs: str = "image classification"
    recipe: Recipe | None = None


def _image_builder(fn, *, activation: bool = True, square: bool = True):
    def build(input_shape, num_classes, act):
        kwargs = {"in_channels": input_shape[0], "num_classes": num_classes}
        if activation:
            kwargs.update(activation=act, input_size=input_shape[1])
        return fn(**kwargs)
    return build


# He et al. 2016 (arXiv 1512.03385, Sec. 4.2, CIFAR-10): SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1
# divided by 10 at 32k and 48k iterations, stopped at 64k (on 45k/5k train/validation: epochs 91, 136, 182); 4-pixel
# padding, random 32x32 crops and horizontal flips; per-pixel mean subtracted (here: per-channel normalisation); their
# ResNet-110 starts at 0.01 for about 400 iterations. Xavier init and per-channel normalisation as BioTorch (Sanfiz &
# Akrout 2021), whose benchmark trains these networks under every rule.
RESNET_RECIPE = Recipe(
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "batch_size": 128,
     "schedule": "multistep", "milestones": "91,136", "gamma": 0.1, "epochs": 182, "warmup_steps": 400,
     "augment": "crop-flip", "normalize": "channel", "init": "xavier"},
    "resnet",
    "He et al. 2016 (arXiv 1512.03385) Sec. 4.2: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 / 10 at 32k "
    "and 48k iterations, 64k iterations (epochs 91, 136, 182 of 45k images), pad-4 crop and flip, and for ResNet-110 "
    "a lower rate for the first ~400 iterations (here a linear warm-up over 400 steps, as Goyal et al. 2017, arXiv "
    "1706.02677); Xavier-uniform init and per-channel normalisation as BioTorch's ResNet-20 benchmark (Sanfiz & "
    "Akrout 2021), which trains these networks under every rule (its sign-symmetric rules need weights of Xavier's "
    "scale, the scale of their feedback)")

MODELS: dict[str, ModelSpec] = {
    "lenet5": ModelSpec(_image_builder(lenet5), "image", "LeNet-5 (28x28 or 32x32 images), --activation applies",
                        recipe=Recipe({}, "conv", MLP_RECIPE.sources)),
    "nokland-conv": ModelSpec(_image_builder(nokland_conv), "image",
                              "Nøkland 2016's CIFAR convolutional network, --activation applies",
                              recipe=Recipe({}, "conv", MLP_RECIPE.sources)),
    "resnet20": ModelSpec(_image_builder(resnet20, activation=False), "image",
                          "He et al. 2016 CIFAR ResNet-20 (BatchNorm, option-A shortcuts, ReLU)", recipe=RESNET_RECIPE),
    "resnet32": ModelSpec(_image_builder(resnet32, activation=False), "image", "CIFAR ResNet-32", recipe=RESNET_RECIPE),
    "resnet56": ModelSpec(_image_builder(resnet56, activation=False), "image", "CIFAR ResNet-56", recipe=RESNET_RECIPE),
}


def register_model(name: str, spec: ModelSpec) -> None:
    """Make ``name`` buildable by ``--model NAME`` / ``architecture = NAME``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model expects a ModelSpec, got {type(spec).__name__}")
    if not isinstance(name, str) or not name or name in MODELS or ":" in name or name[0].isdigit():
        raise ValueError(f"model name {name!r} is empty, taken, or looks like an MLP size string or module:function")
    if spec.inputs not in INPUT_LAYOUTS:
        raise ValueError(f"unknown input layout {spec.inputs!r}; known: {', '.join(INPUT_LAYOUTS)}")
    MODELS[name] = spec


# Kept for code that asked for the convolutional names before the registry.
NAMED_ARCHITECTURES = {"lenet5": lenet5, "nokland-conv": nokland_conv}

_USER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_model(architecture: str) -> bool:
    """``module:function``: a user's own builder."""
    return isinstance(architecture, str) and bool(_USER.match(architecture.strip()))


def check_architecture(architecture) -> None:
    """ConfigError unless ``architecture`` is a registered model, ``module:function`` or an MLP size string."""
    if isinstance(architecture, str) and (architecture in MODELS or is_user_model(architecture)):
        return
    if isinstance(architecture, str) and ":" in architecture:
        raise ConfigError(f"architecture {architecture!r}: a user model is 'module:function' (an importable module "
                          "and a function in it), e.g. 'mypackage.nets:build'")
    try:
        parse_sizes(architecture)
    except ConfigError as err:
        raise ConfigError(f"{err}; or a named model: {', '.join(MODELS)}; or 'module:function'") from None


def recipe_for(architecture) -> Recipe | None:
    """The :class:`Recipe` of ``architecture``: a registered model's, :data:`MLP_RECIPE` for a size string, None for
    a user's ``module:function`` (or anything that is not a model name: Config's validation says what is wrong)."""
    if not isinstance(architecture, str):
        return None
    if architecture in MODELS:
        return MODELS[architecture].recipe
    return None if is_user_model(architecture) or ":" in architecture else MLP_RECIPE


def input_layout(architecture: str) -> str:
    """How ``architecture`` reads its inputs: a key of :data:`INPUT_LAYOUTS` (MLPs "flat", user models "native")."""
    if architecture in MODELS:
        return MODELS[architecture].inputs
    return "native" if is_user_model(architecture) else "flat"


def user_builder(architecture: str) -> Callable:
    """The function named by ``module:function``; a ConfigError says what is wrong."""
    module_name, function_name = architecture.strip().split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"architecture {architecture!r}: cannot import {module_name!r} ({err}); is it on "
                          "PYTHONPATH?") from None
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise ConfigError(f"architecture {architecture!r}: {module_name} has no function {function_name!r}")
    return fn


def build_architecture(architecture: str, activation: str, input_shape: tuple, num_classes: int, *,
                       dropout: float = 0.0, input_dropout: float = 0.0) -> nn.Module:
    """The model ``architecture`` names, for inputs of ``input_shape`` (without the batch dimension).

    - an MLP size string: ``mlp(architecture, activation, dropout=..., input_dropout=...)``, fed flat vectors
      (dropout is for MLPs only; another architecture with it is refused);
    - a name of :data:`MODELS` (``lenet5``, ``nokland-conv``, ``resnet20``, ...), fed as its spec says;
    - ``module:function``: ``function(input_shape=..., num_classes=...)`` must return an nn.Module; it is fed
      (N, *input_shape), the dataset's own shape (flatten inside the model if it wants vectors).
    """
    if (dropout or input_dropout) and (is_user_model(architecture) or architecture in MODELS):
        raise ConfigError(f"dropout and input_dropout apply to MLP architectures (layer sizes); {architecture!r} "
                          "is a named or user model: add dropout inside it")
    if is_user_model(architecture):
        model = user_builder(architecture)(input_shape=tuple(input_shape), num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"architecture {architecture!r} returned {type(model).__name__}, not an nn.Module")
        return model
    if architecture not in MODELS:
        return mlp(architecture, activation, dropout=dropout, input_dropout=input_dropout)
    spec = MODELS[architecture]
    if spec.inputs == "image" and (len(input_shape) != 3 or input_shape[1] != input_shape[2]):
        raise ConfigError(f"architecture {architecture!r} needs square images (C, H, W); the dataset's inputs "
                          f"have shape {tuple(input_shape)}")
    return spec.build(tuple(input_shape), num_classes, activation)
