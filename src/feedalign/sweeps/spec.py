"""Sweep specifications: which training configs a sweep runs, read from TOML or YAML.

A spec file::

    name = "init-lr"            # the sweep's directory name (default: the file's stem)
    out_dir = "sweeps"          # where that directory goes
    seed = 0                    # seeds the random sample (not the runs: sweep `seed` in the grid for that)
    samples = 8                 # random draws per grid point (needs a [random] table)
    backend = "local"           # or "ray"
    threads_per_run = 1         # torch threads of each run; the local pool has cpu_count // this workers
    plot = [["init_scale", "lr"]]   # heatmap axes (default: every pair of swept parameters)
    population = "auto"         # or "off": every run trains alone (see below)
    population_size = 8         # at most this many runs in one population

    [base]                      # fixed settings: any field of feedalign.training.Config
    dataset = "mnist1d"
    architecture = "40-200-100-10"
    epochs = 5

    [grid]                      # field -> list of values; the sweep is their Cartesian product
    rule = ["bp", "fa", "dfa"]
    lr = [0.01, 0.1]

    [random]                    # field -> distribution, drawn `samples` times per grid point
    weight_decay = { loguniform = [1e-6, 1e-2] }
    init_scale = { uniform = [0.0, 1.0] }
    batch_size = { choice = [32, 64] }
    seed = { randint = [0, 1000] }

With ``population = "auto"`` (the default) and the local backend, runs that differ only in
``seed``, ``lr``, ``init_scale``, ``feedback_scale`` and ``weight_decay``, of a rule and settings
that :mod:`feedalign.training.population` supports (bp, fa, usf, frsf, brsf, kp, wm, dfa, drtp, ifa;
an MLP), train up to ``population_size`` at a time as one batched model in one worker: each
still gets its ordinary run directory, with numbers equal to its separate run's to float
tolerance, not bitwise. ``population = "off"`` trains every run alone (bitwise reproducible).
See :mod:`feedalign.sweeps.runner`.

Everything is checked when the spec is read, before any run starts: unknown keys
or fields, empty grids, values a :class:`Config` would refuse. Errors are
:class:`feedalign.errors.ConfigError` with one line naming the file and the offending entry.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random as _random
from dataclasses import dataclass, field
from pathlib import Path

from ..data import _spec
from ..errors import ConfigError, ConfigTypeError
from ..files import read_mapping as read_settings_file
from ..training.build import check_fit as check_one
from ..training.config import Config

BACKENDS = ("local", "ray")
POPULATION_MODES = ("auto", "off")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("name", "out_dir", "seed", "samples", "backend", "threads_per_run", "workers", "retries", "plot",
            "population", "population_size", "base", "grid", "random")
# Config fields that say where or how fast a run goes, not what it computes: left out of the run's hash.
NOT_HASHED = ("out_dir", "name", "threads", "data_dir", "max_memory")
# Fields added after sweeps were first hashed, with the value that computes what runs computed before they existed:
# left out of the hash at that value, so a sweep made earlier finds its finished runs under the same keys.
HASHED_UNLESS = {"warmup_steps": 0, "clip_grad_norm": None}


def _config_cls():
    return Config


def config_hash(config) -> str:
    """SHA-256 of a Config's settings that determine its result (not out_dir, name, threads, data_dir)."""
    values = {k: v for k, v in config.to_dict().items()
              if k not in NOT_HASHED and not (k in HASHED_UNLESS and v == HASHED_UNLESS[k])}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Point:
    """One run of a sweep: the swept values, the full validated Config, and its key (run directory name)."""

    params: dict
    config: object
    hash: str

    @property
    def key(self) -> str:
        return f"{self.config.rule}-{self.hash[:12]}"


@dataclass
class SweepSpec:
    name: str
    out_dir: str = "sweeps"
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    samples: int = 1
    seed: int = 0
    backend: str = "local"
    threads_per_run: int = 1
    workers: int | None = None
    retries: int = 1
    plot: list = field(default_factory=list)
    population: str = "auto"
    population_size: int = 8
    source: str = "spec"

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def swept(self) -> list[str]:
        """Swept fields in spec order: grid first, then random."""
        return list(self.grid) + [k for k in self.random if k not in self.grid]

    def points(self) -> list[Point]:
        """Every run of the sweep, in a fixed order (grid product x random draws); duplicates dropped."""
        Config = _config_cls()
        rng = _random.Random(self.seed)
        names, lists = list(self.grid), [self.grid[k] for k in self.grid]
        out, seen = [], set()
        for combo in itertools.product(*lists) if names else [()]:
            draws = range(self.samples) if self.random else [0]
            for _ in draws:
                params = dict(zip(names, combo))
                for fname, dist in self.random.items():
                    params[fname] = _draw(rng, dist)
                values = {**self.base, **params}
                try:
                    config = Config.from_dict(values, source="settings")
                except ConfigError as err:
                    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                    raise type(err)(f"{self.source}: the point {{{shown}}} is not a valid config: {err}") from None
                h = config_hash(config)
                if h in seen:
                    continue
                seen.add(h)
                out.append(Point(params=params, config=config, hash=h))
        return out

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in TOP_KEYS if k not in ("base", "grid", "random", "workers")}
        if self.workers is not None:
            d["workers"] = self.workers
        d.update(base=self.base, grid=self.grid, random=self.random)
        return d


