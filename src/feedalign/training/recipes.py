"""Recipes: what a model is trained with when the command line names nothing else.

A setting's value comes from the first of these that gives it, last first:

1. a flag (``feedalign train --lr 0.01``);
2. the config file (``--config FILE``);
3. the learning rule's adjustment of the model's recipe, where its paper makes one
   (:meth:`feedalign.rules.LearningRule.adjust_recipe`; DFA on transformers after Launay et al. 2020);
4. the model's recipe (:class:`feedalign.models.Recipe`, from its literature);
5. :class:`Config`'s default.

:func:`resolve` returns the :class:`Config` and, for every setting, where its value came from (what
``feedalign train --show-recipe`` prints). The run's ``config.toml`` holds every resolved value, so
``feedalign train --config RUN_DIR/config.toml`` repeats the run whatever the recipes say later.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..models import recipe_for
from ..rules import get_rule
from .config import Config, architecture_alias


def resolve(layers: list[tuple[str, dict]] | dict, *, source: str = "settings") -> tuple[Config, dict[str, str]]:
    """The validated :class:`Config` of ``layers`` over the model's recipe, and where each setting came from.

    ``layers``: ``(where, settings)`` pairs, later ones overriding earlier ones (e.g. the config file, then
    the flags); a plain dict is one layer called ``source``. Each value of ``where`` names the source in the
    returned mapping (``{field: "default" | "recipe NAME" | "rule NAME: why" | where}``).
    """
    if isinstance(layers, dict):
        layers = [(source, layers)]
    keys = Config.keys()
    given: dict = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{where}: expected a table of settings (key = value), got {type(layer).__name__}")
        layer = dict(architecture_alias(layer, where))
        unknown = [k for k in layer if k not in keys]
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid settings: {', '.join(keys)}")
        given.update(layer)
        origin.update({k: where for k in layer})
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    architecture = given.get("architecture", defaults["architecture"])
    values = dict(defaults)
    sources = {k: "default" for k in keys}
    recipe = recipe_for(architecture)
    if recipe is not None:
        values.update(recipe.settings)
        sources.update({k: f"recipe {architecture}" for k in recipe.settings})
        rule = given.get("rule", defaults["rule"])
        try:
            adjustments = get_rule(rule).adjust_recipe(recipe.family, dict(values)) if isinstance(rule, str) else {}
        except ValueError:  # an unknown rule: Config's validation below names it
            adjustments = {}
        for name, (value, why) in adjustments.items():
            values[name] = value
            sources[name] = f"rule {rule}: {why}"
    values.update(given)
    sources.update(origin)
    return Config.from_dict(values, source=source), sources


def recipe_config(**settings) -> Config:
    """``Config(**settings)`` over the recipe of the model ``settings`` names (and its rule's adjustment)."""
    return resolve(settings)[0]


# What a recipe may set, in the order `--show-recipe` prints them.
RECIPE_FIELDS = ("architecture", "rule", "dataset", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
                 "weight_decay_mode", "schedule", "step_size", "milestones", "gamma", "warmup_steps", "batch_size",
                 "clip_grad_norm", "epochs", "augment", "normalize", "init", "activation", "loss")


def _shown(value) -> str:
    return "none" if value is None else '""' if value == "" else str(value)


def explain(config: Config, sources: dict[str, str]) -> str:
    """The recipe's settings (and any other setting not at its default), each with where it came from, and the
    recipe's sources: what ``feedalign train --show-recipe`` prints."""
    names = list(RECIPE_FIELDS) + [k for k in Config.keys() if k not in RECIPE_FIELDS and sources[k] != "default"]
    rows = [(k, _shown(getattr(config, k)), sources[k]) for k in names]
    width = [max(len(r[i]) for r in rows + [("setting", "value", "from")]) for i in range(2)]
    lines = [f"{'setting':<{width[0]}}  {'value':<{width[1]}}  from"]
    lines += [f"{k:<{width[0]}}  {v:<{width[1]}}  {s}" for k, v, s in rows]
    recipe = recipe_for(config.architecture)
    if recipe is not None:
        lines += ["", f"recipe {config.architecture} ({recipe.family}): {recipe.sources}"]
    else:
        lines += ["", f"{config.architecture} has no recipe: Config's defaults, then the config file and flags"]
    return "\n".join(lines)
