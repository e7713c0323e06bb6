"""The functions in src/ longer than a limit (default 60 lines): ``python tests/support/long_functions.py [LIMIT]``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src"


def long_functions(limit: int = 60) -> list[tuple[str, int, str, int]]:
    """(file, line, qualified name, lines) of every function or method over ``limit`` lines."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = f"{prefix}{getattr(child, 'name', '')}"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = child.end_lineno - child.lineno + 1
                    if n > limit:
                        out.append((str(path.relative_to(ROOT)), child.lineno, name, n))
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    stack.append((child, name + "."))
    return sorted(out)


if __name__ == "__main__":
    found = long_functions(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
    for f, line, name, n in found:
        print(f"{f}:{line} {name} {n} lines")
    print(f"{len(found)} function(s) over the limit")
