"""Static import graph of the ``movielens_sids`` package: prints each module's package imports and any cycle.

Used by ``tests/house/test_layers.py`` and runnable on its own: ``python tests/support/import_graph.py [--all]``.
Only imports at module level count as edges (imports inside functions are listed apart, with
``--all``); an ``if TYPE_CHECKING:`` block is not an edge either.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "movielens_sids"
PACKAGE = "movielens_sids"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith(PACKAGE)]
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith(PACKAGE):
        return []
    # `from . import x` imports the submodule x when it is one
    return [f"{target}.{a.name}" for a in node.names] + [target]


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def scan(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """``(top-level package imports, imports inside functions)`` of one file, as module names."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = {n for n in _resolve(mod, is_pkg, child) if n in modules}
                (inner if in_function else top).update(names - {mod})
            func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or func)

    visit(tree, False)
    return top, inner


@functools.lru_cache(maxsize=1)
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    top, inner = {}, {}
    for p in files:
        top[module_name(p)], inner[module_name(p)] = scan(p, modules)
    return top, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    top, inner = graph()
    short = lambda m: m.removeprefix(PACKAGE + ".") or PACKAGE  # noqa: E731
    for m in sorted(top):
        deps = sorted(short(d) for d in top[m] if d not in m)
        print(f"{short(m):<28} -> {', '.join(deps) or '-'}")
        if "--all" in sys.argv and inner[m]:
            print(f"{'':<28}    (inside functions: {', '.join(sorted(short(d) for d in inner[m]))})")
    found = cycles(top)
    both = {m: top[m] | inner[m] for m in top}
    found_all = cycles(both)
    n_inner = sum(len(v) for v in inner.values())
    print(f"{len(top)} modules, {sum(len(v) for v in top.values())} module-level package imports, "
          f"{n_inner} package imports inside functions; cycles: {len(found)} among module-level imports, "
          f"{len(found_all)} counting the imports inside functions too")
    for c in found_all:
        print("cycle:", " <-> ".join(short(m) for m in c))
    return 1 if found_all else 0


if __name__ == "__main__":
    sys.exit(main())
