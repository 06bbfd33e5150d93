"""The layers, read from the source: the library never imports the service's packages (at any
depth: function-level imports count too), and no two of our modules import each other at module
level, directly or through others (an import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sanitizer", "app", "workers", "jobstore", "sanitizer_cli", "sanitizer_client")


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module-level statements, including those under if/try at that level
        nodes = [n for stmt in tree.body for n in ast.walk(stmt) if not _in_function(stmt)]
    out: set[str] = set()
    mod = _module(path)
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: resolve against this module's package
                base = mod.split(".")[: -n.level] if path.name != "__init__.py" else mod.split(".")
                if path.name == "__init__.py" and n.level > 1:
                    base = base[: -(n.level - 1)]
                name = ".".join([*base, n.module] if n.module else base)
            else:
                name = n.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in n.names}
    return out


def _in_function(stmt: ast.stmt) -> bool:
    return isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def _files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]


def test_the_library_never_imports_the_service_layers() -> None:
    banned = ("fastapi", "celery", "redis", "app", "workers", "jobstore", "sqlalchemy")
    bad = [
        f"{p.relative_to(REPO)} imports {name}"
        for p in sorted((REPO / "sanitizer").rglob("*.py"))
        for name in _imports(p, top_level_only=False)
        if name.split(".")[0] in banned
    ]
    assert not bad, bad


def test_no_import_cycle_between_our_modules() -> None:
    modules = {_module(p): p for p in _files()}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        deps = set()
        for name in _imports(path, top_level_only=True):
            # "a.b.c" may be module a.b.c or a name c in module a.b
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):
                deps.add(name)  # a package's own __init__ imported by its submodule is no cycle
        graph[mod] = deps
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, cycles
    assert len(graph) > 80  # the walk saw the whole tree