def check_fit(points: list[Point], source: str = "spec") -> None:
    """Check that every point's architecture (and loss) fits its dataset, before any run starts.

    Uses each dataset's shapes (its registry entry; the synthetic tasks are generated once,
    they are small) rather than loading it. Raises :class:`ConfigError` naming the first
    unfit point and how many there are.
    """
    shapes: dict = {}
    unfit = []
    for p in points:
        name = p.config.dataset
        if name not in shapes:
            shapes[name] = _DatasetShape.of(_spec(name))
        try:
            check_one(p.config, shapes[name])
        except ConfigError as err:
            unfit.append((p, err))
    if unfit:
        p, err = unfit[0]
        shown = ", ".join(f"{k}={v!r}" for k, v in p.params.items()) or "the base settings"
        more = f" (and {len(unfit) - 1} more of the {len(points)} runs)" if len(unfit) > 1 else ""
        raise ConfigError(f"{source}: {{{shown}}}: {err}{more}; nothing was run")


@dataclass
class _DatasetShape:
    """What :func:`feedalign.training.build.check_fit` asks of a dataset, without loading it."""

    name: str
    input_shape: tuple
    num_classes: int | None
    output_size: int
    train_x: tuple = (0,)  # only its length is asked: non-empty

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def task(self) -> str:
        return "classification" if self.num_classes is not None else "regression"

    @classmethod
    def of(cls, spec) -> "_DatasetShape":
        if spec.num_classes is not None:
            return cls(spec.name, tuple(spec.input_shape), spec.num_classes, int(spec.num_classes))
        train_y = spec.arrays(seed=0)[1]  # regression targets: their width is the output size
        width = 1 if train_y.ndim == 1 else int(train_y.shape[1])
        return cls(spec.name, tuple(spec.input_shape), None, width)


def _draw(rng: _random.Random, dist: dict):
    (kind, args), = dist.items()
    if kind == "choice":
        return rng.choice(args)
    if kind == "uniform":
        return rng.uniform(args[0], args[1])
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    return rng.randint(args[0], args[1])  # randint, both ends included


