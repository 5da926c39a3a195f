"""``Config``: every setting of a training run, validated, readable from TOML/YAML, savable as TOML.

The defaults are the README's main job (``feedalign compare`` with no arguments):
a 784-256-256-10 tanh network on MNIST that BP, FA, DFA and IFA all train in a
few epochs on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ConfigTypeError
from ..files import read_mapping
from ..models import ACTIVATIONS, check_architecture, check_memory, input_layout
from ..rules import parse_options, rules

# Choices of the string-valued settings; checked by Config.validate().
CHOICES = {
    "loss": ("auto", "cross_entropy", "mse", "bce"),
    "optimizer": ("sgd", "adam", "adamw", "rmsprop", "rmsprop-graves"),
    "schedule": ("constant", "step", "multistep", "cosine"),
    "init": ("default", "uniform", "gaussian", "zero", "zero-except-first", "xavier", "orthogonal"),
    "normalize": ("none", "channel"),
    "augment": ("none", "crop-flip"),
    "feedback_init": ("uniform", "gaussian", "orthogonal"),
    "frozen": ("none", "first", "hidden"),
    "weight_decay_mode": ("l2", "constant"),
}
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """One training run. Build with keywords, :meth:`from_dict` or :meth:`from_file`; all three validate."""

    # data
    dataset: str = _f("mnist", "dataset name (feedalign.data): mnist, fashion-mnist, mnist1d, cifar10, ...")
    data_dir: str | None = _f(None, "where the dataset files are (default: the data layer's cache)")
    validation_size: int | None = _f(None, "training examples held out for validation (default: the dataset's)")
    standardize: bool = _f(False, "standardize features with training-split statistics")
    train_size: int | None = _f(None, "train on the first N examples of the training split only (default: all)")
    test_size: int | None = _f(None, "evaluate on the first N test examples only (default: all)")
    normalize: str = _f("none", "channel: subtract each channel's mean and divide by its std (training split's "
                                "statistics), e.g. CIFAR-10's usual normalisation; none: leave pixels in [0, 1]")
    augment: str = _f("none", "training-split augmentation of image batches: crop-flip (a random crop of the "
                              "image's size from the image zero-padded by 4, flipped left-right half the time; "
                              "seeded by seed and epoch) or none")
    # model
    architecture: str = _f("784-256-256-10", "the model (also --model / model = ...): layer sizes, e.g. 784-800-10 "
                                             "or 784-240x7-10 (ends must fit the dataset), a named model (lenet5, "
                                             "nokland-conv, resnet20, resnet32, resnet56, vit-tiny, lstm), or "
                                             "module:function")
    activation: str = _f("tanh", "hidden activation: tanh, relu, sigmoid, ...")
    init: str = _f("default", "forward weight init: default (PyTorch), uniform U[-w,w], gaussian N(0,w^2), zero "
                              "(Linear layers), or xavier (Glorot uniform weights, zero biases, every Linear and Conv2d, as "
                              "BioTorch)")
    init_scale: float | None = _f(None, "w of the uniform/gaussian init (default 1/sqrt(fan_in)); biases follow")
    dropout: float = _f(0.0, "MLPs: dropout probability after every hidden activation (Nøkland's 0.5); 0: none")
    input_dropout: float = _f(0.0, "MLPs: dropout probability on the input (Nøkland's 0.1); 0: none")
    frozen: str = _f("none", "layers that keep their initial weights: none, first (the first layer) or hidden "
                             "(every layer but the output: 'shallow learning')")
    # learning rule
    rule: str = _f("bp", "learning rule: bp, fa, dfa, ifa, ...")
    feedback_init: str = _f("uniform", "feedback matrices: uniform, gaussian or orthogonal")
    feedback_scale: float | None = _f(None, "scale of the feedback matrices (default: the rule's)")
    rule_options: str = _f("", "the rule's own settings as name=value,... (dtp: target_step, noise, inverse_lr; "
                               "e.g. target_step=0.003,noise=0.36,inverse_lr=0.005)")
    # objective and optimization
    loss: str = _f("auto", "cross_entropy, mse, bce (sigmoid + one-hot); auto: cross_entropy, or mse for regression")
    optimizer: str = _f("sgd", "sgd, adam, adamw (Adam with decoupled weight decay, Loshchilov & Hutter 2019), "
                               "rmsprop (torch's) or rmsprop-graves (Graves 2013's centred RMSprop, decay 0.95, "
                               "1e-3 inside the root: Lee et al.'s DTP code)")
    lr: float = _f(0.05, "learning rate")
    momentum: float = _f(0.9, "SGD momentum (0 for plain SGD) / RMSprop momentum")
    nesterov: bool = _f(False, "Nesterov momentum (SGD with momentum > 0)")
    weight_decay: float = _f(0.0, "weight decay coefficient (see weight_decay_mode; adamw decays decoupled from the "
                                  "gradient, w <- w - lr * weight_decay * w)")
    weight_decay_mode: str = _f("l2", "l2: the optimizer's L2 penalty; constant: subtract weight_decay from every "
                                      "weight and bias after each step (w - lr*g - decay, the review's randombp code)")
    schedule: str = _f("constant", "learning-rate schedule over epochs: constant, step, multistep or cosine")
    step_size: int = _f(10, "step schedule: epochs between decays")
    milestones: str = _f("", "multistep schedule: epochs after which lr is multiplied by gamma, e.g. '100,150,200'")
    gamma: float = _f(0.1, "step and multistep schedules: decay factor")
    warmup_steps: int = _f(0, "linear learning-rate warm-up over the first N optimizer steps, before the schedule: "
                              "step n (from 1) takes lr * n / N; 0: none")
    clip_grad_norm: float | None = _f(None, "clip the gradient (whatever the rule leaves in .grad) to this total "
                                            "2-norm over all trained parameters before each optimizer step "
                                            "(torch.nn.utils.clip_grad_norm_); default: no clipping")
    batch_size: int = _f(64, "minibatch size")
    epochs: int = _f(3, "passes over the training set")
    stop_train_error: float | None = _f(None, "stop before `epochs` once the running mean of the training error "
                                              "(m = 0.75 m + 0.25 * this epoch's, from m = 1: Nøkland's dfa-torch "
                                              "rule, which uses 0.0001) is at or below this fraction (default: never)")
    seed: int = _f(0, "seeds forward init, feedback matrices and data order (independent streams)")
    # where and how
    device: str = _f("cpu", "cpu, cuda, cuda:N or auto")
    # 1 by default: at these sizes (batch 64, 784-256-256-10) one thread took 1.6 s of CPU per MNIST
    # epoch and two took 35 s on 2 shared cores, where OpenMP barriers spin while the other core is busy.
    threads: int = _f(1, "torch CPU threads; 0 leaves the process's setting (torch's default: all cores)")
    out_dir: str = _f("runs", "directory the run directory goes into")
    name: str | None = _f(None, "run directory name (default: <timestamp>-<rule>-<dataset>)")
    max_memory: float | None = _f(None, "refuse a network whose training needs more than this many GB (weights, "
                                        "gradients, feedback; default: the memory available when it is built)")
    # diagnostics (feedalign.diagnostics): alignment with backprop logged to RUN_DIR/alignment.jsonl
    alignment_every: int = _f(200, "steps between alignment measurements on 256 validation examples (0: off)")
    # outcome labels
    refuse_margin: float = _f(0.1, "refused: best validation accuracy never beats chance by this much (regression: "
                                    "final validation loss not this fraction below the initial one)")
    collapse_drop: float = _f(0.2, "collapsed: validation accuracy ends more than this below its best and stays there")

    def __post_init__(self):
        self.validate()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> "Config":
        """A Config from a flat mapping; an unknown key is an error naming it and the valid ones."""
        if not isinstance(values, dict):
            raise ConfigTypeError(f"{source}: expected a table of settings (key = value), got {type(values).__name__}")
        values = architecture_alias(values, source)
        unknown = [k for k in values if k not in cls.keys()]
        if unknown:
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}; valid settings: {', '.join(cls.keys())}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file of flat ``key = value`` settings."""
        return cls.from_dict(read_mapping(path, what="config file"), source=str(path))

    def replace(self, **changes) -> "Config":
        """A validated copy with ``changes`` applied (unknown keys are errors)."""
        merged = dataclasses.asdict(self)
        merged.update(changes)
        return type(self).from_dict(merged, source="settings")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """TOML text of every setting; ``None`` (TOML has no null) is left out and reads back as the default."""
        import tomli_w
        values = {k: v for k, v in self.to_dict().items() if v is not None}
        header = ("# feedalign run configuration: `feedalign train --config THIS_FILE` repeats the run.\n"
                  "# Settings left out are None (their default).\n")
        return header + tomli_w.dumps(values)

    def schedule_milestones(self) -> list[int]:
        """The epochs of ``milestones`` (validated; a multistep schedule needs at least one)."""
        epochs = _milestones(self.milestones)
        if self.schedule == "multistep" and not epochs:
            raise ConfigError("schedule = 'multistep' needs milestones, e.g. milestones = '100,150,200'")
        return epochs

    # -- validation --------------------------------------------------------------------
    def parsed_rule_options(self) -> dict[str, float]:
        """``rule_options`` as ``{name: value}``, checked against the rule's options (ConfigError otherwise)."""
        try:
            return parse_options(self.rule, self.rule_options)
        except ValueError as err:
            raise ConfigError(f"rule_options: {err}") from None

    def validate(self) -> None:
        """Raise ConfigError (ConfigTypeError for a wrong type) naming the first bad field and what it expects."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
            if isinstance(getattr(self, f.name), int) and hints[f.name] in (float, float | None):
                setattr(self, f.name, float(getattr(self, f.name)))  # 1 in a float field means 1.0
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.rule not in rules():
            raise ConfigError(f"rule must be one of {', '.join(rules())}; got {self.rule!r}")
        self.parsed_rule_options()
        if self.activation.lower() not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(sorted(ACTIVATIONS))}; got {self.activation!r}")
        check_architecture(self.architecture)
        self.schedule_milestones()
        if self.max_memory is not None:
            _at_least("max_memory", self.max_memory, 0.0, strict=True)
        if input_layout(self.architecture) == "flat":  # an MLP size string: its memory is known before building it
            check_memory(self.architecture, self.max_memory)
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device must be cpu, cuda, cuda:N or auto; got {self.device!r}")
        if not self.dataset.strip():
            raise ConfigError("dataset must be a dataset name, e.g. 'mnist'; got an empty string")
        _at_least("lr", self.lr, 0.0, strict=True)  # lr 0 trains nothing; it is never what was meant
        _at_least("weight_decay", self.weight_decay, 0.0)
        _at_least("gamma", self.gamma, 0.0, strict=True)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("epochs", self.epochs, 1)
        _at_least("step_size", self.step_size, 1)
        _at_least("warmup_steps", self.warmup_steps, 0)
        if self.clip_grad_norm is not None:
            _at_least("clip_grad_norm", self.clip_grad_norm, 0.0, strict=True)
        _at_least("seed", self.seed, 0)
        _at_least("alignment_every", self.alignment_every, 0)
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.stop_train_error is not None and not 0.0 <= self.stop_train_error < 1.0:
            raise ConfigError(f"stop_train_error must be in [0, 1); got {self.stop_train_error!r}")
        for name in ("validation_size", "init_scale", "feedback_scale"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 0)
        _at_least("threads", self.threads, 0)
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {getattr(self, name)!r}")
        if (self.dropout or self.input_dropout) and input_layout(self.architecture) != "flat":
            raise ConfigError(f"dropout and input_dropout apply to MLP architectures (layer sizes); got "
                              f"{self.architecture!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer = 'sgd' and momentum > 0")
        if not 0.0 <= self.refuse_margin <= 1.0:
            raise ConfigError(f"refuse_margin must be in [0, 1]; got {self.refuse_margin!r}")
        if not 0.0 < self.collapse_drop <= 1.0:
            raise ConfigError(f"collapse_drop must be in (0, 1]; got {self.collapse_drop!r}")
        if self.name is not None and (not self.name.strip() or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"name must be a plain directory name (no '/'); got {self.name!r}")


def _milestones(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) > 0 for p in parts) or any(b <= a for a, b in zip(map(int, parts),
                                                                                     map(int, parts[1:]))):
        raise ConfigError(f"milestones must be increasing positive epochs separated by commas, e.g. '100,150,200'; "
                          f"got {text!r}")
    return [int(p) for p in parts]


def _type_name(hint) -> str:
    names = [a.__name__ if a is not type(None) else "None" for a in typing.get_args(hint)] or [hint.__name__]
    names = ["a number" if n == "float" else "an integer" if n == "int" else "true/false" if n == "bool"
             else "a string" if n == "str" else n for n in names]
    return " or ".join(names)


def _check_type(name: str, value, hint) -> None:
    allowed = typing.get_args(hint) or (hint,)
    ok = False
    for kind in allowed:
        if kind is type(None):
            ok |= value is None
        elif kind is bool:
            ok |= isinstance(value, bool)
        elif kind is int:
            ok |= isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok |= isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok |= isinstance(value, kind)
    if not ok:
        raise ConfigTypeError(f"{name} must be {_type_name(hint)}; got {value!r}")


def _at_least(name: str, value, low, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {low}; got {value!r}")




def architecture_alias(values: dict, source: str) -> dict:
    """``values`` with ``model = ...`` (another name for ``architecture``) as ``architecture``; both at once
    must agree (a ConfigError naming ``source`` otherwise)."""
    if "model" not in values:
        return values
    values = dict(values)
    model = values.pop("model")
    if "architecture" in values and values["architecture"] != model:
        raise ConfigError(f"{source}: model {model!r} and architecture {values['architecture']!r} name the same "
                          "setting; give one")
    values["architecture"] = model
    return values
