"""``feedalign models``: the models ``--model`` takes and their recipes; ``--table`` trains every model under every
rule that converts it for a short budget and publishes the table in docs/models.md."""
from __future__ import annotations

import sys

from . import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models --model takes, with their recipes; --table trains each under every rule",
        description="List the named models with the recipe each trains with by default (optimizer, rate, schedule, "
                    "warm-up, clipping, ...) and its sources. --table trains every model under every rule that "
                    "converts it, with its recipe, for a short budget (MNIST subsets, MNIST-1D), and writes the table "
                    "into --doc.")
    parser.add_argument("--table", action="store_true", help="train the table (about a quarter of an hour of CPU)")
    parser.add_argument("--out", default="runs/models-table", help="where the table's runs go (default: %(default)s)")
    parser.add_argument("--doc", default="docs/models.md",
                        help="markdown file whose table is replaced (between its markers) (default: %(default)s)")
    parser.add_argument("--models", help="comma-separated subset of the table's models (default: all)")
    parser.add_argument("--rules", help="comma-separated subset of rules (default: every registered rule)")
    parser.set_defaults(func=main)


def main(args) -> int:
    from ..models import MODELS, recipe_for
    from ..rules import rules
    from ..training.models_table import BUDGETS, publish, run_table
    if not args.table:
        for name in ["784-256-256-10 (any MLP size string)", *MODELS]:
            recipe = recipe_for(name.split(" ")[0])
            settings = ", ".join(f"{k} {v}" for k, v in recipe.settings.items()) or "Config's defaults"
            print(f"{name}: {settings}\n    {recipe.sources}")
        return 0
    models = _subset(args.models, list(BUDGETS), "model")
    chosen = _subset(args.rules, rules(), "rule")
    rows = run_table(args.out, models=models, rule_names=chosen, log=lambda line: print(line, file=sys.stderr))
    command = "feedalign models --table" + "".join(f" --{k} {v}" for k, v in (("models", args.models),
                                                                               ("rules", args.rules)) if v)
    publish(rows, args.doc, command)
    print(f"table: {args.doc} ({sum(r['converts'] is True for r in rows)} runs in {args.out})")
    return 0


def _subset(text: str | None, known: list[str], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"--{what}s: unknown {what} {unknown[0] if unknown else text!r}; known: {', '.join(known)}")
    return names
