"""The package's layout (docs/api.md, "How the package is laid out"): each layer imports only the layers
below it, no import circles, and imports inside functions only for start-up time (the CLI, matplotlib)
or optional and platform packages. Read from the source with ``ast``, so nothing is imported."""
import ast
from pathlib import Path

import feedalign

ROOT = Path(feedalign.__file__).parent
LAYERS = {"errors": 1, "files": 1, "_version": 1, "models": 2, "rules": 2, "data": 2, "rbm": 2, "convert": 3, "diagnostics": 3,
          "training": 4, "bench": 5, "sweeps": 5, "experiments": 6, "cli": 7, "__main__": 8, "": 8}
# packages imported inside functions: optional or platform packages, matplotlib (start-up time), and the Ray
# backend, which needs ray (its trial function imports on the Ray worker that runs it)
LAZY_OK = ("matplotlib", "ray", "wandb", "mlflow", "torch.utils.tensorboard", "mnist1d", "yaml", "tomli", "tomllib",
           "tomli_w", "tqdm", "fcntl", "feedalign.sweeps.ray_backend")
LAZY_MODULES = ("cli", "__main__", "sweeps.ray_backend")  # each command imports what it runs; Ray's trial function


def _module_names():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(["feedalign", *(p for p in parts if p != "__init__")])


MODULE_NAMES = set(_module_names())


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        yield name, path, path.name == "__init__.py"


def _imports(name: str, path: Path, is_package: bool):
    """(target, lineno, at top level) for every import of a feedalign module or an outside package."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top |= set(map(id, ast.walk(node)))
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(["feedalign", *package[:len(package) - node.level + 1], *filter(None, [node.module])])
            else:
                module = node.module
            # ``from package import submodule`` imports the submodule
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULE_NAMES else module for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            yield target, node.lineno, id(node) in top


def _layer(module: str) -> int:
    first = module.removeprefix("feedalign").lstrip(".").split(".")[0]
    return LAYERS[first]


def test_every_module_has_a_layer():
    assert {name.split(".")[0] for name, _, _ in _modules()} <= set(LAYERS)


def test_each_layer_imports_only_the_layers_below_it():
    upward = []
    for name, path, is_package in _modules():
        for target, line, _ in _imports(name, path, is_package):
            if target.startswith("feedalign") and target != "feedalign" and _layer(target) > _layer(name):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if target == "feedalign" and name:  # the package root sits above everything
                upward.append(f"{path.relative_to(ROOT)}:{line} imports the package root")
    assert not upward, "\n".join(upward)


def test_imports_inside_functions_are_for_start_up_or_optional_packages():
    hidden = []
    for name, path, is_package in _modules():
        if any(name == m or name.startswith(m + ".") for m in LAZY_MODULES):
            continue
        for target, line, at_top in _imports(name, path, is_package):
            if not at_top and not any(target == p or target.startswith(p + ".") for p in LAZY_OK):
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not hidden, "\n".join(hidden)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    names = {name for name, _, _ in _modules()}
    for name, path, is_package in _modules():
        for target, _, _ in _imports(name, path, is_package):
            module = target.removeprefix("feedalign").lstrip(".")
            while module and module not in names:
                module = module.rpartition(".")[0]
            if target.startswith("feedalign") and module != name and module:
                graph.setdefault(name, set()).add(module)

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    def is_ancestor_package(a, b):  # a package's __init__ importing its own submodules is no circle
        return b.startswith(a + ".") or a.startswith(b + ".")

    circles = sorted(f"{a} -> {b}" for a in graph for b in graph[a]
                     if not is_ancestor_package(a, b) and reaches(b, a, {b}))
    assert not circles, "\n".join(circles)
