"""The package's shape: sub-packages in layers that import only downward, no import circle (not
even through function-local or type-checking imports), only the entry points at the package root,
no two modules of one name, no module over about 400 lines except the data tables, no function
over 60 lines. ARCHITECTURE.md explains the layers; scripts/dev/relayout.py made them."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlenergy"
DIFFUSION = PACKAGE / "diffusion"
# The sub-packages of mlenergy/diffusion/, lowest first: each imports only from itself and the
# ones before it (and the package's __init__).
LAYERS = ["inputs", "process", "results", "models", "kernels", "planning", "probes", "engine",
          "output", "profiling", "tools", "sweep"]
# What may sit at the package root: the package and the entry points users type.
ROOT_MODULES = {"__init__.py", "benchmark.py", "cli.py"}
DATA_TABLES = {"registry.py", "families.py", "video_families.py", "published.py"}
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package that `path` imports: at the top, inside functions, and under
    `if TYPE_CHECKING:` (a type-only circle is still a circle a reader has to walk)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlenergy"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mlenergy")}
    return found & set(known)


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, mods) - {name} for name, path in mods.items()}


def _layer(module: str) -> str | None:
    """The sub-package of mlenergy.diffusion a module is in; None at the package root."""
    parts = module.split(".")
    return parts[2] if len(parts) > 3 or (len(parts) == 3 and (DIFFUSION / parts[2]).is_dir()) \
        else None


def test_the_import_graph_has_no_circle_not_even_a_type_only_one():
    graph = _graph()
    state: dict[str, int] = collections.defaultdict(int)
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif state[nxt] == 0:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_every_sub_package_is_a_layer():
    folders = {p.parent.name for p in DIFFUSION.glob("*/__init__.py")}
    assert folders == set(LAYERS), (sorted(folders - set(LAYERS)), sorted(set(LAYERS) - folders))


def test_layers_import_only_downward():
    """A sub-package imports from itself and the layers before it, never from a layer after it
    nor from an entry point; benchmark.py imports nothing from sweep/."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, imported in _graph().items():
        here = _layer(module)
        for other in imported:
            there = _layer(other)
            if other == "mlenergy.diffusion" or not other.startswith("mlenergy.diffusion"):
                continue
            if here is not None and (there is None or rank[there] > rank[here]):
                upward.append(f"{module} -> {other}")
            if module == "mlenergy.diffusion.benchmark" and there == "sweep":
                upward.append(f"{module} -> {other}")
    assert not upward, sorted(upward)


def test_only_entry_points_at_the_package_root():
    assert {p.name for p in DIFFUSION.glob("*.py")} <= ROOT_MODULES


def test_no_two_modules_share_a_name():
    """Module files and sub-packages alike: `checks` or `task` must say which one it is."""
    names: collections.Counter[str] = collections.Counter()
    for path in DIFFUSION.rglob("*.py"):
        if path.name != "__main__.py" and path != DIFFUSION / "__init__.py":
            names[path.parent.name if path.name == "__init__.py" else path.stem] += 1
    assert not [name for name, count in names.items() if count > 1], names.most_common(5)


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if path.name not in DATA_TABLES and len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.name}: {len(source.splitlines())}")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.name}:{node.name}: {length}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
