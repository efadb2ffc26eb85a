"""The package's import graph: no circle, and no module imports from a layer above its own.

Layers, lowest first (a module may import from its own layer or below). Imports under
``if TYPE_CHECKING:`` are annotations only and do not count; imports inside functions do.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "forgetting"
LAYERS = [  # (layer name, module prefixes)
    ("basics", ["errors", "options", "penalty", "kl_estimators", "policy_gradient", "rewards", "oracle", "metrics",
                "extras", "config", "progress", "teacher", "budget", "gc_freeze"]),
    ("data", ["streams"]),
    ("objectives", ["objectives", "evaluate"]),  # what a model predicts: data loss, penalties' distributions, measures
    ("models", ["models"]),  # a model may bring its objective's data encoding (causal LMs)
    ("methods", ["methods", "integrations"]),  # integrations/__init__: strategy specs only
    ("loop", ["train", "optim", "onpolicy", "distributed", "fsdp"]),
    ("bridges and files", ["integrations.avalanche", "integrations.hf", "results", "checkpoint", "claim", "tracking"]),
    ("registry", ["registry"]),
    # integrations.trl: its ForgettingCallback writes a whole run and its report (as running and plot do)
    ("entry points", ["run", "cli", "preparing", "running", "suite", "api", "executors", "sweep", "plot", "report",
                      "integrations.trl", "__main__", ""]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            match = module == prefix or module.startswith(prefix + ".") or module.startswith(prefix + "_") \
                or (prefix == "" and module == "")
            if match and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"forgetting.{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def imports_of(path: Path, modules: set[str]) -> set[str]:
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            targets = [stem] if node.module else [f"{stem}.{a.name}".strip(".") for a in node.names]
        else:
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            targets = [n.removeprefix("forgetting").lstrip(".") for n in names if n and n.split(".")[0] == "forgetting"]
        for t in targets:
            while t not in modules and "." in t:
                t = t.rpartition(".")[0]
            if t in modules and t != here:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"forgetting.{m or '__init__'} ({LAYERS[layer_of(m)][0]}) imports forgetting.{d} "
              f"({LAYERS[layer_of(d)][0]})"
              for m, deps in graph().items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import circle: " + " -> ".join(f"forgetting.{c}" for c in cycle))


def test_every_layer_entry_names_a_module():
    """No stale entry: each prefix is a module or package of forgetting (or the prefix of some)."""
    modules = set(graph())
    stale = [p for _, prefixes in LAYERS for p in prefixes
             if p and not any(m == p or m.startswith(p + ".") or m.startswith(p + "_") for m in modules)]
    assert not stale, stale