def read_mapping(path: str | Path) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) sweep spec as a dict, or a one-line ConfigError."""
    return read_settings_file(path, what="sweep spec")


def load_spec(path: str | Path, *, overrides: dict | None = None, **settings) -> SweepSpec:
    """Read and check a spec file. ``overrides`` replace ``base`` fields; ``settings`` replace top-level keys."""
    path = Path(path)
    values = read_mapping(path)
    values.setdefault("name", path.stem)
    for k, v in settings.items():
        if v is not None:
            values[k] = v
    spec = spec_from_dict(values, source=str(path))
    if overrides:
        apply_overrides(spec, overrides)
    return spec


def apply_overrides(spec: SweepSpec, overrides: dict) -> None:
    Config = _config_cls()
    for k, v in overrides.items():
        if k not in Config.keys():
            raise ConfigError(f"--set {k}: unknown config field; valid fields: {', '.join(Config.keys())}")
        if k in spec.grid or k in spec.random:
            raise ConfigError(f"--set {k}: {k} is swept by {spec.source}; edit its grid/random entry instead")
    spec.base = {**spec.base, **overrides}
    _check_base(spec.base, spec.source)
    spec.points()  # every point still valid


def spec_from_dict(values: dict, *, source: str = "spec") -> SweepSpec:
    """A checked :class:`SweepSpec` from a mapping shaped like the spec file."""
    Config = _config_cls()
    fields = Config.keys()
    unknown = [k for k in values if k not in TOP_KEYS]
    if unknown:
        hint = " (a config field: put it under [base] or [grid])" if unknown[0] in fields else ""
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}{hint}; valid keys: {', '.join(TOP_KEYS)}")

    def get(key, kind, default, check=None, what=""):
        value = values.get(key, default)
        if value is default and default is None:
            return None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigTypeError(f"{source}: {key} must be {what}; got {value!r}")
        if check is not None and not check(value):
            raise ConfigError(f"{source}: {key} must be {what}; got {value!r}")
        return value

    name = get("name", str, "sweep", lambda v: bool(v.strip()) and "/" not in v and v not in (".", ".."),
               "a plain directory name (no '/')")
    out_dir = get("out_dir", str, "sweeps", lambda v: bool(v.strip()), "a directory path")
    seed = get("seed", int, 0, lambda v: v >= 0, "an integer >= 0")
    samples = get("samples", int, 1, lambda v: v >= 1, "an integer >= 1")
    backend = get("backend", str, "local", lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}")
    threads = get("threads_per_run", int, 1, lambda v: v >= 1, "an integer >= 1")
    workers = get("workers", int, None, lambda v: v >= 1, "an integer >= 1")
    retries = get("retries", int, 1, lambda v: v >= 0, "an integer >= 0")
    population = get("population", str, "auto", lambda v: v in POPULATION_MODES,
                     f"one of {', '.join(POPULATION_MODES)}")
    population_size = get("population_size", int, 8, lambda v: v >= 2, "an integer >= 2")
    base = get("base", dict, {}, None, "a table of config fields ([base])")
    grid = get("grid", dict, {}, None, "a table of field = [values] ([grid])")
    rand = get("random", dict, {}, None, "a table of field = {distribution = [args]} ([random])")
    if "samples" in values and not rand:
        raise ConfigError(f"{source}: samples = {samples} needs a [random] table of distributions to draw from")

    _check_base(base, source)
    for section, table in (("grid", grid), ("random", rand)):
        for k in table:
            if k not in fields:
                raise ConfigError(f"{source}: [{section}] {k!r} is not a config field; valid fields: {', '.join(fields)}")
            if k in ("out_dir", "name"):
                raise ConfigError(f"{source}: [{section}] {k!r} cannot be swept (the sweep decides where runs go)")
    both = [k for k in grid if k in rand]
    if both:
        raise ConfigError(f"{source}: {both[0]!r} is in both [grid] and [random]; sweep it in one of them")
    for k, vals in grid.items():
        if not isinstance(vals, list):
            raise ConfigTypeError(f"{source}: grid.{k} must be a list of values, e.g. {k} = [{_example(k)}]; got {vals!r}")
        if not vals:
            raise ConfigError(f"{source}: grid.{k} is empty; give at least one value")
        for v in vals:
            _check_value(base, k, v, f"{source}: grid.{k}")
    for k, dist in rand.items():
        _check_distribution(base, k, dist, f"{source}: random.{k}")

    plot = values.get("plot", [])
    swept = list(grid) + list(rand)
    if not isinstance(plot, list) or not all(isinstance(p, list) and len(p) == 2 for p in plot):
        raise ConfigTypeError(f"{source}: plot must be a list of [x, y] field pairs, e.g. plot = [[\"init_scale\", \"lr\"]]")
    for pair in plot:
        for k in pair:
            if k not in swept:
                raise ConfigError(f"{source}: plot axis {k!r} is not a swept field; swept: {', '.join(swept) or 'none'}")

    spec = SweepSpec(name=name, out_dir=out_dir, base=base, grid=grid, random=rand, samples=samples, seed=seed,
                     backend=backend, threads_per_run=threads, workers=workers, retries=retries, plot=plot,
                     population=population, population_size=population_size, source=source)
    if not spec.points():
        raise ConfigError(f"{source}: the sweep has no runs")
    return spec


def _example(k: str) -> str:
    return {"rule": '"bp", "fa"', "lr": "0.01, 0.1"}.get(k, "...")


def _check_base(base: dict, source: str) -> None:
    Config = _config_cls()
    unknown = [k for k in base if k not in Config.keys()]
    if unknown:
        raise ConfigError(f"{source}: [base] {unknown[0]!r} is not a config field; valid fields: {', '.join(Config.keys())}")
    try:
        Config.from_dict(dict(base), source="settings")
    except ConfigError as err:
        raise type(err)(f"{source}: [base]: {err}") from None


def _check_value(base: dict, k: str, v, where: str) -> None:
    """``v`` is a valid value of field ``k`` (checked alone on top of ``base``)."""
    Config = _config_cls()
    if isinstance(v, (list, dict)):
        raise ConfigTypeError(f"{where}: {v!r} is not a single value")
    try:
        Config.from_dict({**base, k: v}, source="settings")
    except ConfigError as err:
        raise type(err)(f"{where}: {err}") from None


def _check_distribution(base: dict, k: str, dist, where: str) -> None:
    form = f"a table with one of {', '.join(DISTRIBUTIONS)}, e.g. {k} = {{ loguniform = [1e-4, 1e-1] }}"
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ConfigTypeError(f"{where} must be {form}; got {dist!r}")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, e.g. {kind} = [{'a, b' if kind != 'choice' else '...'}]")
    if kind == "choice":
        for v in args:
            _check_value(base, k, v, where)
        return
    number = (int,) if kind == "randint" else (int, float)
    if len(args) != 2 or not all(isinstance(a, number) and not isinstance(a, bool) for a in args):
        kind_name = "integers" if kind == "randint" else "numbers"
        raise ConfigError(f"{where}: {kind} needs [low, high], two {kind_name}; got {args!r}")
    low, high = args
    if not low <= high:
        raise ConfigError(f"{where}: {kind} needs low <= high; got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0; got {args!r}")
    for v in (low, high):
        _check_value(base, k, v, where)
