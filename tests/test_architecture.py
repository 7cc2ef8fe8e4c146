"""The layering of docs/ARCHITECTURE.md holds: imports point down the flow, with no cycle.

Every ``import`` in ``src/transferkit`` counts, at module level and inside functions alike (only
``if TYPE_CHECKING:`` blocks, which never run, are left out). A new cycle or an upward arrow
fails here with the offending lines; when the map itself changes, change ``LAYERS`` and
docs/ARCHITECTURE.md together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top. A module belongs to the layer of its longest matching name (a package name
#: matches its ``__init__`` and, unless a longer name matches, everything inside it).
LAYERS = [
    ("foundation", ["transferkit._version", "transferkit.errors", "transferkit._registry", "transferkit._io",
                    "transferkit.config", "transferkit.outdir"]),
    ("data", ["transferkit.data", "transferkit.datasets"]),
    ("source types", ["transferkit.sources.schema", "transferkit.sources.base", "transferkit.sources.inputs"]),
    ("source plugins", ["transferkit.sources.timm", "transferkit.sources.torchvision",
                        "transferkit.sources.transformers", "transferkit.sources.sentence_transformers",
                        "transferkit.sources.audio", "transferkit.sources.sequence", "transferkit.sources.packaged",
                        "transferkit.sources.local"]),
    ("surgery", ["transferkit.surgery"]),
    ("source factory", ["transferkit.sources.factory", "transferkit.sources"]),
    ("engine", ["transferkit.engine"]),
    ("features", ["transferkit.features"]),
    ("methods", ["transferkit.scoring", "transferkit.strategies", "transferkit.merging"]),
    ("evaluation", ["transferkit.evaluation"]),
    ("ranking", ["transferkit.ranking"]),
    ("runs", ["transferkit.runs"]),
    ("training", ["transferkit.training"]),
    ("selection", ["transferkit.selection"]),
    ("commands", ["transferkit.pipeline", "transferkit.audit", "transferkit.predict", "transferkit.export",
                  "transferkit.compare"]),
    ("interface", ["transferkit.cli", "transferkit.__main__", "transferkit"]),
]
#: Plugins that sit above the registry they fill, discovered by name on the registry's first read
#: (``Registry(plugins=...)``) instead of being imported: (registry module, plugin module).
HOOKS = {("transferkit.sources.base", "transferkit.sources"),  # the plugins (and the factory) of base's registries
         ("transferkit.sources.base", "transferkit.runs")}  # the `run:` scheme


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "transferkit").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, index = len(name), i
    if index is None:
        raise AssertionError(f"{module} is in no layer of LAYERS (tests/test_architecture.py)")
    return index


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(module: str) -> list[tuple[str, int]]:
    """(imported transferkit module, line) for every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                if target in MODULES and target != module:
                    out.append((target, node.lineno))
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_points_up_the_layers():
    upward = [f"{MODULES[m].relative_to(SRC)}:{line} {m} ({LAYERS[layer_of(m)][0]}) imports {t} "
              f"({LAYERS[layer_of(t)][0]})"
              for m, edges in GRAPH.items() for t, line in edges if layer_of(t) > layer_of(m)]
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges = {m: {t for t, _ in e} for m, e in GRAPH.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_plugins_above_their_registry_are_the_documented_hooks():
    found = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry":
                for kw in (k for k in node.keywords if k.arg == "plugins"):
                    found |= {(module, ast.literal_eval(e)) for e in kw.value.elts}
    upward = {(m, p) for m, p in found if layer_of(p) > layer_of(m)}
    assert upward == HOOKS


@pytest.mark.parametrize("module", ["transferkit.engine", "transferkit.sources.factory", "transferkit.training"])
def test_the_checker_sees_function_level_imports(module):
    # guard against a checker that silently sees nothing: these modules import inside functions
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    nested = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("transferkit")]
    seen = {line for _, line in GRAPH[module]}
    assert all(n.lineno in seen for n in nested)
