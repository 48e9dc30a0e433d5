"""No import circle between product modules (flows, tasks, storage, configs).

The graph is read from the source with `ast`, so it sees every import: top-level ones, those inside
functions (deferred for start-up time, still a dependency) and those under `if TYPE_CHECKING:`. A circle
means neither module can be read, moved or tested without the other; each one found is printed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "storage", "configs")

# Modules left out of the graph (none: the engines' circle of issue 30 is gone, tasks/engines/registry.py
# names engine modules as strings and imports them only when a backend is looked up).
ALLOWED_IN_CIRCLES: tuple[str, ...] = ()


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of PACKAGES under `root` (a package is its __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The product modules `name` (at `path`) imports anywhere in its body. `from x import y` is x.y
    when that is a module, else x; a relative import is resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import tasks.algos.x.attr` style: the longest module prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path, allowed: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Module -> modules it imports, without the modules in (or under) `allowed`."""
    files = module_files(root)

    def kept(m: str) -> bool:
        return not any(m == a or m.startswith(a + ".") for a in allowed)

    names = set(files)
    return {m: {t for t in imported_modules(m, p, names) if kept(t)} for m, p in files.items() if kept(m)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None: depth-first search, a back edge closes a circle."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_product_modules_have_no_import_circle():
    graph = import_graph(ROOT, ALLOWED_IN_CIRCLES)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_graph_sees_function_level_and_from_imports():
    """The graph holds the edges the circle test relies on: a `from pkg import module` at top level and
    an import inside a function body (flows/cli.py's `run` imports flows.rl_train there)."""
    graph = import_graph(ROOT)
    assert "flows.cli_common" in graph["flows.cli"]
    assert "flows.cli_ops" in graph["flows.cli"]  # `from flows import cli_ops, cli_views`
    assert "flows.rl_train" in graph["flows.cli"]  # inside run()
    assert "flows.cli" not in graph["flows.cli_ops"] and "flows.cli" not in graph["flows.cli_views"]


def test_circle_through_a_function_level_import_is_found(tmp_path):
    """A circle whose closing edge is an import inside a function, and a relative import, are reported."""
    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tasks.b import f\n")
    (pkg / "b.py").write_text("from . import c\n\ndef f():\n    return c\n")
    (pkg / "c.py").write_text("def g():\n    import tasks.a\n")
    (pkg / "d.py").write_text("import tasks.c\n")  # leads into the circle, not part of it
    assert find_cycle(import_graph(tmp_path)) == ["tasks.a", "tasks.b", "tasks.c", "tasks.a"]
    assert find_cycle(import_graph(tmp_path, ("tasks.c",))) is None
